//! Gateway benchmark: GraphQL over HTTP against a whole platform in this process (event
//! store, relay, projections, gateway on 127.0.0.1:0 over a fresh database, stream and Redis
//! prefix), started as `gateway/tests/api/main.rs` starts it, with the product's password
//! hasher (Argon2id at OWASP cost) and an application pool of the production size (16). The
//! rate limits are raised far above what the load reaches (`build_gateway_with_limits`);
//! the checks still run in Redis on every request.
//!
//! 1. Read queries, each against a baseline: `me`, and a page of 20 users (the tenant holds
//!    its owner and at least 24 registered users). The baseline is a static axum handler on
//!    a listener of its own in this process that answers every POST with exactly the bytes
//!    the gateway answers the query with. Both are driven by the same load generator at the
//!    same concurrency: `BENCH_CONCURRENCY` workers, each with a keep-alive HTTP/1.1
//!    connection of its own (reqwest), sending one request after another. After an
//!    unmeasured second of each, the two systems take turns in `BENCH_ROUNDS` slices of
//!    `BENCH_SECONDS / BENCH_ROUNDS`, starting with a different one each round, so load from
//!    elsewhere on the machine hits both alike.
//! 2. `login`, closed loop as above (worker `i` as registered user `i`): one unmeasured
//!    second, then `BENCH_SECONDS`.
//! 3. `renameTenant` with the default EVENTUAL consistency at a fixed offered load
//!    (`BENCH_RATE`, default 500 a second), open loop: request `i` is due at
//!    `start + i / rate` and is sent on a task of its own when due, and its latency counts
//!    from when it was due, so a queue in the gateway shows as latency instead of as fewer
//!    requests sent (no coordinated omission). One unmeasured second, then
//!    `BENCH_OPEN_SECONDS`, round-robin over `BENCH_TENANTS` tenants (default 64, at least
//!    one per worker); a tenant renamed again before its last rename is stored answers
//!    CONFLICT once the unit of work's retries run out, so the tenants must not be too few.
//! 4. `renameTenant` (EVENTUAL), closed loop (worker `i` as the owner of tenant `i`).
//!
//! Before 3 and 4, a rename with STRONG consistency waits until the read models have caught
//! up with the events so far, so that no phase shares the machine with the projections'
//! backlog from the one before.
//!
//! Every response is checked: status 200, and for the read queries the very bytes captured
//! at the start, for the gateway and the baseline alike (the capture is checked field by
//! field: the principal, tenant, owner and permissions for `me`; 20 users in order with
//! their ids, addresses and names for the page; and asked twice, it must not change); for
//! `login` an access token of type Bearer and no errors; for `renameTenant` a position and
//! no errors. A request that fails is counted, the first few of each part are printed, and
//! the benchmark exits with 1.
//!
//! Run with `./dev bench api` (`cargo bench -p gateway --bench api`). Environment:
//! `BENCH_CONCURRENCY` (default 32), `BENCH_SECONDS` (default 5), `BENCH_ROUNDS` (default 5),
//! `BENCH_RATE` (default 500), `BENCH_OPEN_SECONDS` (default 10), `BENCH_TENANTS` (default
//! 64), `BENCH_POOL` (the application pool, default 16), `BENCH_PARTS` (default
//! `reads,login,mutation,open`), `BENCH_MEMORY_MS` (the gateway's `--memory-ttl` in
//! milliseconds, default 1000 as in the product; 0 turns the memory of credentials and
//! answers off, so that every read runs its query).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::routing::post;
use commands::security::password::Argon2id;
use eventstore::{Appender, AppenderConfig, AppenderTask, ProtoEncoder, Relay};
use gateway::app::{GatewayParts, build_gateway_with_limits, serve_gateway};
use gateway::cli::{GatewayArgs, MasterKeyArgs, Mode};
use gateway::ratelimit::{Limits, Policy};
use gateway::serve::{Running, stream_name};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tests::{TestBus, TestDb, TestRedis};

const MASTER_KEY: &str = "0707070707070707070707070707070707070707070707070707070707070707";
const PASSWORD: &str = "correct horse battery staple";
const OWNER_EMAIL: &str = "owner@bench.example";
const OWNER_NAME: &str = "Owner";
const ME: &str = "{ me { principal tenantId user { email name } permissions } }";
const USERS: &str = "{ users(first: 20) { edges { node { id email name roles } } } }";
const LOGIN: &str = "mutation($input: LoginInput!) { login(input: $input) { accessToken tokenType expiresIn sessionId } }";
const RENAME: &str =
    "mutation($name: String!) { renameTenant(name: $name) { position consistent } }";
const WARM_UP: Duration = Duration::from_secs(1);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn user_email(i: usize) -> String {
    format!("user{i:03}@bench.example")
}

fn user_name(i: usize) -> String {
    format!("User {i}")
}

/// The rate limits of the product with every rate and burst raised out of reach.
fn generous_limits() -> Limits {
    let raise = |policy: Policy| Policy {
        rate: 1_000_000,
        period: Duration::from_secs(1),
        burst: 1_000_000,
        ..policy
    };
    let limits = Limits::default();
    Limits {
        login_per_ip: raise(limits.login_per_ip),
        login_per_account: raise(limits.login_per_account),
        mfa_per_user: raise(limits.mfa_per_user),
        api_per_key: raise(limits.api_per_key),
        api_per_user: raise(limits.api_per_user),
        api_per_ip: raise(limits.api_per_ip),
    }
}

/// The platform under test, as `TestApp::spawn` starts it.
struct Platform {
    address: SocketAddr,
    roles: Vec<Running>,
    stream: String,
    _appender_task: AppenderTask,
    // Dropped after the roles stop: the Redis keys, the bus, then the database.
    _redis: TestRedis,
    _bus: TestBus,
    _db: TestDb,
}

impl Platform {
    async fn spawn(pool: u32) -> Self {
        let db = TestDb::with_app_connections(pool).await;
        let bus = TestBus::new().await;
        let redis = TestRedis::new().await;
        let stream = stream_name(&bus.prefix);
        let (appender, appender_task) = Appender::spawn(db.app.clone(), AppenderConfig::default());
        let relay = Relay::new(
            db.app.clone(),
            bus.client.clone(),
            eventstore::RelayConfig {
                stream: stream.clone(),
                ..bus.relay_config()
            },
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
        let args = GatewayArgs {
            mode: Mode::Dev,
            graphiql: None,
            introspection: None,
            token_issuer: "platform".into(),
            token_audience: "platform-api".into(),
            access_token_ttl: Duration::from_secs(15 * 60),
            memory_ttl: Duration::from_millis(env("BENCH_MEMORY_MS", 1_000)),
            answer_memory_mib: 64,
            master: MasterKeyArgs {
                master_key: Some(MASTER_KEY.into()),
                master_key_file: "/nonexistent/master.key".into(),
            },
        };
        let gateway = build_gateway_with_limits(
            GatewayParts {
                pool: &db.app,
                appender,
                nats: bus.client.clone(),
                nats_prefix: &bus.prefix,
                redis: redis.conn.clone(),
                redis_prefix: &redis.prefix,
                hasher: Arc::new(Argon2id::owasp()),
            },
            &args,
            generous_limits(),
        )
        .await
        .expect("the gateway builds");
        let (running, address) = serve_gateway(gateway, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("the gateway serves");
        roles.push(running);
        Self {
            address,
            roles,
            stream,
            _appender_task: appender_task,
            _redis: redis,
            _bus: bus,
            _db: db,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/graphql", self.address)
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        for role in self.roles.drain(..) {
            role.abort();
        }
        tests::delete_stream(self.stream.clone());
    }
}

/// A static axum handler on a listener of its own, answering every POST to `/graphql` with
/// `body` (it reads the request's body first, as the gateway does).
async fn serve_static(body: Bytes) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let router = Router::new().route(
        "/graphql",
        post(move |_request: Bytes| {
            let body = body.clone();
            async move { ([(CONTENT_TYPE, "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (address, task)
}

/// One kind of request, and what its answer must be.
#[derive(Clone)]
enum Work {
    /// The same request every time, answered with exactly `expected`.
    Fixed {
        url: Arc<str>,
        auth: Option<HeaderValue>,
        body: Bytes,
        expected: Bytes,
    },
    /// `login`: slot `i` logs in with `bodies[i]` (a user of its own).
    Login { url: Arc<str>, bodies: Arc<[Bytes]> },
    /// `renameTenant` with a new name each time: slot `i` as the owner of tenant `i`.
    Rename {
        url: Arc<str>,
        tokens: Arc<[HeaderValue]>,
        names: Arc<AtomicU64>,
    },
}

impl Work {
    fn slots(&self) -> usize {
        match self {
            Self::Fixed { .. } => 1,
            Self::Login { bodies, .. } => bodies.len(),
            Self::Rename { tokens, .. } => tokens.len(),
        }
    }
}

/// Sends one request of `work` as `slot`, and checks its answer.
async fn send(client: &reqwest::Client, work: &Work, slot: usize) -> Result<(), String> {
    let request = match work {
        Work::Fixed {
            url, auth, body, ..
        } => {
            let request = client.post(&**url).body(body.clone());
            match auth {
                Some(auth) => request.header(AUTHORIZATION, auth.clone()),
                None => request,
            }
        }
        Work::Login { url, bodies } => client.post(&**url).body(bodies[slot].clone()),
        Work::Rename { url, tokens, names } => {
            let name = format!("Renamed {}", names.fetch_add(1, Ordering::Relaxed));
            let body = json!({ "query": RENAME, "variables": { "name": name } });
            client
                .post(&**url)
                .header(AUTHORIZATION, tokens[slot].clone())
                .body(serde_json::to_vec(&body).unwrap())
        }
    };
    let response = request
        .header(CONTENT_TYPE, "application/json")
        .send()
        .await
        .map_err(|err| format!("no response: {err}"))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|err| format!("the body broke off: {err}"))?;
    if status != StatusCode::OK {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    match work {
        Work::Fixed { expected, .. } => {
            if bytes == *expected {
                Ok(())
            } else {
                Err(format!(
                    "unexpected body: {}",
                    String::from_utf8_lossy(&bytes)
                ))
            }
        }
        Work::Login { .. } => {
            let value: Value = serde_json::from_slice(&bytes).map_err(|err| err.to_string())?;
            let login = &value["data"]["login"];
            let token_ok = login["accessToken"].as_str().is_some_and(|t| t.len() > 20);
            if value.get("errors").is_none() && token_ok && login["tokenType"] == "Bearer" {
                Ok(())
            } else {
                Err(format!("login failed: {value}"))
            }
        }
        Work::Rename { .. } => {
            let value: Value = serde_json::from_slice(&bytes).map_err(|err| err.to_string())?;
            let position = value["data"]["renameTenant"]["position"].as_i64();
            if value.get("errors").is_none() && position.is_some_and(|p| p > 0) {
                Ok(())
            } else {
                Err(format!("renameTenant failed: {value}"))
            }
        }
    }
}

/// Requests that failed, and the first few reasons of each system.
#[derive(Default)]
struct Failures {
    count: AtomicU64,
    samples: Mutex<Vec<(String, String)>>,
}

impl Failures {
    fn record(&self, system: &str, error: &str) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.samples.lock().unwrap();
        if samples.iter().filter(|(of, _)| of == system).count() < 3 {
            samples.push((system.to_owned(), error.to_owned()));
        }
    }
}

/// What one system did in a measured run.
struct Measured {
    latency: Histogram<u64>,
    ok: u64,
    failed: u64,
    /// The measured time: from the start to the last answer.
    elapsed: Duration,
}

impl Measured {
    fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).unwrap(),
            ok: 0,
            failed: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn record(
        &mut self,
        result: Result<(), String>,
        latency: Duration,
        system: &str,
        failures: &Failures,
    ) {
        match result {
            Ok(()) => {
                self.ok += 1;
                self.latency
                    .saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
            }
            Err(error) => {
                self.failed += 1;
                failures.record(system, &error);
            }
        }
    }

    fn add(&mut self, other: &Self) {
        self.latency.add(&other.latency).unwrap();
        self.ok += other.ok;
        self.failed += other.failed;
        self.elapsed += other.elapsed;
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// `clients.len()` workers, worker `i` on `clients[i]` as slot `i` (modulo the work's
/// slots), each sending one request after another until `duration` has passed.
async fn closed_loop(
    system: &str,
    work: &Work,
    clients: &[reqwest::Client],
    duration: Duration,
    failures: &Arc<Failures>,
) -> Measured {
    let system: Arc<str> = system.into();
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(worker, client)| {
            let (client, work, failures) = (client.clone(), work.clone(), failures.clone());
            let system = system.clone();
            tokio::spawn(async move {
                let slot = worker % work.slots();
                let mut measured = Measured::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let result = send(&client, &work, slot).await;
                    measured.record(result, sent.elapsed(), &system, &failures);
                }
                measured
            })
        })
        .collect();
    let mut total = Measured::new();
    for worker in workers {
        total.add(&worker.await.unwrap());
    }
    total.elapsed = started.elapsed();
    total
}

/// One keep-alive HTTP/1.1 connection per worker: a client each, with one idle connection.
fn clients(count: usize) -> Vec<reqwest::Client> {
    (0..count)
        .map(|_| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .tcp_nodelay(true)
                .build()
                .unwrap()
        })
        .collect()
}

/// `work` against its `baseline`, interleaved: a warm-up of each, then `rounds` slices of
/// each, alternating which goes first.
async fn versus(
    names: [&str; 2],
    works: [&Work; 2],
    concurrency: usize,
    duration: Duration,
    rounds: u32,
    failures: &Arc<Failures>,
) -> [Measured; 2] {
    let clients = [clients(concurrency), clients(concurrency)];
    for system in 0..2 {
        closed_loop(
            names[system],
            works[system],
            &clients[system],
            WARM_UP,
            failures,
        )
        .await;
    }
    let mut results = [Measured::new(), Measured::new()];
    let slice = duration / rounds;
    for round in 0..rounds as usize {
        for turn in 0..2 {
            let system = (round + turn) % 2;
            let measured = closed_loop(
                names[system],
                works[system],
                &clients[system],
                slice,
                failures,
            )
            .await;
            results[system].add(&measured);
        }
    }
    results
}

/// `work` at `rate` requests a second for a warm-up second and then `duration`: request `i`
/// is due at `start + i / rate`, is sent on a task of its own when due, and its latency
/// counts from when it was due.
async fn open_loop(
    system: &str,
    work: &Work,
    rate: u64,
    duration: Duration,
    failures: &Arc<Failures>,
) -> Measured {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let interval = Duration::from_secs(1).as_nanos() as u64 / rate.max(1);
    let unmeasured = rate * WARM_UP.as_secs();
    let total = unmeasured + (rate as f64 * duration.as_secs_f64()) as u64;
    let start = Instant::now() + Duration::from_millis(10);
    let measured_from = start + Duration::from_nanos(interval * unmeasured);
    let mut requests = Vec::with_capacity(usize::try_from(total).unwrap());
    for i in 0..total {
        let due = start + Duration::from_nanos(interval * i);
        tokio::time::sleep_until(due.into()).await;
        let (client, work) = (client.clone(), work.clone());
        let slot = usize::try_from(i).unwrap() % work.slots();
        requests.push(tokio::spawn(async move {
            let result = send(&client, &work, slot).await;
            (i >= unmeasured, result, due.elapsed(), Instant::now())
        }));
    }
    let mut measured = Measured::new();
    let mut last = measured_from;
    for request in requests {
        let (counted, result, latency, done) = request.await.unwrap();
        if counted {
            measured.record(result, latency, system, failures);
            last = last.max(done);
        } else if let Err(error) = result {
            measured.failed += 1;
            failures.record(system, &error);
        }
    }
    measured.elapsed = last - measured_from;
    measured
}

/// A GraphQL request during the set-up, which must succeed.
async fn graphql(url: &str, token: Option<&str>, query: &str, variables: Value) -> Value {
    let mut request = reqwest::Client::new()
        .post(url)
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let value: Value = request.send().await.unwrap().json().await.unwrap();
    assert!(value.get("errors").is_none(), "{query}: {value}");
    value
}

/// Signs up a tenant (STRONG) and logs its owner in: (tenant, owner's user id, token).
async fn tenant(url: &str, name: &str, email: &str) -> (String, String, String) {
    let signed_up = graphql(
        url,
        None,
        "mutation($input: SignUpInput!) { signUp(input: $input, consistency: STRONG) { tenantId userId consistent } }",
        json!({ "input": { "tenantName": name, "email": email, "name": OWNER_NAME, "password": PASSWORD } }),
    )
    .await;
    let tenant = signed_up["data"]["signUp"]["tenantId"]
        .as_str()
        .unwrap()
        .to_owned();
    let user = signed_up["data"]["signUp"]["userId"]
        .as_str()
        .unwrap()
        .to_owned();
    let login = graphql(
        url,
        None,
        LOGIN,
        json!({ "input": { "tenantId": tenant, "email": email, "password": PASSWORD } }),
    )
    .await;
    let token = login["data"]["login"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    (tenant, user, token)
}

/// The gateway's answer to `query`, checked by `check`; asked twice, it must be the same.
async fn capture(url: &str, token: &str, query: &str, check: impl Fn(&Value)) -> Bytes {
    let ask = || async {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .json(&json!({ "query": query }))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    };
    let first = ask().await;
    check(&serde_json::from_slice(&first).unwrap());
    assert_eq!(first, ask().await, "{query} answers differently each time");
    first
}

/// Waits until the read models include every event so far: renames the tenant of `token`
/// with STRONG consistency until the answer says they do. Says how long that took.
async fn settle(url: &str, token: &str, before: &str) -> String {
    let started = Instant::now();
    for attempt in 0..20 {
        let renamed = graphql(
            url,
            Some(token),
            "mutation($name: String!) { renameTenant(name: $name, consistency: STRONG) { consistent } }",
            json!({ "name": format!("Settled before {before} ({attempt})") }),
        )
        .await;
        if renamed["data"]["renameTenant"]["consistent"] == true {
            return format!(
                "(the read models caught up before {before} in {:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    panic!("the read models did not catch up before {before}");
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn row(system: &str, measured: &Measured, ratio: Option<f64>) {
    let ratio = ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
    println!(
        "{system:<50} | {:>10.0} | {:>7.2} | {:>7.2} | {:>8} | {ratio:>8}",
        measured.rate(),
        measured.ms(0.5),
        measured.ms(0.99),
        measured.failed,
    );
}

#[tokio::main]
async fn main() {
    let concurrency = usize::try_from(env("BENCH_CONCURRENCY", 32).max(1)).unwrap();
    let seconds = env("BENCH_SECONDS", 5).max(1);
    let rounds = u32::try_from(env("BENCH_ROUNDS", 5).clamp(1, seconds * 10)).unwrap();
    let rate = env("BENCH_RATE", 500).max(1);
    let open_seconds = env("BENCH_OPEN_SECONDS", 10).max(1);
    let duration = Duration::from_secs(seconds);
    let load_at_start = load();

    let pool = u32::try_from(env("BENCH_POOL", 16).max(1)).unwrap();
    let parts =
        std::env::var("BENCH_PARTS").unwrap_or_else(|_| "reads,login,mutation,open".to_owned());
    let tenants = usize::try_from(env("BENCH_TENANTS", 64))
        .unwrap()
        .max(concurrency);
    let platform = Platform::spawn(pool).await;
    let url = platform.url();
    let failures = Arc::new(Failures::default());

    // The read tenant: its owner, and users to page through and to log in as.
    let (read_tenant, owner, token) = tenant(&url, "Bench", OWNER_EMAIL).await;
    let users = concurrency.max(24);
    let mut ids = vec![owner.clone()];
    for i in 0..users {
        let consistency = if i + 1 == users { "STRONG" } else { "EVENTUAL" };
        let registered = graphql(
            &url,
            None,
            &format!("mutation($input: RegisterInput!) {{ register(input: $input, consistency: {consistency}) {{ userId }} }}"),
            json!({ "input": { "tenantId": read_tenant, "email": user_email(i), "name": user_name(i), "password": PASSWORD } }),
        )
        .await;
        ids.push(
            registered["data"]["register"]["userId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let me = capture(&url, &token, ME, |value| {
        let me = &value["data"]["me"];
        assert_eq!(me["principal"], format!("user:{owner}"), "{value}");
        assert_eq!(me["tenantId"], read_tenant.as_str(), "{value}");
        assert_eq!(me["user"]["email"], OWNER_EMAIL, "{value}");
        assert_eq!(me["user"]["name"], OWNER_NAME, "{value}");
        let permissions = me["permissions"].as_array().unwrap();
        assert!(permissions.iter().any(|p| p == "users:read"), "{value}");
    })
    .await;
    let page = capture(&url, &token, USERS, |value| {
        let edges = value["data"]["users"]["edges"].as_array().unwrap();
        assert_eq!(edges.len(), 20, "{value}");
        // Oldest first: the owner, then the users in the order they registered.
        let found: Vec<&Value> = edges.iter().map(|edge| &edge["node"]).collect();
        let mut wanted = vec![
            json!({ "id": owner, "email": OWNER_EMAIL, "name": OWNER_NAME, "roles": ["owner"] }),
        ];
        wanted.extend((0..19).map(|i| {
            json!({ "id": ids[i + 1], "email": user_email(i), "name": user_name(i), "roles": [] })
        }));
        let wanted: Vec<&Value> = wanted.iter().collect();
        assert_eq!(found, wanted, "{value}");
    })
    .await;

    // The tenants to rename: one per worker at least, so that no two workers of the closed
    // loop change one tenant at once.
    let mut tokens = Vec::with_capacity(tenants);
    for first in (0..tenants).step_by(8) {
        let signed_up = futures::future::join_all((first..tenants.min(first + 8)).map(|i| {
            let (url, name, email) = (
                url.clone(),
                format!("Tenant {i}"),
                format!("owner{i:03}@bench.example"),
            );
            async move { tenant(&url, &name, &email).await }
        }))
        .await;
        for (_, _, token) in signed_up {
            tokens.push(HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        }
    }

    println!(
        "gateway benchmark: {concurrency} workers, {seconds} s per system in {rounds} interleaved slices after {} s of warm-up; open loop at {rate}/s for {open_seconds} s; renameTenant over {tenants} tenants; application pool of {pool} connections; memory of credentials and answers {} ms",
        WARM_UP.as_secs(),
        env("BENCH_MEMORY_MS", 1_000)
    );
    println!("load average (1, 5, 15 min) at the start: {load_at_start}");
    println!(
        "{:<50} | {:>10} | {:>7} | {:>7} | {:>8} | {:>8}",
        "system", "requests/s", "p50 ms", "p99 ms", "failures", "vs static"
    );

    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    let mut read_ratios = Vec::new();
    let reads = [("me", ME, me), ("users(first: 20)", USERS, page)];
    for (label, query, answer) in reads.into_iter().filter(|_| parts.contains("reads")) {
        let (static_address, static_task) = serve_static(answer.clone()).await;
        let body = Bytes::from(serde_json::to_vec(&json!({ "query": query })).unwrap());
        let gateway = Work::Fixed {
            url: url.as_str().into(),
            auth: Some(bearer.clone()),
            body: body.clone(),
            expected: answer.clone(),
        };
        let baseline = Work::Fixed {
            url: format!("http://{static_address}/graphql").into(),
            auth: Some(bearer.clone()),
            body,
            expected: answer,
        };
        let [measured, base] = versus(
            [&format!("{label}: gateway"), &format!("{label}: static")],
            [&gateway, &baseline],
            concurrency,
            duration,
            rounds,
            &failures,
        )
        .await;
        static_task.abort();
        let ratio = measured.rate() / base.rate();
        read_ratios.push((label, ratio));
        row(&format!("{label}: gateway"), &measured, Some(ratio));
        row(
            &format!("{label}: static axum handler, same bytes"),
            &base,
            Some(1.0),
        );
    }

    let login = Work::Login {
        url: url.as_str().into(),
        bodies: (0..concurrency)
            .map(|i| {
                Bytes::from(
                    serde_json::to_vec(&json!({
                        "query": LOGIN,
                        "variables": { "input": { "tenantId": read_tenant, "email": user_email(i), "password": PASSWORD } }
                    }))
                    .unwrap(),
                )
            })
            .collect(),
    };
    let rename = Work::Rename {
        url: url.as_str().into(),
        tokens: tokens.into(),
        names: Arc::new(AtomicU64::new(0)),
    };
    // Each phase of mutations starts once the read models have caught up with the events of
    // the phases before, so that it does not share the machine with their backlog.
    let mut notes = Vec::new();
    if parts.contains("login") {
        let label = "login (Argon2id at OWASP cost)";
        let clients = clients(concurrency);
        closed_loop(label, &login, &clients, WARM_UP, &failures).await;
        let measured = closed_loop(label, &login, &clients, duration, &failures).await;
        row(label, &measured, None);
    }
    let open = if parts.contains("open") {
        notes.push(settle(&url, &token, "the open loop").await);
        let label = format!("renameTenant at {rate}/s offered (open loop)");
        let open = open_loop(
            &label,
            &rename,
            rate,
            Duration::from_secs(open_seconds),
            &failures,
        )
        .await;
        row(&label, &open, None);
        Some(open)
    } else {
        None
    };
    if parts.contains("mutation") {
        notes.push(settle(&url, &token, "the closed loop").await);
        let label = "renameTenant (EVENTUAL), closed loop";
        let clients = clients(concurrency);
        closed_loop(label, &rename, &clients, WARM_UP, &failures).await;
        let measured = closed_loop(label, &rename, &clients, duration, &failures).await;
        row(label, &measured, None);
    }
    for note in notes {
        println!("{note}");
    }
    println!("load average (1, 5, 15 min) at the end: {}", load());

    let met = |ok: bool| if ok { "met" } else { "missed" };
    if !read_ratios.is_empty() {
        let reads = read_ratios
            .iter()
            .map(|(label, ratio)| format!("{label} {ratio:.2}x"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "goal: read query >= 0.4x the static handler (requests/s): {reads} -> {}",
            met(read_ratios.iter().all(|(_, ratio)| *ratio >= 0.4))
        );
    }
    if let Some(open) = open {
        let p99 = open.ms(0.99);
        println!(
            "goal: mutation p99 <= 25 ms at 500 requests/s: {p99:.2} ms at {rate}/s -> {}",
            if rate < 500 {
                "not measured at 500/s"
            } else {
                met(p99 <= 25.0 && open.failed == 0)
            }
        );
    }

    let failed = failures.count.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("{failed} requests failed; the first:");
        for (system, error) in failures.samples.lock().unwrap().iter() {
            eprintln!("  {system}: {error}");
        }
    }
    drop(platform);
    if failed > 0 {
        std::process::exit(1);
    }
}
