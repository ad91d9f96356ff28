//! What the gateway remembers between requests (credentials, query answers) ends when the
//! tenant's read models change: these tests keep it for a minute, so that only a change of
//! the tenant, never the time to live, can explain a fresh answer.

use std::time::Duration;

use serde_json::{Value, json};

use crate::TestApp;
use crate::auth::eventually;

const TENANT: &str = "{ tenant { name } }";
const ME: &str = "{ me { principal tenantId permissions } }";

async fn remembering() -> TestApp {
    TestApp::spawn_with(|args| args.memory_ttl = Duration::from_secs(60)).await
}

/// How many answers the gateway served from memory so far.
async fn remembered(app: &TestApp) -> u64 {
    let text = app.metrics().await;
    text.lines()
        .find_map(|line| line.strip_prefix("graphql_remembered_answers_total "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no graphql_remembered_answers_total in:\n{text}"))
}

/// Asks `query` until an answer comes from memory; returns that answer.
async fn remember(app: &TestApp, token: &str, query: &str) -> Value {
    let before = remembered(app).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = app.graphql(Some(token), query, json!({})).await;
        if remembered(app).await > before {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer to {query} came from memory: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn tenant_name(app: &TestApp, token: &str) -> Value {
    let answer = app.graphql(Some(token), TENANT, json!({})).await;
    assert!(answer["errors"].is_null(), "{answer}");
    answer["data"]["tenant"]["name"].clone()
}

#[tokio::test]
async fn a_remembered_answer_ends_when_its_tenant_changes() {
    let app = remembering().await;
    let owner = app.owner("ada@example.org").await;
    let answer = remember(&app, &owner.token, TENANT).await;
    assert_eq!(answer["data"]["tenant"]["name"], "Acme");
    assert_eq!(tenant_name(&app, &owner.token).await, "Acme");

    // Renamed without waiting for the read models: the next answers follow once they have it.
    let renamed = app
        .graphql(
            Some(&owner.token),
            "mutation { renameTenant(name: \"Acme Two\") { position } }",
            json!({}),
        )
        .await;
    assert!(renamed["errors"].is_null(), "{renamed}");
    eventually(Duration::from_secs(10), "the new name", || async {
        tenant_name(&app, &owner.token).await == "Acme Two"
    })
    .await;
    // And the new answer is remembered in turn.
    let answer = remember(&app, &owner.token, TENANT).await;
    assert_eq!(answer["data"]["tenant"]["name"], "Acme Two");
}

#[tokio::test]
async fn a_strong_write_is_read_at_once_though_an_answer_was_remembered() {
    let app = remembering().await;
    let owner = app.owner("ada@example.org").await;
    remember(&app, &owner.token, TENANT).await;
    for name in ["Acme Two", "Acme Three"] {
        let renamed = app
            .graphql(
                Some(&owner.token),
                "mutation($name: String!) { renameTenant(name: $name, consistency: STRONG) { consistent } }",
                json!({ "name": name }),
            )
            .await;
        assert_eq!(
            renamed["data"]["renameTenant"]["consistent"], true,
            "{renamed}"
        );
        assert_eq!(tenant_name(&app, &owner.token).await, name);
    }
}

#[tokio::test]
async fn a_remembered_credential_stops_working_when_its_session_ends() {
    let app = remembering().await;
    let owner = app.owner("ada@example.org").await;
    remember(&app, &owner.token, ME).await;
    let out = app
        .graphql(
            Some(&owner.token),
            "mutation { logout { position } }",
            json!({}),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    eventually(Duration::from_secs(5), "the token is refused", || async {
        let me = app.graphql(Some(&owner.token), ME, json!({})).await;
        me["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    })
    .await;
}

#[tokio::test]
async fn callers_never_share_an_answer() {
    let app = remembering().await;
    let acme = app.owner("ada@example.org").await;
    let globex = app.owner("grace@example.org").await;
    let created = app
        .graphql(
            Some(&acme.token),
            "mutation { createApiKey(name: \"reader\", scopes: [\"users:read\"], consistency: STRONG) { key } }",
            json!({}),
        )
        .await;
    let key = created["data"]["createApiKey"]["key"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    // The same request body from three callers: the owner, the owner's narrower key (same
    // principal and tenant), and another tenant's owner.
    let owner = remember(&app, &acme.token, ME).await;
    let narrowed = remember(&app, &key, ME).await;
    let other = remember(&app, &globex.token, ME).await;
    assert_eq!(narrowed["data"]["me"]["permissions"], json!(["users:read"]));
    assert_ne!(
        owner["data"]["me"]["permissions"],
        narrowed["data"]["me"]["permissions"]
    );
    assert_eq!(
        owner["data"]["me"]["principal"],
        narrowed["data"]["me"]["principal"]
    );
    assert_eq!(owner["data"]["me"]["tenantId"], acme.tenant.as_str());
    assert_eq!(other["data"]["me"]["tenantId"], globex.tenant.as_str());
    // Asked again, each gets its own.
    for (token, expected) in [
        (&acme.token, &owner),
        (&key, &narrowed),
        (&globex.token, &other),
    ] {
        assert_eq!(&app.graphql(Some(token), ME, json!({})).await, expected);
    }
}

#[tokio::test]
async fn with_the_memory_off_nothing_is_remembered() {
    let app = TestApp::spawn_with(|args| args.memory_ttl = Duration::ZERO).await;
    let owner = app.owner("ada@example.org").await;
    for _ in 0..3 {
        assert_eq!(tenant_name(&app, &owner.token).await, "Acme");
    }
    assert_eq!(remembered(&app).await, 0);
}
