//! The HTTP edge: `/graphql` (POST, GraphiQL on GET when enabled, and graphql-transport-ws
//! subscriptions on the same path), `/.well-known/jwks.json`, `/audit/public-key`,
//! `/audit/export` (a tenant's audit export, streamed), `/healthz`, `/readyz` and `/metrics`.
//!
//! Every response carries `x-request-id` (the caller's, when it sent a UUID, or a new one);
//! the same id is in every GraphQL error's extensions and in the log lines of the request.
//! The body size, the batch size and the request rate are limited here, before any GraphQL
//! parsing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql::{BatchRequest, BatchResponse, Data, ErrorExtensionValues, ServerError};
use async_graphql_axum::{GraphQLBatchRequest, GraphQLProtocol, GraphQLResponse, GraphQLWebSocket};
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use uuid::Uuid;

use crate::answers::Question;
use crate::auth::{Caller, Credential, Presented};
use crate::error::{ApiError, Code};
use crate::graphql::{ApiSchema, RequestContext, Services};
use crate::idempotency::{self, Claim};
use crate::metrics::CONTENT_TYPE;
use domain::identity::rbac::PermissionSet;

/// The header that carries the request id both ways.
pub const REQUEST_ID: &str = "x-request-id";
/// The header that makes a mutation safe to retry.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// How the HTTP edge behaves.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Serve GraphiQL on `GET /graphql`.
    pub graphiql: bool,
    /// The largest request body, in bytes.
    pub max_body_bytes: usize,
    /// The most operations in one batched request.
    pub max_batch: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            graphiql: true,
            max_body_bytes: 256 * 1024,
            max_batch: 10,
        }
    }
}

/// What the readiness probe checks.
#[derive(Clone)]
pub struct Dependencies {
    /// PostgreSQL.
    pub pool: PgPool,
    /// NATS.
    pub nats: async_nats::Client,
    /// Redis.
    pub redis: ConnectionManager,
}

/// The state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The schema, with its services.
    pub schema: ApiSchema,
    /// The services.
    pub services: Arc<Services>,
    /// The services `/readyz` checks (shared: every request clones the state).
    pub dependencies: Arc<Dependencies>,
    /// The edge's limits.
    pub config: HttpConfig,
}

/// The router of the whole HTTP API.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    let mut router = Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/audit/public-key", get(crate::audit::public_key))
        .route("/audit/export", get(crate::audit::export::http_export))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if state.config.graphiql {
        router = router.merge(crate::graphiql::routes());
    }
    router
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), edge))
        .with_state(state)
}

/// The routes counted under their own path in `/metrics`.
const ROUTES: [&str; 7] = [
    "/graphql",
    "/.well-known/jwks.json",
    "/audit/public-key",
    "/audit/export",
    "/healthz",
    "/readyz",
    "/metrics",
];

/// The request id of a request, set by the edge middleware.
#[derive(Debug, Clone, Copy)]
pub struct RequestId(pub Uuid);

/// Sets the request id, times the request and records it.
async fn edge(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| Uuid::parse_str(text).ok())
        .unwrap_or_else(Uuid::now_v7);
    let route = ROUTES
        .iter()
        .copied()
        .find(|route| *route == request.uri().path())
        .unwrap_or_else(|| {
            if request.uri().path().starts_with("/graphiql/") {
                "/graphiql"
            } else {
                "other"
            }
        });
    request.extensions_mut().insert(RequestId(id));
    let span = tracing::info_span!("request", request_id = %id, route = %route);
    let mut response = {
        let _entered = span.enter();
        next.run(request)
    }
    .await;
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    state.services.metrics.record_http_request(
        route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

fn client_ip(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
}

fn header_text(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// An error response in GraphQL's shape, for a request refused before execution.
pub(crate) fn refused(err: &ApiError, request_id: Uuid) -> Response {
    let mut error = ServerError::new(err.message.clone(), None);
    let mut extensions = ErrorExtensionValues::default();
    extensions.set("code", err.code.as_str());
    if let Some(reason) = err.reason {
        extensions.set("reason", reason);
    }
    extensions.set("requestId", request_id.to_string());
    error.extensions = Some(extensions);
    let response = async_graphql::Response::from_errors(vec![error]);
    let status = StatusCode::from_u16(err.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = (status, GraphQLResponse::from(response)).into_response();
    if let Some(retry_after) = err.retry_after
        && let Ok(value) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Adds the request id to every error, and a code to errors that have none (the parser's
/// and the validator's, which are all about the input).
pub(crate) fn annotate(response: &mut async_graphql::Response, request_id: Uuid) {
    for error in &mut response.errors {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_none() {
            extensions.set("code", Code::BadUserInput.as_str());
        }
        extensions.set("requestId", request_id.to_string());
    }
}

/// Resolves the caller of a request and its permissions (nearly every field needs them), and
/// counts the request against the API rate limits.
pub(crate) async fn caller_of(
    state: &AppState,
    headers: &HeaderMap,
    client_ip: Option<IpAddr>,
) -> Result<(Caller, Option<PermissionSet>), ApiError> {
    caller_presenting(state, &Presented::from_headers(headers)?, client_ip).await
}

/// [`caller_of`] a credential already read from the headers.
async fn caller_presenting(
    state: &AppState,
    presented: &Presented,
    client_ip: Option<IpAddr>,
) -> Result<(Caller, Option<PermissionSet>), ApiError> {
    let limits = &state.services.limits;
    // The rate limit is checked at the same time as the caller's permissions are looked up.
    let limit = |caller: &Caller| {
        let (policy, subject) = match caller {
            Caller::Authenticated(caller) => match &caller.credential {
                Credential::ApiKey { key_id, .. } => (&limits.api_per_key, key_id.to_string()),
                Credential::AccessToken { .. } => {
                    (&limits.api_per_user, caller.principal.to_string())
                }
            },
            Caller::Anonymous => (
                &limits.api_per_ip,
                client_ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
            ),
        };
        async move { (policy, state.services.limiter.check(policy, &subject).await) }
    };
    let (caller, permissions, (policy, decision)) =
        state.services.auth.authorize(presented, limit).await?;
    match decision {
        Ok(decision) if !decision.allowed => {
            state.services.metrics.record_rate_limited(policy.name);
            return Err(ApiError::rate_limited(policy.name, decision.retry_after));
        }
        Ok(_) => {}
        Err(crate::ratelimit::RateLimitError::Unavailable { retry_after, .. }) => {
            return Err(ApiError::rate_limited(policy.name, retry_after));
        }
        Err(err) => return Err(ApiError::internal(err)),
    }
    Ok((caller, permissions))
}

async fn graphql_post(State(state): State<AppState>, request: Request) -> Response {
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map_or_else(Uuid::now_v7, |id| id.0);
    let ip = client_ip(&request);
    // The body is read here, within the limit, before anything parses it.
    let (parts, body) = request.into_parts();
    // What is needed of the headers, taken before the parts go to the GraphQL extractor.
    let presented = Presented::from_headers(&parts.headers);
    let idempotency_key = header_text(&parts.headers, IDEMPOTENCY_KEY);
    let user_agent = header_text(&parts.headers, header::USER_AGENT);
    let limit = state.config.max_body_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let err = ApiError::new(
                Code::BadUserInput,
                format!("the request body is larger than {limit} bytes"),
            )
            .with_reason("body_too_large");
            return refused(&err, request_id);
        }
    };
    let request = Request::from_parts(parts, axum::body::Body::from(bytes.clone()));
    let mut batch =
        match GraphQLBatchRequest::<async_graphql_axum::rejection::GraphQLRejection>::from_request(
            request, &state,
        )
        .await
        {
            Ok(batch) => batch.into_inner(),
            Err(rejection) => {
                let err = ApiError::new(
                    Code::BadUserInput,
                    format!("the request is not GraphQL over HTTP: {}", rejection.0),
                )
                .with_reason("bad_request");
                return refused(&err, request_id);
            }
        };
    if let BatchRequest::Batch(requests) = &batch
        && requests.len() > state.config.max_batch
    {
        let err = ApiError::new(
            Code::BadUserInput,
            format!(
                "the batch has {} operations; at most {} are allowed",
                requests.len(),
                state.config.max_batch
            ),
        )
        .with_reason("batch_too_large");
        return refused(&err, request_id);
    }
    let found = match presented {
        Ok(presented) => caller_presenting(&state, &presented, ip).await,
        Err(err) => Err(err),
    };
    let (caller, permissions) = match found {
        Ok(found) => found,
        Err(err) => return refused(&err, request_id),
    };
    // A signed-in caller's query asked a moment ago is answered from memory, while its
    // tenant's read models have not changed.
    let question = match (&state.services.answers, &caller, permissions) {
        (Some(answers), Caller::Authenticated(caller), Some(permissions))
            if matches!(batch, BatchRequest::Single(_)) =>
        {
            let question = Question {
                tenant: caller.tenant_id,
                principal: caller.principal,
                credential: caller.credential.clone(),
                permissions,
                body: Bytes::copy_from_slice(&bytes),
            };
            if let Some(answer) = answers.recall(&question) {
                state.services.metrics.record_remembered_answer();
                return graphql_body(answer);
            }
            Some((answers, question))
        }
        _ => None,
    };
    let kinds = operation_kinds(&mut batch);
    // A signed-in caller's keyed mutation runs once; a retry gets the first answer.
    let keyed = match (&caller, &idempotency_key) {
        (Caller::Authenticated(caller), Some(key)) if kinds.mutation => {
            if matches!(batch, BatchRequest::Batch(_)) {
                let err = ApiError::new(
                    Code::BadUserInput,
                    "an Idempotency-Key applies to one operation; send a keyed mutation alone",
                )
                .with_reason("idempotency_key_with_batch");
                return refused(&err, request_id);
            }
            Some((caller.principal.to_string(), key.clone()))
        }
        _ => None,
    };
    if let Some((actor, key)) = &keyed {
        let services = &state.services;
        match idempotency::claim(
            &services.pool,
            &services.secrets,
            actor,
            key,
            &idempotency::fingerprint(&bytes),
            chrono::Utc::now(),
        )
        .await
        {
            Ok(Claim::Run) => {}
            Ok(Claim::Replay(answer)) => {
                return ([("idempotent-replayed", "true")], axum::Json(answer)).into_response();
            }
            Err(err) => return refused(&err, request_id),
        }
    }
    let context = Arc::new(
        RequestContext::new(request_id, ip, user_agent, idempotency_key, caller)
            .with_permissions(permissions),
    );
    // Stamped before the query runs, so that a change while it runs ends the answer.
    let remember = question
        .filter(|_| kinds.only_queries && !kinds.volatile)
        .and_then(|(answers, question)| {
            answers
                .stamp(question.tenant)
                .map(|stamp| (answers, question, stamp))
        });
    let mut response = state.schema.execute_batch(batch.data(context)).await;
    match &mut response {
        BatchResponse::Single(single) => record(single, request_id),
        BatchResponse::Batch(many) => {
            for single in many {
                record(single, request_id);
            }
        }
    }
    if let Some((actor, key)) = &keyed {
        let services = &state.services;
        let stored = match &response {
            BatchResponse::Single(single) if single.errors.is_empty() => {
                match serde_json::to_value(single) {
                    Ok(answer) => {
                        idempotency::finish(&services.pool, &services.secrets, actor, key, &answer)
                            .await
                    }
                    Err(err) => Err(ApiError::internal(err)),
                }
            }
            _ => idempotency::release(&services.pool, actor, key).await,
        };
        if stored.is_err() {
            // The mutation ran; only its replay is lost. A retry with the key would run
            // it again, so release the key rather than leave it claimed forever.
            let _ = idempotency::release(&services.pool, actor, key).await;
        }
    }
    if let (Some((answers, question, stamp)), BatchResponse::Single(single)) = (remember, &response)
        && single.errors.is_empty()
        && single.http_headers.is_empty()
        && single.cache_control.value().is_none()
    {
        match serde_json::to_vec(single) {
            Ok(body) => {
                let body = Bytes::from(body);
                answers.keep(question, stamp, body.clone());
                return graphql_body(body);
            }
            Err(err) => return refused(&ApiError::internal(err), request_id),
        }
    }
    GraphQLResponse::from(response).into_response()
}

/// A GraphQL response of `body`, as async-graphql's axum integration sends one.
fn graphql_body(body: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/graphql-response+json"),
        )],
        body,
    )
        .into_response()
}

/// What kinds of operation a request holds.
#[derive(Debug, Clone, Copy)]
struct OperationKinds {
    /// Some operation is a mutation.
    mutation: bool,
    /// Every operation of every document is a query (and every document parses).
    only_queries: bool,
    /// Some document reads what no event of the tenant announces ([`crate::answers::is_volatile`]).
    volatile: bool,
}

/// The kinds of operation of the request's documents, each parsed once: execution uses the
/// same parse.
fn operation_kinds(batch: &mut BatchRequest) -> OperationKinds {
    use async_graphql::parser::types::OperationType;
    let mut kinds = OperationKinds {
        mutation: false,
        only_queries: true,
        volatile: false,
    };
    let mut look = |request: &mut async_graphql::Request| {
        kinds.volatile |= crate::answers::is_volatile(&request.query);
        match request.parsed_query() {
            Ok(document) => {
                for (_, operation) in document.operations.iter() {
                    match operation.node.ty {
                        OperationType::Query => {}
                        OperationType::Mutation => {
                            kinds.mutation = true;
                            kinds.only_queries = false;
                        }
                        OperationType::Subscription => kinds.only_queries = false,
                    }
                }
            }
            Err(_) => kinds.only_queries = false,
        }
    };
    match batch {
        BatchRequest::Single(request) => look(request),
        BatchRequest::Batch(requests) => requests.iter_mut().for_each(look),
    }
    kinds
}

fn record(response: &mut async_graphql::Response, request_id: Uuid) {
    annotate(response, request_id);
}

async fn graphql_get(State(state): State<AppState>, request: Request) -> Response {
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map_or_else(Uuid::now_v7, |id| id.0);
    let ip = client_ip(&request);
    let headers = request.headers().clone();
    let (mut parts, _body) = request.into_parts();
    if let Ok(upgrade) = WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        let Ok(protocol) = GraphQLProtocol::from_request_parts(&mut parts, &state).await else {
            return (StatusCode::BAD_REQUEST, "unknown WebSocket subprotocol").into_response();
        };
        return subscribe(state, upgrade, protocol, headers, ip, request_id);
    }
    if !state.config.graphiql {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "GraphiQL is off; POST GraphQL requests to /graphql",
        )
            .into_response();
    }
    crate::graphiql::page()
}

/// A graphql-transport-ws connection. The credential comes from the upgrade request's
/// headers, or else from the `connection_init` payload (`Authorization` or `x-api-key`
/// keys), since browsers cannot set headers on a WebSocket.
fn subscribe(
    state: AppState,
    upgrade: WebSocketUpgrade,
    protocol: GraphQLProtocol,
    headers: HeaderMap,
    ip: Option<IpAddr>,
    request_id: Uuid,
) -> Response {
    let schema = state.schema.clone();
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            GraphQLWebSocket::new(socket, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let mut headers = headers;
                    if let Some(object) = payload.as_object() {
                        for (key, value) in object {
                            let name = key.to_ascii_lowercase();
                            if (name == "authorization" || name == "x-api-key")
                                && let Some(text) = value.as_str()
                                && let (Ok(name), Ok(value)) = (
                                    header::HeaderName::from_bytes(name.as_bytes()),
                                    HeaderValue::from_str(text),
                                )
                            {
                                headers.insert(name, value);
                            }
                        }
                    }
                    let (caller, _) = caller_of(&state, &headers, ip)
                        .await
                        .map_err(async_graphql::Error::from)?;
                    let mut data = Data::default();
                    // A connection lives long: its subscriptions look permissions up when
                    // they start, not when the connection opened.
                    data.insert(Arc::new(RequestContext::new(
                        request_id,
                        ip,
                        header_text(&headers, header::USER_AGENT),
                        None,
                        caller,
                    )));
                    Ok(data)
                })
                .keepalive_timeout(Duration::from_secs(60))
                .serve()
                .await;
        })
}

async fn jwks(State(state): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        axum::Json(state.services.auth.keyring().jwks()),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

/// Checks PostgreSQL, NATS and Redis, each within a second.
async fn readyz(State(state): State<AppState>) -> Response {
    let deps = &state.dependencies;
    let within = Duration::from_secs(1);
    let postgres = matches!(
        tokio::time::timeout(within, sqlx::query("SELECT 1").execute(&deps.pool)).await,
        Ok(Ok(_))
    );
    let nats = matches!(
        tokio::time::timeout(within, deps.nats.flush()).await,
        Ok(Ok(()))
    );
    let mut redis = deps.redis.clone();
    let redis = matches!(
        tokio::time::timeout(within, redis::cmd("PING").query_async::<String>(&mut redis)).await,
        Ok(Ok(_))
    );
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let body = serde_json::json!({
        "postgres": word(postgres),
        "nats": word(nats),
        "redis": word(redis),
    });
    let status = if postgres && nats && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// The metrics, with the log's and the projections' positions read at scrape time.
async fn metrics(State(state): State<AppState>) -> Response {
    let metrics = &state.services.metrics;
    let pool = &state.dependencies.pool;
    if let Ok(head) = sqlx::query_scalar::<_, i64>("SELECT position FROM log_head")
        .fetch_one(pool)
        .await
    {
        metrics.set_log_head_position(head);
        if let Ok(rows) = sqlx::query_as::<_, (String, i64, String)>(
            "SELECT name, position, status FROM projection_checkpoints",
        )
        .fetch_all(pool)
        .await
        {
            for (name, position, status) in rows {
                metrics.set_projection_position(&name, position);
                metrics.set_projection_lag_events(&name, (head - position).max(0));
                metrics.set_projection_parked(&name, status == "parked");
            }
        }
        if let Ok(Some(position)) =
            sqlx::query_scalar::<_, Option<i64>>("SELECT max(position) FROM relay_checkpoints")
                .fetch_one(pool)
                .await
        {
            metrics.set_relay_acked_position(position);
        }
    }
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(err) => {
            tracing::error!("metrics do not encode: {err}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
