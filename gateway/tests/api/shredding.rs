//! `forgetSubject` over GraphQL: the person's fields read as redacted, their credentials
//! stop working, a second forget changes nothing, and the log still verifies with nobody's
//! personal data in plaintext, the request's IP and user agent included.

use eventstore::LogReader;
use serde_json::{Value, json};

use crate::{PASSWORD, TestApp, code};

const AGENT: &str = "ShredGateway/9.9 (test)";

/// POSTs a GraphQL request with a `User-Agent`.
async fn graphql_as(app: &TestApp, token: Option<&str>, query: &str, variables: Value) -> Value {
    let mut request = app
        .http
        .post(app.url("/graphql"))
        .header("user-agent", AGENT)
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn a_forgotten_user_reads_as_redacted_cannot_sign_in_and_leaves_no_plaintext_in_the_log() {
    let app = TestApp::spawn().await;
    let owner = app.owner("owner.gw@example.org").await;
    let registered = graphql_as(
        &app,
        None,
        "mutation($input: RegisterInput!) { register(input: $input) { userId } }",
        json!({ "input": { "tenantId": owner.tenant, "email": "bob.gw@example.org",
                           "name": "Bob Gateway", "password": PASSWORD } }),
    )
    .await;
    let bob = registered["data"]["register"]["userId"]
        .as_str()
        .unwrap_or_else(|| panic!("{registered}"))
        .to_owned();
    let added = graphql_as(
        &app,
        Some(&owner.token),
        "mutation($p: String!) { addMember(principal: $p, roles: [\"member\"], consistency: STRONG) { position } }",
        json!({ "p": format!("user:{bob}") }),
    )
    .await;
    assert!(added["errors"].is_null(), "{added}");
    let login = app
        .login(&owner.tenant, "bob.gw@example.org", PASSWORD)
        .await;
    let bob_token = login["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{login}"))
        .to_owned();
    let me = app
        .graphql(Some(&bob_token), "{ me { user { email } } }", json!({}))
        .await;
    assert_eq!(me["data"]["me"]["user"]["email"], "bob.gw@example.org");

    // Bob cannot forget himself; the owner forgets him.
    let forget = "mutation($id: UUID!) { forgetSubject(userId: $id, consistency: STRONG) { position consistent } }";
    let himself = graphql_as(&app, Some(&bob_token), forget, json!({ "id": bob })).await;
    assert_eq!(code(&himself), "FORBIDDEN", "{himself}");
    let forgotten = graphql_as(&app, Some(&owner.token), forget, json!({ "id": bob })).await;
    assert!(
        forgotten["data"]["forgetSubject"]["position"].is_i64(),
        "{forgotten}"
    );
    assert_eq!(forgotten["data"]["forgetSubject"]["consistent"], true);

    // Read-your-writes: the user reads as redacted and deactivated.
    let user = app
        .graphql(
            Some(&owner.token),
            "query($id: UUID!) { user(id: $id) { email name redacted status roles } }",
            json!({ "id": bob }),
        )
        .await;
    assert_eq!(
        user["data"]["user"],
        json!({ "email": null, "name": null, "redacted": true, "status": "deactivated", "roles": [] }),
        "{user}"
    );
    let listed = app
        .graphql(
            Some(&owner.token),
            "{ users { edges { node { id email redacted } } } }",
            json!({}),
        )
        .await;
    let edges = listed["data"]["users"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2, "{listed}");
    for edge in edges {
        let node = &edge["node"];
        let is_bob = node["id"] == bob.as_str();
        assert_eq!(node["redacted"], is_bob, "{node}");
        assert_eq!(node["email"].is_null(), is_bob, "{node}");
    }

    // His session and his password no longer work.
    let me = app
        .graphql(Some(&bob_token), "{ me { user { email } } }", json!({}))
        .await;
    assert_eq!(code(&me), "UNAUTHENTICATED", "{me}");
    let login = app
        .login(&owner.tenant, "bob.gw@example.org", PASSWORD)
        .await;
    assert_eq!(code(&login), "UNAUTHENTICATED", "{login}");

    // Forgetting him again changes nothing.
    let again = graphql_as(&app, Some(&owner.token), forget, json!({ "id": bob })).await;
    assert_eq!(
        again["data"]["forgetSubject"]["position"],
        Value::Null,
        "{again}"
    );

    // The chain verifies, and no event holds anyone's personal data in plaintext.
    let verification = LogReader::new(app.db.app.clone())
        .verify(1, None)
        .await
        .unwrap();
    assert!(verification.is_intact(), "{:?}", verification.fault);
    let log: Vec<(i64, String)> = sqlx::query_as(
        "SELECT global_position, lower(payload::text || metadata::text) FROM events",
    )
    .fetch_all(&app.db.admin)
    .await
    .unwrap();
    let agents: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE metadata->>'user_agent' IS NOT NULL")
            .fetch_one(&app.db.admin)
            .await
            .unwrap();
    assert!(agents > 0, "requests with a user agent were recorded");
    for (position, text) in &log {
        for value in [
            "owner.gw@example.org",
            "bob.gw@example.org",
            "bob gateway",
            "shredgateway",
            "127.0.0.1",
        ] {
            assert!(!text.contains(value), "{value} at position {position}");
        }
    }
}
