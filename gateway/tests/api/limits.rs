//! Query shapes that cost the server more than they should are refused before any resolver
//! runs; pages are clamped; introspection and GraphiQL follow the mode.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{TestApp, code};

async fn post(app: &TestApp, body: String) -> (StatusCode, Value) {
    let response = app
        .router
        .clone()
        .oneshot(
            Request::post("/graphql")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn query(text: &str) -> String {
    json!({ "query": text }).to_string()
}

#[tokio::test]
async fn a_query_fifty_levels_deep_is_refused() {
    let app = TestApp::spawn().await;
    let mut deep = String::from("__typename");
    for _ in 0..50 {
        deep = format!("me {{ user {{ id }} {deep} }}");
    }
    // `me` has no `me` field, so the document is invalid anyway; use introspection's
    // recursive types for a document that is valid but deep.
    let mut nested = String::from("name");
    for _ in 0..50 {
        nested = format!("ofType {{ {nested} }}");
    }
    let (_, body) = post(
        &app,
        query(&format!("{{ __schema {{ types {{ {nested} }} }} }}")),
    )
    .await;
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nested too deep"),
        "{body}"
    );
    let _ = deep;
}

#[tokio::test]
async fn a_thousand_aliases_of_login_are_refused_before_any_login_runs() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let aliases: String = (0..1000)
        .map(|n| {
            format!(
                "a{n}: login(input: {{ tenantId: \"{}\", email: \"ada@example.org\", password: \"guess {n}\" }}) {{ accessToken }} ",
                owner.tenant
            )
        })
        .collect();
    let (_, body) = post(&app, query(&format!("mutation {{ {aliases} }}"))).await;
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["reason"], "query_too_large",
        "{body}"
    );
    // No attempt ran: the account is not locked and the password still works.
    let login = app
        .login(&owner.tenant, "ada@example.org", crate::PASSWORD)
        .await;
    assert!(login["errors"].is_null(), "{login}");
}

#[tokio::test]
async fn a_batch_of_a_hundred_operations_is_refused() {
    let app = TestApp::spawn().await;
    let batch: Vec<Value> = (0..100)
        .map(|_| json!({ "query": "{ __typename }" }))
        .collect();
    let (status, body) = post(&app, Value::Array(batch).to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["errors"][0]["extensions"]["reason"], "batch_too_large",
        "{body}"
    );
    // A small batch is fine.
    let small: Vec<Value> = (0..3)
        .map(|_| json!({ "query": "{ __typename }" }))
        .collect();
    let (status, body) = post(&app, Value::Array(small).to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(3), "{body}");
}

#[tokio::test]
async fn ten_thousand_directives_are_refused() {
    let app = TestApp::spawn().await;
    let directives = "@include(if: true) ".repeat(10_000);
    let (status, body) = post(&app, query(&format!("{{ __typename {directives} }}"))).await;
    // Either the body limit or the directive count stops it; neither runs it.
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::OK,
        "{status}"
    );
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    assert!(body["data"].is_null(), "{body}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused() {
    let app = TestApp::spawn().await;
    let padding = " ".repeat(300 * 1024);
    let (status, body) = post(&app, query(&format!("{{ __typename {padding} }}"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["reason"], "body_too_large",
        "{body}"
    );
}

#[tokio::test]
async fn a_page_of_a_billion_is_clamped() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let users = app
        .graphql(
            Some(&owner.token),
            "{ users(first: 1000000000) { edges { node { id } } pageInfo { hasNextPage } } }",
            json!({}),
        )
        .await;
    assert!(users["errors"].is_null(), "{users}");
    assert_eq!(users["data"]["users"]["edges"].as_array().unwrap().len(), 1);
    let negative = app
        .graphql(
            Some(&owner.token),
            "{ users(first: -1) { edges { cursor } } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&negative), "BAD_USER_INPUT", "{negative}");
}

#[tokio::test]
async fn production_mode_turns_introspection_and_graphiql_off() {
    let app = TestApp::spawn_with(|args| args.mode = gateway::cli::Mode::Production).await;
    let (_, body) = post(&app, query("{ __schema { queryType { name } } }")).await;
    assert!(body["data"]["__schema"].is_null(), "{body}");
    let page = app
        .router
        .clone()
        .oneshot(Request::get("/graphql").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::METHOD_NOT_ALLOWED);
    let asset = app
        .router
        .clone()
        .oneshot(
            Request::get("/graphiql/init.js")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(asset.status(), StatusCode::NOT_FOUND);

    let dev = TestApp::spawn().await;
    let page = dev
        .router
        .clone()
        .oneshot(Request::get("/graphql").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&html).contains("graphiql"));
    let (_, body) = post(&dev, query("{ __schema { queryType { name } } }")).await;
    assert_eq!(
        body["data"]["__schema"]["queryType"]["name"], "Query",
        "{body}"
    );
}
