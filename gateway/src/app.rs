//! The gateway role: builds the services behind the API from configuration, serves HTTP,
//! and the operator commands around it (`platform schema`, `platform keys`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use commands::identity::{Identity, SystemClock};
use commands::privacy::MasterKey;
use commands::security::password::PasswordHasher;
use eventstore::{
    Appender, EventRepository, Loader, LoaderConfig, LoaderTask, PgSubjectKeys, RelayConfig,
};
use projections::identity_hot::IdentityHot;
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::answers::Answers;
use crate::auth::Authenticator;
use crate::auth::jwt::TokenPolicy;
use crate::auth::keys::{self, Keyring};
use crate::cli::{GatewayArgs, KeysArgs, KeysCommand, MasterKeyArgs, Mode};
use crate::feed::Feed;
use crate::freshness::{Freshness, FreshnessTasks};
use crate::graphql::{self, ApiConfig, Services};
use crate::http::{self, AppState, Dependencies, HttpConfig};
use crate::metrics::Metrics;
use crate::ratelimit::{Limits, RateLimiter};
use crate::serve::{Running, say};

/// How often API keys' last uses are written.
const KEY_USAGE_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads the master key from `--master-key`, else from its file. In dev mode a missing
/// file is created with a new random key, and the CLI says so.
pub fn master_key(args: &MasterKeyArgs, mode: Mode) -> Result<MasterKey> {
    if let Some(text) = &args.master_key {
        return MasterKey::parse(text).context("--master-key (PLATFORM_MASTER_KEY)");
    }
    let path = &args.master_key_file;
    match std::fs::read_to_string(path) {
        Ok(text) => MasterKey::parse(&text)
            .with_context(|| format!("the master key file {}", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && mode == Mode::Dev => {
            let key = create_master_key_file(path)?;
            say(&format!(
                "master key: created {} (dev mode); keep it: the personal data and secrets sealed under it cannot be read without it",
                path.display()
            ));
            Ok(key)
        }
        Err(err) => Err(anyhow::anyhow!(
            "no master key: give --master-key or PLATFORM_MASTER_KEY, or put one in {} ({err})",
            path.display()
        )),
    }
}

fn create_master_key_file(path: &Path) -> Result<MasterKey> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| anyhow::anyhow!("the random source failed: {err}"))?;
    create_private_file(path, format!("{}\n", hex::encode(bytes)).as_bytes())
        .context("cannot create the master key file")?;
    Ok(MasterKey::from_bytes(bytes))
}

/// Writes a new file readable by its owner only (mode 0600), with its directories. Refuses
/// to replace a file that exists.
pub fn create_private_file(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The access-token policy of the gateway's configuration.
pub fn token_policy(args: &GatewayArgs) -> Result<TokenPolicy> {
    TokenPolicy::new(args.token_issuer.clone(), args.token_audience.clone())
        .and_then(|policy| policy.with_lifetime(args.access_token_ttl))
        .context("the access-token settings")
}

/// What a gateway connects to.
pub struct GatewayParts<'a> {
    /// The application role's pool.
    pub pool: &'a PgPool,
    /// The appender of this process.
    pub appender: Appender,
    /// NATS.
    pub nats: async_nats::Client,
    /// The subject prefix.
    pub nats_prefix: &'a str,
    /// Redis.
    pub redis: ConnectionManager,
    /// The key prefix in Redis.
    pub redis_prefix: &'a str,
    /// How passwords are hashed.
    pub hasher: Arc<dyn PasswordHasher>,
}

/// A gateway, built and ready to serve.
pub struct Gateway {
    /// The state of its handlers.
    pub state: AppState,
    keyring: Keyring,
    loader_task: LoaderTask,
    freshness_tasks: Option<FreshnessTasks>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// Builds the gateway's services, with the rate limits of [`Limits::default`].
pub async fn build_gateway(parts: GatewayParts<'_>, args: &GatewayArgs) -> Result<Gateway> {
    build_gateway_with_limits(parts, args, Limits::default()).await
}

/// [`build_gateway`] with other rate limits: for a benchmark, which the defaults for login
/// (a few attempts a minute) and per user would refuse.
pub async fn build_gateway_with_limits(
    parts: GatewayParts<'_>,
    args: &GatewayArgs,
    limits: Limits,
) -> Result<Gateway> {
    limits.validate().context("the rate limits")?;
    let master = master_key(&args.master, args.mode)?;
    let pool = parts.pool.clone();
    let (loader, loader_task) = Loader::spawn(&pool, LoaderConfig::default());
    let repository = EventRepository::new(pool.clone(), parts.appender, loader);
    let subject_keys = PgSubjectKeys::new(pool.clone(), master.key_wrapping_key());
    let clock = Arc::new(SystemClock);
    let identity = Identity::new(
        repository.clone(),
        subject_keys.clone(),
        parts.hasher,
        &master,
        clock.clone(),
    );
    let keyring = Keyring::load(&pool, &master, token_policy(args)?)
        .await
        .context("cannot load the access-token signing keys")?;
    let hot = IdentityHot::new(parts.redis.clone(), parts.redis_prefix);
    let freshness = Freshness::new();
    let auth = Authenticator::new(
        keyring.clone(),
        hot.clone(),
        pool.clone(),
        repository,
        clock,
    )
    .with_memory(freshness.clone(), args.memory_ttl);
    let answers = Answers::new(
        args.answer_memory_mib.saturating_mul(1024 * 1024),
        args.memory_ttl,
        freshness.clone(),
    );
    let relay = RelayConfig {
        subject_prefix: parts.nats_prefix.to_owned(),
        stream: crate::serve::stream_name(parts.nats_prefix),
        ..RelayConfig::default()
    };
    let production = args.mode == Mode::Production;
    let services = Arc::new(Services {
        identity,
        auth,
        pool: pool.clone(),
        keys: subject_keys,
        secrets: master.secrets_key(),
        limiter: RateLimiter::new(parts.redis.clone(), parts.redis_prefix),
        limits,
        metrics: Metrics::new(),
        feed: Feed::new(
            pool.clone(),
            parts.nats.clone(),
            crate::feed::FeedConfig::for_relay(&relay),
        ),
        freshness: freshness.clone(),
        answers,
        config: ApiConfig {
            introspection: args.introspection.unwrap_or(!production),
            access_token_lifetime: args.access_token_ttl,
            ..ApiConfig::default()
        },
    });
    let state = AppState {
        schema: graphql::build(Arc::clone(&services)),
        services,
        dependencies: Arc::new(Dependencies {
            pool: pool.clone(),
            nats: parts.nats,
            redis: parts.redis,
        }),
        config: HttpConfig {
            graphiql: args.graphiql.unwrap_or(!production),
            ..HttpConfig::default()
        },
    };
    // Changes are followed only when something is remembered.
    let freshness_tasks = (!args.memory_ttl.is_zero()).then(|| {
        freshness.spawn(
            state.dependencies.nats.clone(),
            parts.nats_prefix,
            pool.clone(),
            hot,
        )
    });
    Ok(Gateway {
        state,
        keyring,
        loader_task,
        freshness_tasks,
    })
}

/// Serves `gateway` on `addr` on a task of its own, until stopped. Returns the role and the
/// address it listens on.
pub async fn serve_gateway(gateway: Gateway, addr: SocketAddr) -> Result<(Running, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let address = listener
        .local_addr()
        .context("the listener has no address")?;
    let Gateway {
        state,
        keyring,
        loader_task,
        freshness_tasks,
    } = gateway;
    let usage = state
        .services
        .auth
        .key_usage()
        .spawn_flusher(KEY_USAGE_FLUSH);
    let app = http::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let running = Running::spawn(move |stopped| async move {
        let refresher = tokio::spawn(async move {
            let mut every = tokio::time::interval(keys::REFRESH_INTERVAL);
            every.tick().await;
            loop {
                every.tick().await;
                if let Err(err) = keyring.refresh().await {
                    tracing::warn!("cannot reload the signing keys: {err}");
                }
            }
        });
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!("the HTTP server failed: {err}");
        }
        refresher.abort();
        drop(freshness_tasks);
        usage.stop().await;
        loader_task.abort();
    });
    Ok((running, address))
}

/// `platform schema`: prints the SDL.
pub fn print_schema() -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(graphql::sdl().as_bytes())
        .context("cannot write the schema")?;
    Ok(())
}

/// `platform keys rotate|list`.
pub async fn keys(args: &KeysArgs) -> Result<()> {
    let pool = crate::serve::app_pool(&args.database_url).await?;
    let master = master_key(&args.master, Mode::Production)?;
    match &args.command {
        KeysCommand::Rotate { overlap } => {
            let rotation = keys::rotate(&pool, &master, *overlap)
                .await
                .context("cannot rotate the signing keys")?;
            say(&format!("signing keys: {rotation}"));
        }
        KeysCommand::List => {
            for key in keys::list(&pool)
                .await
                .context("cannot list the signing keys")?
            {
                say(&key.to_string());
            }
        }
    }
    pool.close().await;
    Ok(())
}
