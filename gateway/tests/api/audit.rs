//! `GET /audit/export`: a caller with `audit:export` gets its own tenant's export, streamed,
//! and it verifies; no credential is 401, a credential without the permission or asking for
//! another tenant is 403.

use std::sync::Arc;

use eventstore::audit::verify_file::{self, Outcome, VerifyOptions};
use eventstore::audit::{Checkpointer, CheckpointerConfig, SigningKey};
use serde_json::json;

use crate::TestApp;

fn verify(body: &[u8], key: &SigningKey) -> Outcome {
    let options = VerifyOptions {
        keys: vec![key.public().clone()],
        ..VerifyOptions::default()
    };
    verify_file::verify_reader(std::io::Cursor::new(body.to_vec()), &options, |_| {}).unwrap()
}

#[tokio::test]
async fn a_tenant_exports_its_own_events_and_nobody_elses() {
    let app = TestApp::spawn().await;
    let acme = app.owner("owner@acme.example").await;
    let globex = app.owner("owner@globex.example").await;
    let key = Arc::new(SigningKey::generate().unwrap().0);
    Checkpointer::new(
        app.db.app.clone(),
        key.clone(),
        CheckpointerConfig::default(),
    )
    .checkpoint_now()
    .await
    .unwrap()
    .expect("the log has events");
    let url = app.url("/audit/export");

    // No credential.
    let response = app.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);

    // A key without audit:export.
    let created = app
        .graphql(
            Some(&acme.token),
            "mutation { createApiKey(name: \"reader\", scopes: [\"users:read\"], consistency: STRONG) { key } }",
            json!({}),
        )
        .await;
    let reader = created["data"]["createApiKey"]["key"].as_str().unwrap();
    let response = app.http.get(&url).bearer_auth(reader).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "FORBIDDEN");

    // The owner holds audit:export: the tenant's own export, which verifies.
    let response = app
        .http
        .get(&url)
        .bearer_auth(&acme.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let body = response.bytes().await.unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.contains(&acme.tenant));
    assert!(!text.contains(&globex.tenant), "another tenant's events");
    let header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["scope"], "tenant");
    assert_eq!(header["tenant_id"], acme.tenant);
    let Outcome::Verified(report) = verify(&body, &key) else {
        panic!("the export does not verify");
    };
    assert!(report.events > 0);
    assert_eq!(
        report.checkpoints, 1,
        "the checkpoint ties it to the signed log"
    );

    // An API key scoped to audit:export works too; naming its own tenant is allowed.
    let created = app
        .graphql(
            Some(&globex.token),
            "mutation { createApiKey(name: \"auditor\", scopes: [\"audit:export\"], consistency: STRONG) { key } }",
            json!({}),
        )
        .await;
    let auditor = created["data"]["createApiKey"]["key"].as_str().unwrap();
    let own = format!("{url}?tenant={}&from=1&format=ndjson", globex.tenant);
    let response = app
        .http
        .get(&own)
        .bearer_auth(auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    assert!(!String::from_utf8_lossy(&body).contains(&acme.tenant));
    assert!(matches!(verify(&body, &key), Outcome::Verified(_)));

    // Another tenant's export is refused; so is a range beyond the head.
    let other = format!("{url}?tenant={}", acme.tenant);
    let response = app
        .http
        .get(&other)
        .bearer_auth(auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let beyond = format!("{url}?to=1000000");
    let response = app
        .http
        .get(&beyond)
        .bearer_auth(auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // The protobuf form.
    let protobuf = format!("{url}?format=protobuf");
    let response = app
        .http
        .get(&protobuf)
        .bearer_auth(auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    assert!(matches!(verify(&body, &key), Outcome::Verified(_)));
}
