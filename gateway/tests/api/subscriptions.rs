//! `events` over graphql-transport-ws with a real WebSocket client: catch-up, live, and
//! resuming from a position with no gap and no duplicate.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::{Owner, TestApp};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, token: &str) -> Socket {
    let mut request = format!("ws://{}/graphql", app.address)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    send(&mut socket, json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } })).await;
    let ack = receive(&mut socket).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    socket
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

async fn receive(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("a message within the timeout")
            .expect("the socket is open")
            .unwrap();
        match message {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] != "ping" && value["type"] != "pong" {
                    return value;
                }
            }
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// Subscribes from `from` and collects positions until `until` is seen.
async fn positions(socket: &mut Socket, id: &str, from: i64, until: i64) -> Vec<i64> {
    send(
        socket,
        json!({ "id": id, "type": "subscribe", "payload": {
            "query": "subscription($from: Int!) { events(fromPosition: $from) { position eventType aggregateType hash } }",
            "variables": { "from": from }
        } }),
    )
    .await;
    let mut seen = Vec::new();
    while seen.last().is_none_or(|last| *last < until) {
        let message = receive(socket).await;
        assert_eq!(message["type"], "next", "{message}");
        assert_eq!(message["id"], id);
        let event = &message["payload"]["data"]["events"];
        seen.push(
            event["position"]
                .as_i64()
                .unwrap_or_else(|| panic!("{message}")),
        );
    }
    seen
}

async fn tenant_positions(app: &TestApp, owner: &Owner) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT global_position FROM events WHERE tenant_id = $1::uuid ORDER BY global_position",
    )
    .bind(&owner.tenant)
    .fetch_all(&app.db.admin)
    .await
    .unwrap()
}

#[tokio::test]
async fn events_catch_up_then_go_live_and_resume_without_gap_or_duplicate() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let other = app.owner("bob@example.org").await;
    let mut socket = connect(&app, &owner.token).await;

    let before = tenant_positions(&app, &owner).await;
    let last = *before.last().unwrap();
    let caught_up = positions(&mut socket, "1", 0, last).await;
    assert_eq!(
        caught_up, before,
        "catch-up is the tenant's events, in order"
    );

    // Live: a change of this tenant arrives; one of another tenant does not.
    let _ = app
        .graphql(
            Some(&other.token),
            "mutation { renameTenant(name: \"Other\") { position } }",
            json!({}),
        )
        .await;
    let renamed = app
        .graphql(
            Some(&owner.token),
            "mutation { renameTenant(name: \"Live\") { position } }",
            json!({}),
        )
        .await;
    let live_position = renamed["data"]["renameTenant"]["position"]
        .as_i64()
        .unwrap();
    let next = receive(&mut socket).await;
    assert_eq!(
        next["payload"]["data"]["events"]["position"], live_position,
        "{next}"
    );
    assert_eq!(
        next["payload"]["data"]["events"]["eventType"], "TenantRenamed",
        "{next}"
    );
    send(&mut socket, json!({ "id": "1", "type": "complete" })).await;

    // Resume from the middle: exactly the tail, once each.
    let all = tenant_positions(&app, &owner).await;
    let middle = all[all.len() / 2];
    let mut again = connect(&app, &owner.token).await;
    let resumed = positions(&mut again, "2", middle, *all.last().unwrap()).await;
    let expected: Vec<i64> = all.into_iter().filter(|p| *p > middle).collect();
    assert_eq!(resumed, expected);
}

#[tokio::test]
async fn a_subscription_without_credentials_is_refused() {
    let app = TestApp::spawn().await;
    let mut request = format!("ws://{}/graphql", app.address)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    send(
        &mut socket,
        json!({ "type": "connection_init", "payload": {} }),
    )
    .await;
    let ack = receive(&mut socket).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    send(
        &mut socket,
        json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { events { position } }" } }),
    )
    .await;
    let refused = receive(&mut socket).await;
    // The protocol carries a resolver's error as `next` with `errors`, and no data.
    assert_eq!(refused["type"], "next", "{refused}");
    assert!(refused["payload"]["data"].is_null(), "{refused}");
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{refused}"
    );
    assert!(
        refused["payload"]["errors"][0]["extensions"]["requestId"].is_string(),
        "{refused}"
    );
}
