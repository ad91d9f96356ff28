//! End-to-end tests of the gateway: a real PostgreSQL database, NATS stream and Redis prefix
//! of their own per test, the relay and the projections running, and the gateway serving
//! HTTP on a port of its own. Router tests use the same app without a socket (`oneshot`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod auth;
mod history;
mod limits;
mod memory;
mod public_key;
mod queries;
mod shredding;
mod subscriptions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use commands::privacy::MasterKey;
use eventstore::{Appender, AppenderConfig, ProtoEncoder, Relay};
use gateway::app::{GatewayParts, build_gateway, serve_gateway};
use gateway::cli::{GatewayArgs, MasterKeyArgs, Mode};
use gateway::serve::{Running, stream_name};
use serde_json::{Value, json};
use tests::{TestBus, TestDb, TestRedis};

/// The master key every test gateway uses.
pub const MASTER_KEY: &str = "0707070707070707070707070707070707070707070707070707070707070707";

/// A password good enough for the identity rules.
pub const PASSWORD: &str = "correct horse battery staple";

/// A running platform of its own.
pub struct TestApp {
    pub address: SocketAddr,
    pub http: reqwest::Client,
    pub router: Router,
    pub db: TestDb,
    pub bus: TestBus,
    pub redis: TestRedis,
    pub master: MasterKey,
    roles: Vec<Running>,
    stream: String,
}

impl TestApp {
    /// Starts the event store, relay, projections and gateway over fresh services.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// [`TestApp::spawn`], with changed gateway settings.
    pub async fn spawn_with(change: impl FnOnce(&mut GatewayArgs)) -> Self {
        Self::spawn_on(TestDb::new().await, change).await
    }

    /// [`TestApp::spawn`] over a pool of `connections` application connections.
    pub async fn spawn_with_connections(connections: u32) -> Self {
        Self::spawn_on(TestDb::with_app_connections(connections).await, |_| {}).await
    }

    async fn spawn_on(db: TestDb, change: impl FnOnce(&mut GatewayArgs)) -> Self {
        let bus = TestBus::new().await;
        let redis = TestRedis::new().await;
        let stream = stream_name(&bus.prefix);
        let (appender, _appender_task) = Appender::spawn(db.app.clone(), AppenderConfig::default());
        let relay_config = eventstore::RelayConfig {
            stream: stream.clone(),
            ..bus.relay_config()
        };
        let relay = Relay::new(
            db.app.clone(),
            bus.client.clone(),
            relay_config,
            ProtoEncoder,
        );
        let mut roles = vec![Running::spawn(move |stopped| relay.run(stopped))];
        roles.extend(
            gateway::operate::start_projections(
                &db.app,
                &tests::nats_url(),
                &bus.prefix,
                &redis.conn,
                &redis.prefix,
                &gateway::operate::CATALOG,
            )
            .await
            .expect("projections start"),
        );
        let mut args = GatewayArgs {
            mode: Mode::Dev,
            graphiql: None,
            introspection: None,
            token_issuer: "platform".into(),
            token_audience: "platform-api".into(),
            access_token_ttl: Duration::from_secs(15 * 60),
            memory_ttl: Duration::from_secs(1),
            answer_memory_mib: 64,
            master: MasterKeyArgs {
                master_key: Some(MASTER_KEY.into()),
                master_key_file: "/nonexistent/master.key".into(),
            },
        };
        change(&mut args);
        let gateway = build_gateway(
            GatewayParts {
                pool: &db.app,
                appender,
                nats: bus.client.clone(),
                nats_prefix: &bus.prefix,
                redis: redis.conn.clone(),
                redis_prefix: &redis.prefix,
                hasher: Arc::new(tests::passwords::CheapArgon2id::new()),
            },
            &args,
        )
        .await
        .expect("the gateway builds");
        let router = gateway::http::router(gateway.state.clone());
        let (running, address) = serve_gateway(gateway, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("the gateway serves");
        roles.push(running);
        Self {
            address,
            http: reqwest::Client::new(),
            router,
            db,
            bus,
            redis,
            master: MasterKey::parse(MASTER_KEY).unwrap(),
            roles,
            stream,
        }
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// POSTs a GraphQL request, with `token` as the bearer credential if given.
    pub async fn graphql(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut request = self
            .http
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    /// Signs up a tenant and logs its owner in; returns (tenant id, access token).
    pub async fn owner(&self, email: &str) -> Owner {
        let signed_up = self
            .graphql(
                None,
                "mutation($input: SignUpInput!) { signUp(input: $input, consistency: STRONG) { tenantId userId position consistent } }",
                json!({ "input": { "tenantName": "Acme", "email": email, "name": "Ada", "password": PASSWORD } }),
            )
            .await;
        let tenant = signed_up["data"]["signUp"]["tenantId"]
            .as_str()
            .unwrap_or_else(|| panic!("sign-up failed: {signed_up}"))
            .to_owned();
        let user = signed_up["data"]["signUp"]["userId"]
            .as_str()
            .unwrap()
            .to_owned();
        let login = self.login(&tenant, email, PASSWORD).await;
        let token = login["data"]["login"]["accessToken"]
            .as_str()
            .unwrap_or_else(|| panic!("login failed: {login}"))
            .to_owned();
        Owner {
            tenant,
            user,
            token,
            refresh: login["data"]["login"]["refreshToken"]
                .as_str()
                .unwrap()
                .to_owned(),
            session: login["data"]["login"]["sessionId"]
                .as_str()
                .unwrap()
                .to_owned(),
        }
    }

    pub async fn login(&self, tenant: &str, email: &str, password: &str) -> Value {
        self.graphql(
            None,
            "mutation($input: LoginInput!) { login(input: $input) { accessToken refreshToken sessionId expiresIn tokenType } }",
            json!({ "input": { "tenantId": tenant, "email": email, "password": password } }),
        )
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        for role in self.roles.drain(..) {
            role.abort();
        }
        tests::delete_stream(self.stream.clone());
    }
}

/// A tenant's owner, signed in.
pub struct Owner {
    pub tenant: String,
    pub user: String,
    pub token: String,
    pub refresh: String,
    pub session: String,
}

/// The `extensions.code` of the first error.
pub fn code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {response}"))
}
