//! Support for the platform's end-to-end tests and benchmarks: isolated databases on the real
//! local PostgreSQL, a running event store over them, and a small example aggregate.
//!
//! Every test gets its own database, created from scratch, migrated, and dropped when the
//! test ends, so tests never share state and never depend on each other's order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod example;
pub mod passwords;

use std::sync::Once;

use eventstore::{
    Appender, AppenderConfig, AppenderTask, EventRepository, Loader, LoaderConfig, LoaderTask,
    LogReader,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use uuid::Uuid;

/// The superuser URL tests create their databases with. Override with
/// `PLATFORM_TEST_ADMIN_URL`.
pub fn admin_url() -> String {
    std::env::var("PLATFORM_TEST_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The application role the serving process uses (created by the migrations).
pub const APP_ROLE: &str = "platform_app";

/// Turns on logging when `TEST_LOG` is set; quiet otherwise.
pub fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug")),
                )
                .with_test_writer()
                .try_init();
        }
    });
}

/// A database of its own, migrated, dropped when this value is dropped.
pub struct TestDb {
    /// The database's name.
    pub name: String,
    /// Connected as the superuser who owns the schema (for tampering and inspection).
    pub admin: PgPool,
    /// Connected as the application role, as the serving process is.
    pub app: PgPool,
    server: PgConnectOptions,
}

impl TestDb {
    /// Creates and migrates a fresh database.
    pub async fn new() -> Self {
        Self::with_app_connections(16).await
    }

    /// Like [`TestDb::new`], with a given size of the application pool.
    pub async fn with_app_connections(max: u32) -> Self {
        let server: PgConnectOptions = admin_url().parse().expect("PLATFORM_TEST_ADMIN_URL");
        Self::on(server, max).await
    }

    /// A database on the server `server` points at (as a superuser), with an application
    /// pool of `max` connections using the same connection settings.
    pub async fn on(server: PgConnectOptions, max: u32) -> Self {
        init_logging();
        let server = server.log_statements(tracing::log::LevelFilter::Trace);
        let name = format!("platform_test_{}", Uuid::new_v4().simple());
        let mut conn = server
            .connect()
            .await
            .expect("cannot reach PostgreSQL at PLATFORM_TEST_ADMIN_URL; run scripts/services.sh");
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let admin = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(server.clone().database(&name))
            .await
            .expect("connect to test database");
        eventstore::schema::migrate(&admin)
            .await
            .expect("migrate test database");
        let app = PgPoolOptions::new()
            .max_connections(max)
            .connect_with(server.clone().database(&name).username(APP_ROLE))
            .await
            .expect("connect to test database as the application role");
        Self {
            name,
            admin,
            app,
            server,
        }
    }

    /// Starts an appender (one per simulated process) over the application pool.
    pub fn store(&self) -> TestStore {
        self.store_with(AppenderConfig::default())
    }

    /// Starts an appender with the given configuration.
    pub fn store_with(&self, config: AppenderConfig) -> TestStore {
        let (appender, task) = Appender::spawn(self.app.clone(), config);
        let (loader, loader_task) = Loader::spawn(&self.app, LoaderConfig::default());
        TestStore {
            repository: EventRepository::new(self.app.clone(), appender, loader),
            reader: LogReader::new(self.app.clone()),
            task,
            loader_task,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        drop_database(&self.server, &self.name);
    }
}

/// Drops the database `name` on the server `server` points at, `WITH (FORCE)`, and waits
/// for it. Callable from `Drop` inside a runtime, which cannot be blocked on: the work runs
/// on a thread with a runtime of its own. Pools on the database are not closed first, since
/// closing waits for connections that tasks of the blocked runtime may hold; FORCE ends them.
pub fn drop_database(server: &PgConnectOptions, name: &str) {
    let (server, name) = (server.clone(), name.to_owned());
    let cleanup = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            if let Ok(mut conn) = server.connect().await {
                let _ = sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                    .execute(&mut conn)
                    .await;
            }
        });
    });
    let _ = cleanup.join();
}

/// A running event store over a [`TestDb`].
pub struct TestStore {
    /// The cqrs-es repository.
    pub repository: EventRepository,
    /// The global reader.
    pub reader: LogReader,
    /// The appender task.
    pub task: AppenderTask,
    /// The loader tasks.
    pub loader_task: LoaderTask,
}

/// The NATS server tests use. Override with `PLATFORM_TEST_NATS_URL`.
pub fn nats_url() -> String {
    std::env::var("PLATFORM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A subject prefix and a JetStream stream of their own on the real NATS server; the stream
/// is deleted when this value is dropped.
pub struct TestBus {
    /// The connection.
    pub client: async_nats::Client,
    /// The JetStream context.
    pub jetstream: async_nats::jetstream::Context,
    /// The subject prefix, unique to this bus.
    pub prefix: String,
    /// The stream's name, unique to this bus.
    pub stream: String,
}

impl TestBus {
    /// Connects and picks a fresh prefix and stream name.
    pub async fn new() -> Self {
        init_logging();
        let client = async_nats::connect(nats_url())
            .await
            .expect("cannot reach NATS at PLATFORM_TEST_NATS_URL; run scripts/services.sh");
        let id = Uuid::new_v4().simple().to_string();
        Self {
            jetstream: async_nats::jetstream::new(client.clone()),
            client,
            prefix: format!("t{}", &id[..12]),
            stream: format!("TEST_{}", &id[..12]),
        }
    }

    /// A relay configuration that publishes onto this bus.
    pub fn relay_config(&self) -> eventstore::RelayConfig {
        eventstore::RelayConfig {
            subject_prefix: self.prefix.clone(),
            stream: self.stream.clone(),
            poll_interval: std::time::Duration::from_millis(200),
            standby_poll: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_millis(500),
            ..eventstore::RelayConfig::default()
        }
    }
}

impl TestBus {
    /// The `platform-position` header of every message in `stream`, in stream order; empty
    /// if the stream does not exist.
    pub async fn positions(&self, stream: &str) -> Vec<i64> {
        let Ok(mut stream) = self.jetstream.get_stream(stream).await else {
            return Vec::new();
        };
        let state = stream.info().await.expect("stream info").state.clone();
        if state.messages == 0 {
            return Vec::new();
        }
        let mut positions = Vec::with_capacity(usize::try_from(state.messages).unwrap_or(0));
        for sequence in state.first_sequence..=state.last_sequence {
            let message = stream
                .get_raw_message(sequence)
                .await
                .expect("stream message");
            let position = message
                .headers
                .get("platform-position")
                .expect("a platform-position header")
                .as_str()
                .parse()
                .expect("a numeric position");
            positions.push(position);
        }
        positions
    }
}

/// Deletes the JetStream stream `stream`, if it exists, from any context: over a
/// connection of its own, on a thread of its own, so that it also works in `Drop` inside a
/// runtime whose thread it would otherwise block.
pub fn delete_stream(stream: String) {
    let cleanup = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(async move {
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    let _ = async_nats::jetstream::new(client)
                        .delete_stream(&stream)
                        .await;
                }
            });
        }
    });
    let _ = cleanup.join();
}

impl Drop for TestBus {
    fn drop(&mut self) {
        delete_stream(self.stream.clone());
    }
}

/// The Redis server tests use. Override with `PLATFORM_TEST_REDIS_URL`.
pub fn redis_url() -> String {
    std::env::var("PLATFORM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix of its own on the real Redis server; its keys are deleted when this value is
/// dropped. Tests share one Redis, so "flushing Redis" means deleting this prefix's keys.
pub struct TestRedis {
    /// A connection that reconnects by itself.
    pub conn: redis::aio::ConnectionManager,
    /// The key prefix, unique to this test.
    pub prefix: String,
}

impl TestRedis {
    /// Connects and picks a fresh prefix.
    pub async fn new() -> Self {
        init_logging();
        let client = redis::Client::open(redis_url()).expect("PLATFORM_TEST_REDIS_URL");
        let conn = client
            .get_connection_manager()
            .await
            .expect("cannot reach Redis at PLATFORM_TEST_REDIS_URL; run scripts/services.sh");
        Self {
            conn,
            prefix: format!("t{}", &Uuid::new_v4().simple().to_string()[..12]),
        }
    }

    /// Every key under this prefix (the models' keys start with `{<prefix>:`).
    pub async fn keys(&self) -> Vec<String> {
        let mut conn = self.conn.clone();
        let mut keys = Vec::new();
        for pattern in [format!("{}:*", self.prefix), format!("{{{}:*", self.prefix)] {
            let mut cursor: u64 = 0;
            loop {
                let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .expect("SCAN");
                keys.extend(found);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        keys
    }

    /// Deletes every key under this prefix, as a flushed or lost Redis would.
    pub async fn flush(&self) {
        let keys = self.keys().await;
        if !keys.is_empty() {
            let mut conn = self.conn.clone();
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("DEL");
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        delete_redis_keys(self.prefix.clone());
    }
}

/// Deletes every Redis key under `prefix` (the models' keys start with `{<prefix>:`), from
/// any context: over a connection of its own, on a thread of its own.
pub fn delete_redis_keys(prefix: String) {
    let cleanup = std::thread::spawn(move || {
        let Ok(client) = redis::Client::open(redis_url()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        for pattern in [format!("{prefix}:*"), format!("{{{prefix}:*")] {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query(&mut conn);
            }
        }
    });
    let _ = cleanup.join();
}

/// A database of its own for a test that runs the `platform` binary, which creates and
/// migrates it: only its name and URLs are made here. It is dropped, if it exists, when this
/// value is dropped.
pub struct NamedDatabase {
    /// The database's name.
    pub name: String,
    /// The schema owner's URL (`--admin-database-url`).
    pub admin_url: String,
    /// The application role's URL (`--database-url`).
    pub app_url: String,
    server: PgConnectOptions,
}

impl NamedDatabase {
    /// A fresh name starting with `prefix`, on the server of `PLATFORM_TEST_ADMIN_URL`.
    pub fn new(prefix: &str) -> Self {
        let name = format!("{prefix}_{}", Uuid::new_v4().simple());
        let server: PgConnectOptions = admin_url().parse().expect("PLATFORM_TEST_ADMIN_URL");
        let (host, port) = (server.get_host().to_owned(), server.get_port());
        Self {
            admin_url: format!("postgres://{}@{host}:{port}/{name}", server.get_username()),
            app_url: format!("postgres://{APP_ROLE}@{host}:{port}/{name}"),
            name,
            server,
        }
    }
}

impl Drop for NamedDatabase {
    fn drop(&mut self) {
        drop_database(&self.server, &self.name);
    }
}

/// Deletes a JetStream stream when dropped ([`delete_stream`]).
pub struct DeleteStreamOnDrop(pub String);

impl Drop for DeleteStreamOnDrop {
    fn drop(&mut self) {
        delete_stream(self.0.clone());
    }
}

/// Deletes a Redis key prefix's keys when dropped ([`delete_redis_keys`]).
pub struct DeleteKeysOnDrop(pub String);

impl Drop for DeleteKeysOnDrop {
    fn drop(&mut self) {
        delete_redis_keys(self.0.clone());
    }
}
