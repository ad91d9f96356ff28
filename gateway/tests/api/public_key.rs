//! `/audit/public-key`: every key that signs checkpoints, public like a JWKS, and enough to
//! check a stored checkpoint.

use std::sync::Arc;

use eventstore::audit::key::parse_public_keys;
use eventstore::audit::{Checkpointer, CheckpointerConfig, SigningKey, store};
use serde_json::json;

use crate::TestApp;

#[tokio::test]
async fn the_public_keys_are_served_without_credentials_and_verify_the_checkpoints() {
    let app = TestApp::spawn().await;
    let url = app.url("/audit/public-key");
    let empty: serde_json::Value = app
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(empty, json!({ "keys": [] }));

    // Something to sign: a tenant's sign-up.
    app.owner("owner@example.com").await;
    let old = Arc::new(SigningKey::generate().unwrap().0);
    let new = Arc::new(SigningKey::generate().unwrap().0);
    let signed = Checkpointer::new(
        app.db.app.clone(),
        old.clone(),
        CheckpointerConfig::default(),
    )
    .checkpoint_now()
    .await
    .unwrap()
    .expect("the log has events");
    store::record_key(&app.db.app, new.public()).await.unwrap();

    let response = app.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let keys = parse_public_keys(&response.text().await.unwrap()).unwrap();
    let kids: Vec<_> = keys.iter().map(|key| key.kid.as_str()).collect();
    assert_eq!(kids.len(), 2);
    assert!(kids.contains(&old.kid()) && kids.contains(&new.kid()));
    let by_kid = keys.iter().find(|key| key.kid == signed.kid).unwrap();
    assert!(signed.verifies_under(by_kid));

    // The requests are counted under their own route.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"http_requests_total{route="/audit/public-key",status="200"} 2"#),
        "{metrics}"
    );
}
