//! `platform migrate`, `platform serve` and `platform relay`, and what every role shares:
//! connections, tasks that stop on request, and the CLI's own output.

use std::time::Duration;

use anyhow::{Context, Result};
use eventstore::{Appender, AppenderConfig, LogReader, ProtoEncoder, Relay, RelayConfig, schema};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::cli::{DatabaseArgs, RelayCommandArgs, ServeArgs, StreamArgs};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const SERVICES_HINT: &str = "start the local services with scripts/services.sh";

/// Creates the database if it is missing, and applies the migrations as the schema owner.
pub async fn migrate(args: &DatabaseArgs) -> Result<()> {
    create_database(args).await?;
    let applied = migrate_database(args).await?;
    say(&format!(
        "migrations: {applied} applied, the schema is current"
    ));
    Ok(())
}

/// Runs every role in one process until interrupted.
pub async fn serve(args: &ServeArgs) -> Result<()> {
    create_database(&args.database).await?;
    let applied = migrate_database(&args.database).await?;
    say(&format!(
        "migrations: {applied} applied, the schema is current"
    ));

    let pool = app_pool(&args.database.database_url).await?;
    let head = LogReader::new(pool.clone())
        .head()
        .await
        .context("the application role cannot read the event log; run `platform migrate`")?;
    say(&format!(
        "event store: {} (log head at position {})",
        describe(&options(&args.database.database_url, "--database-url")?),
        head.position
    ));

    let version = check_nats(&args.nats_url).await?;
    say(&format!(
        "nats: {} with JetStream, version {version} (subject prefix `{}`)",
        args.nats_url, args.nats_prefix
    ));
    let redis = connect_redis(&args.redis.redis_url).await?;
    say(&format!(
        "redis: {} (key prefix `{}`)",
        args.redis.redis_url, args.redis.redis_prefix
    ));

    let (appender, task) = Appender::spawn(pool.clone(), AppenderConfig::default());
    let relay = start_relay(&pool, &args.nats_url, &args.nats_prefix, &args.stream).await?;
    let checkpointer =
        crate::audit::start_checkpointer(&pool, &args.checkpoints, Some(args.gateway.mode)).await?;
    let workers = crate::operate::start_projections(
        &pool,
        &args.nats_url,
        &args.nats_prefix,
        &redis,
        &args.redis.redis_prefix,
        &crate::operate::CATALOG,
    )
    .await?;
    let gateway = crate::app::build_gateway(
        crate::app::GatewayParts {
            pool: &pool,
            appender: appender.clone(),
            nats: connect_nats(&args.nats_url).await?,
            nats_prefix: &args.nats_prefix,
            redis: redis.clone(),
            redis_prefix: &args.redis.redis_prefix,
            hasher: std::sync::Arc::new(commands::security::password::Argon2id::owasp()),
        },
        &args.gateway,
    )
    .await?;
    let (gateway, address) = crate::app::serve_gateway(gateway, args.http_addr).await?;
    say(&format!(
        "gateway: GraphQL at http://{address}/graphql{}, JWKS at /.well-known/jwks.json, audit keys at /audit/public-key, health at /healthz and /readyz, metrics at /metrics",
        if args
            .gateway
            .graphiql
            .unwrap_or(args.gateway.mode == crate::cli::Mode::Dev)
        {
            " (GraphiQL: open it in a browser)"
        } else {
            ""
        }
    ));
    say("platform: ready; press Ctrl-C to stop");

    shutdown_signal().await;
    say("platform: stopping");
    gateway.stop().await;
    for worker in workers {
        worker.stop().await;
    }
    relay.stop().await;
    if let Some(checkpointer) = checkpointer {
        checkpointer.stop().await;
    }
    drop(appender);
    task.join().await;
    pool.close().await;
    Ok(())
}

/// Runs only the relay (an active one, or a hot standby) until interrupted.
pub async fn relay(command: &RelayCommandArgs) -> Result<()> {
    let args = &command.bus;
    let pool = app_pool(&args.database_url).await?;
    let head = LogReader::new(pool.clone())
        .head()
        .await
        .context("the application role cannot read the event log; run `platform migrate`")?;
    say(&format!(
        "event store: {} (log head at position {})",
        describe(&options(&args.database_url, "--database-url")?),
        head.position
    ));
    check_nats(&args.nats_url).await?;
    let relay = start_relay(&pool, &args.nats_url, &args.nats_prefix, &command.stream).await?;
    let checkpointer = crate::audit::start_checkpointer(&pool, &command.checkpoints, None).await?;
    say("platform: ready; press Ctrl-C to stop");
    shutdown_signal().await;
    say("platform: stopping");
    relay.stop().await;
    if let Some(checkpointer) = checkpointer {
        checkpointer.stop().await;
    }
    pool.close().await;
    Ok(())
}

/// The JetStream stream of a subject prefix: `platform` gives `PLATFORM_EVENTS`.
pub fn stream_name(prefix: &str) -> String {
    let upper: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{upper}_EVENTS")
}

/// A role (the relay, a projection worker) running on a task of its own until stopped.
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Spawns `run`, handing it a future that completes when [`Running::stop`] is called
    /// (or the handle is dropped).
    pub fn spawn<F>(run: impl FnOnce(Stopped) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(Box::pin(async move {
            let _ = stopped.await;
        })));
        Self { stop, task }
    }

    /// Ends the role at once, wherever it is (a test's teardown).
    pub fn abort(self) {
        self.task.abort();
    }

    /// Asks the role to stop and waits until it has.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        if let Err(err) = self.task.await {
            tracing::error!("a task ended abnormally: {err}");
        }
    }
}

/// Completes when a role is asked to stop.
pub type Stopped = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Connects to NATS, saying how to start it when it is not there.
pub async fn connect_nats(url: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}; {SERVICES_HINT}"))
}

async fn start_relay(
    pool: &PgPool,
    nats_url: &str,
    prefix: &str,
    stream: &StreamArgs,
) -> Result<Running> {
    anyhow::ensure!(
        !prefix.is_empty()
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "--nats-prefix `{prefix}` must be letters, digits, `_` or `-`: it is one subject token"
    );
    let client = connect_nats(nats_url).await?;
    let config = RelayConfig {
        subject_prefix: prefix.to_owned(),
        stream: stream_name(prefix),
        max_age: stream.stream_max_age,
        duplicate_window: stream.stream_duplicate_window,
        ..RelayConfig::default()
    };
    say(&format!(
        "relay: stream {} (subjects `{}`, messages kept {}, duplicates dropped within {}), leading or standing by",
        config.stream,
        config.all_subjects(),
        if config.max_age.is_zero() {
            "for good".to_owned()
        } else {
            humantime::format_duration(config.max_age).to_string()
        },
        humantime::format_duration(config.duplicate_window)
    ));
    let relay = Relay::new(pool.clone(), client, config, ProtoEncoder);
    Ok(Running::spawn(move |stopped| relay.run(stopped)))
}

/// Creates the database named in the owner's URL if it does not exist, and says so.
async fn create_database(args: &DatabaseArgs) -> Result<()> {
    let admin = options(&args.admin_database_url, "--admin-database-url")?;
    let created = schema::create_database_if_missing(&args.admin_database_url)
        .await
        .with_context(|| {
            format!(
                "cannot reach PostgreSQL as {}; {SERVICES_HINT}",
                describe(&admin)
            )
        })?;
    if created {
        say(&format!("database: created {}", describe(&admin)));
    }
    Ok(())
}

/// Applies the migrations. Returns how many ran.
async fn migrate_database(args: &DatabaseArgs) -> Result<usize> {
    let admin = options(&args.admin_database_url, "--admin-database-url")?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(admin.clone())
        .await
        .with_context(|| {
            format!(
                "cannot connect to PostgreSQL as {}; {SERVICES_HINT}",
                describe(&admin)
            )
        })?;
    let before = applied_count(&pool).await;
    schema::migrate(&pool)
        .await
        .with_context(|| format!("migrating {}", describe(&admin)))?;
    let after = applied_count(&pool).await;
    pool.close().await;
    Ok(after.saturating_sub(before))
}

async fn applied_count(pool: &PgPool) -> usize {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map_or(0, |n| usize::try_from(n).unwrap_or(0))
}

pub(crate) async fn app_pool(url: &str) -> Result<PgPool> {
    // A session whose client vanished mid-transaction could hold the log head's lock until
    // TCP noticed; the server ends such a session after a minute instead.
    let app =
        options(url, "--database-url")?.options([("idle_in_transaction_session_timeout", "60s")]);
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(app.clone())
        .await
        .with_context(|| {
            format!(
                "cannot connect to PostgreSQL as {}; the role is created by `platform migrate`",
                describe(&app)
            )
        })
}

fn options(url: &str, flag: &str) -> Result<PgConnectOptions> {
    anyhow::ensure!(
        url.starts_with("postgres://") || url.starts_with("postgresql://"),
        "{flag} must be a postgres:// URL, not {:?}",
        url.split("://").next().unwrap_or(url)
    );
    let options: PgConnectOptions = url
        .parse()
        .with_context(|| format!("{flag} is not a PostgreSQL URL"))?;
    Ok(options.log_statements(tracing::log::LevelFilter::Trace))
}

/// `user@host:port/database`, without the password.
fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    )
}

/// Connects to NATS and checks that the server has JetStream. Returns the server version.
pub(crate) async fn check_nats(url: &str) -> Result<String> {
    let client = connect_nats(url).await?;
    let info = client.server_info();
    client.drain().await.ok();
    anyhow::ensure!(
        info.jetstream,
        "NATS {} at {url} runs without JetStream; start it with -js",
        info.version
    );
    Ok(info.version)
}

/// Connects to Redis and checks that it answers. The connection reconnects by itself when
/// Redis restarts.
pub async fn connect_redis(url: &str) -> Result<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url)
        .with_context(|| format!("--redis-url {url} is not a Redis URL"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_number_of_retries(2);
    let mut connection = tokio::time::timeout(
        CONNECT_TIMEOUT,
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| format!("cannot connect to Redis at {url}; {SERVICES_HINT}"))?;
    let pong: String = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .with_context(|| format!("Redis at {url} did not answer PING"))?;
    anyhow::ensure!(pong == "PONG", "Redis at {url} answered PING with {pong:?}");
    Ok(connection)
}

pub(crate) async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// A line of the CLI's own output.
#[allow(clippy::print_stdout)]
pub(crate) fn say(line: &str) {
    println!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_database_url_of_another_kind_by_flag() {
        let err = options("mysql://root@localhost/platform", "--database-url").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--database-url must be a postgres:// URL, not \"mysql\""
        );
    }

    #[test]
    fn describes_a_connection_without_its_password() {
        let url = "postgresql://app:s3cret@db.internal:6432/platform";
        let described = describe(&options(url, "--database-url").unwrap());
        assert_eq!(described, "app@db.internal:6432/platform");
        assert!(!described.contains("s3cret"));
    }
}
