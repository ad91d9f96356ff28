//! Queries, mutations with read-your-writes, audit metadata, row-level security, and the
//! operational endpoints.

use serde_json::{Value, json};

use crate::{TestApp, code};

#[tokio::test]
async fn a_strong_mutation_is_visible_to_the_next_query() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let renamed = app
        .graphql(
            Some(&owner.token),
            "mutation { renameTenant(name: \"Acme Two\", consistency: STRONG) { position consistent } }",
            json!({}),
        )
        .await;
    assert_eq!(
        renamed["data"]["renameTenant"]["consistent"], true,
        "{renamed}"
    );
    assert!(
        renamed["data"]["renameTenant"]["position"]
            .as_i64()
            .unwrap()
            > 0
    );
    let tenant = app
        .graphql(
            Some(&owner.token),
            "{ tenant { name status plan } }",
            json!({}),
        )
        .await;
    assert_eq!(tenant["data"]["tenant"]["name"], "Acme Two", "{tenant}");
}

#[tokio::test]
async fn lists_are_connections_with_cursors() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    for n in 0..3 {
        let invited = app
            .graphql(
                Some(&owner.token),
                "mutation($email: String!) { invite(email: $email, roles: [\"viewer\"], consistency: STRONG) { userId } }",
                json!({ "email": format!("guest{n}@example.org") }),
            )
            .await;
        assert!(invited["errors"].is_null(), "{invited}");
    }
    let page = "query($after: String) { users(first: 2, after: $after) { edges { cursor node { id email roles } } pageInfo { hasNextPage hasPreviousPage } } }";
    let first = app.graphql(Some(&owner.token), page, json!({})).await;
    let edges = first["data"]["users"]["edges"].as_array().unwrap().clone();
    assert_eq!(edges.len(), 2, "{first}");
    assert_eq!(first["data"]["users"]["pageInfo"]["hasNextPage"], true);
    let cursor = edges[1]["cursor"].as_str().unwrap();
    let second = app
        .graphql(Some(&owner.token), page, json!({ "after": cursor }))
        .await;
    let rest = second["data"]["users"]["edges"].as_array().unwrap().clone();
    assert_eq!(rest.len(), 2, "{second}");
    assert_eq!(second["data"]["users"]["pageInfo"]["hasNextPage"], false);
    let mut ids: Vec<Value> = edges
        .iter()
        .chain(&rest)
        .map(|e| e["node"]["id"].clone())
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 4, "no user twice across pages");
    let bad = app
        .graphql(Some(&owner.token), page, json!({ "after": "not a cursor" }))
        .await;
    assert_eq!(code(&bad), "BAD_USER_INPUT");
}

#[tokio::test]
async fn a_mutation_records_who_when_and_from_where_in_its_events() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let request_id = uuid::Uuid::now_v7();
    let response = app
        .http
        .post(app.url("/graphql"))
        .bearer_auth(&owner.token)
        .header("x-request-id", request_id.to_string())
        .header("user-agent", "audit-test/1.0")
        .header("idempotency-key", "rename-1")
        .json(&json!({ "query": "mutation { renameTenant(name: \"Audited\") { position } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-request-id"].to_str().unwrap(),
        request_id.to_string()
    );
    let body: Value = response.json().await.unwrap();
    let position = body["data"]["renameTenant"]["position"]
        .as_i64()
        .unwrap_or_else(|| panic!("{body}"));
    let metadata: Value =
        sqlx::query_scalar("SELECT metadata FROM events WHERE global_position = $1")
            .bind(position)
            .fetch_one(&app.db.admin)
            .await
            .unwrap();
    assert_eq!(metadata["actor_id"], owner.user.as_str(), "{metadata}");
    assert_eq!(metadata["actor_kind"], "user");
    assert_eq!(metadata["tenant_id"], owner.tenant.as_str());
    assert_eq!(metadata["request_id"], request_id.to_string());
    let agent = metadata["user_agent"]
        .as_str()
        .unwrap_or_else(|| panic!("{metadata}"));
    assert!(
        !agent.contains("audit-test"),
        "the user agent is sealed: {agent}"
    );
    assert_eq!(metadata["idempotency_key"], "rename-1");
    let ip = metadata["client_ip"]
        .as_str()
        .unwrap_or_else(|| panic!("{metadata}"));
    assert!(!ip.contains("127.0.0.1"), "the client IP is sealed: {ip}");
}

#[tokio::test]
async fn errors_carry_the_request_id_and_nothing_internal() {
    let app = TestApp::spawn().await;
    let response = app
        .http
        .post(app.url("/graphql"))
        .json(&json!({ "query": "{ tenant { name } }" }))
        .send()
        .await
        .unwrap();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(code(&body), "UNAUTHENTICATED");
    assert_eq!(
        body["errors"][0]["extensions"]["requestId"],
        request_id.as_str()
    );
}

#[tokio::test]
async fn row_level_security_shows_the_reader_role_one_tenant_only() {
    let app = TestApp::spawn().await;
    let a = app.owner("ada@example.org").await;
    let _b = app.owner("bob@example.org").await;
    let mut tx = app.db.app.begin().await.unwrap();
    sqlx::query("SELECT set_config('platform.tenant_id', $1, true)")
        .bind(&a.tenant)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SET LOCAL ROLE platform_reader")
        .execute(&mut *tx)
        .await
        .unwrap();
    // No tenant filter in the query: the policy is the filter.
    let tenants: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT user_id FROM rm_identity.users")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(tenants, vec![a.user.parse::<uuid::Uuid>().unwrap()]);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_identity.tenants")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(count, 1);
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn health_readiness_metrics_and_jwks_answer() {
    let app = TestApp::spawn().await;
    let _owner = app.owner("ada@example.org").await;
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready: Value = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready,
        json!({ "postgres": "ok", "nats": "ok", "redis": "ok" })
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("commands_total{command=\"login\",outcome=\"accepted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("projection_position{projection=\"identity\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("graphql_operations_total{operation_type=\"mutation\",outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("log_head_position"), "{metrics}");
    let jwks: Value = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
}

#[tokio::test]
async fn a_keyed_mutation_runs_once_and_its_retry_gets_the_first_answer() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let keyed = |key: &'static str, name: &str| {
        app.http
            .post(app.url("/graphql"))
            .bearer_auth(&owner.token)
            .header("idempotency-key", key)
            .json(&json!({ "query": format!(
                "mutation {{ createApiKey(name: \"{name}\", scopes: [\"users:read\"]) {{ id key }} }}"
            ) }))
            .send()
    };
    let first = keyed("key-1", "ci").await.unwrap();
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    assert!(first["errors"].is_null(), "{first}");
    let retry = keyed("key-1", "ci").await.unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry: Value = retry.json().await.unwrap();
    // The same answer, the secret shown once included, and one key only.
    assert_eq!(retry["data"], first["data"]);
    let keys = app
        .graphql(
            Some(&owner.token),
            "{ apiKeys { edges { node { id } } } }",
            json!({}),
        )
        .await;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'ApiKey'")
            .fetch_one(&app.db.admin)
            .await
            .unwrap();
    assert_eq!(stored, 1, "{keys}");
    // The stored answer is sealed: the key is not in the table in plaintext.
    let raw: String = sqlx::query_scalar("SELECT response_sealed FROM idempotent_responses")
        .fetch_one(&app.db.admin)
        .await
        .unwrap();
    assert!(!raw.contains(first["data"]["createApiKey"]["key"].as_str().unwrap()));

    // The same key for another request is refused.
    let other: Value = keyed("key-1", "another")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(code(&other), "BAD_USER_INPUT", "{other}");
    assert_eq!(
        other["errors"][0]["extensions"]["reason"],
        "idempotency_key_reused"
    );

    // A refused mutation releases its key: the corrected request may use it.
    let bad: Value = app
        .http
        .post(app.url("/graphql"))
        .bearer_auth(&owner.token)
        .header("idempotency-key", "key-2")
        .json(&json!({ "query": "mutation { createApiKey(name: \"x\", scopes: [\"no:such\"]) { id } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(code(&bad), "BAD_USER_INPUT", "{bad}");
    let fixed: Value = keyed("key-2", "fixed").await.unwrap().json().await.unwrap();
    assert!(fixed["errors"].is_null(), "{fixed}");
}

#[tokio::test]
async fn concurrent_reads_never_wait_for_a_second_connection() {
    // Each read runs in one transaction and opens personal fields on its own connection:
    // many more concurrent reads than connections all finish.
    let app = TestApp::spawn_with_connections(4).await;
    let owner = app.owner("ada@example.org").await;
    let reads = (0..24).map(|_| {
        app.graphql(
            Some(&owner.token),
            "{ me { user { email } } users { edges { node { email } } } }",
            json!({}),
        )
    });
    let answers = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        futures::future::join_all(reads),
    )
    .await
    .expect("the reads finish");
    for answer in answers {
        assert!(answer["errors"].is_null(), "{answer}");
        assert_eq!(answer["data"]["me"]["user"]["email"], "ada@example.org");
    }
}
