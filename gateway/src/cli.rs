//! The command line: subcommands, flags, and the environment variables behind them.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// The platform core: identity, metering, billing and provisioning over an event-sourced log.
#[derive(Debug, Parser)]
#[command(name = "platform", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The platform's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the database migrations, connecting as the schema owner.
    Migrate(DatabaseArgs),
    /// Run every role in one process: create the database if it is missing, migrate, check
    /// NATS JetStream and Redis, start the event store, and run until interrupted.
    Serve(Box<ServeArgs>),
    /// Run only the relay, which publishes the event log to NATS JetStream in order. Start
    /// several: one leads, the others stand by and take over when it stops.
    Relay(RelayCommandArgs),
    /// Run the projection workers, which build the read models from the bus, until
    /// interrupted. Each follows its own durable consumer and heals gaps from the log.
    Project(ProjectArgs),
    /// Rebuild read models from the event log into shadow tables, then swap them in. Live
    /// workers carry on from where the rebuild stopped.
    Replay(ReplayArgs),
    /// Show where each projection stands, or resume or skip a parked one.
    Projections(ProjectionsArgs),
    /// Print the GraphQL schema (SDL) the gateway serves.
    Schema,
    /// Manage the keys that sign access tokens.
    Keys(KeysArgs),
    /// Sign, export and verify the audit trail (docs/audit.md).
    Audit(AuditArgs),
}

/// `audit` and what it does.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// The auditor's and the operator's commands.
#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Make a new checkpoint signing key (Ed25519, PKCS#8 PEM) and print its public key.
    Keygen {
        /// Where to write the private key (mode 0600); it must not exist yet.
        #[arg(short, long, value_name = "FILE")]
        output: std::path::PathBuf,
    },
    /// Print the public key of the configured signing key, as `--public-key` takes it.
    PublicKey {
        /// The signing key.
        #[command(flatten)]
        key: AuditKeyArgs,
    },
    /// Sign a checkpoint of the log head now, unless one already signs it.
    Checkpoint {
        /// PostgreSQL URL of the application role.
        #[arg(
            long,
            env = "PLATFORM_DATABASE_URL",
            default_value = "postgres://platform_app@127.0.0.1:5432/platform"
        )]
        database_url: String,
        /// The signing key.
        #[command(flatten)]
        key: AuditKeyArgs,
    },
    /// Export the log, or one tenant's events, with the checkpoints that cover them.
    Export(crate::audit::export::ExportArgs),
    /// Verify an export offline, or the live store with `--db`.
    Verify(crate::audit::verify::VerifyArgs),
}

/// The checkpoint signing key and when to sign. The database never sees the private key.
#[derive(Debug, Clone, Args)]
pub struct AuditKeyArgs {
    /// The signing key itself: Ed25519 in PKCS#8 PEM (`openssl genpkey -algorithm ed25519`).
    #[arg(long, env = "PLATFORM_AUDIT_KEY", hide_env_values = true)]
    pub audit_key: Option<String>,

    /// A file holding the signing key, read when `--audit-key` is absent. In `dev` mode a
    /// missing file is created with a new key (mode 0600).
    #[arg(
        long,
        env = "PLATFORM_AUDIT_KEY_FILE",
        default_value = ".platform/audit.key"
    )]
    pub audit_key_file: std::path::PathBuf,
}

/// The checkpointer: its key, its cadence and its witness.
#[derive(Debug, Clone, Args)]
pub struct CheckpointArgs {
    /// The signing key.
    #[command(flatten)]
    pub key: AuditKeyArgs,

    /// Sign a checkpoint once this many events were appended since the last one.
    #[arg(long, env = "PLATFORM_CHECKPOINT_EVERY", default_value_t = 1_000,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub checkpoint_every: i64,

    /// Sign a checkpoint once this long passed since the last one, if the log moved.
    #[arg(
        long,
        env = "PLATFORM_CHECKPOINT_INTERVAL",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub checkpoint_interval: Duration,

    /// Also append every checkpoint to this file, as a witness kept outside the database.
    #[arg(long, env = "PLATFORM_AUDIT_WITNESS", value_name = "FILE")]
    pub audit_witness: Option<std::path::PathBuf>,
}

/// `keys` and what it does.
#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    /// PostgreSQL URL of the application role.
    #[arg(
        long,
        env = "PLATFORM_DATABASE_URL",
        default_value = "postgres://platform_app@127.0.0.1:5432/platform",
        global = true
    )]
    pub database_url: String,

    /// The master key, which seals the signing keys.
    #[command(flatten)]
    pub master: MasterKeyArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// The operator's commands for signing keys.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Make a new signing key the one that signs. The previous one keeps verifying the
    /// tokens it signed for `--overlap`, then is dropped from the JWKS.
    Rotate {
        /// How long the previous key keeps verifying; at least the access tokens' lifetime.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        overlap: Duration,
    },
    /// List the signing keys and their state.
    List,
}

/// Where the master key comes from. The database never sees it.
#[derive(Debug, Clone, Args)]
pub struct MasterKeyArgs {
    /// The master key: 64 hex digits or base64 of 32 bytes. Every other key (subjects'
    /// data keys, the email index, sealed secrets, signing keys) is derived from it or
    /// sealed with it.
    #[arg(long, env = "PLATFORM_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,

    /// A file holding the master key, read when `--master-key` is absent. In `dev` mode a
    /// missing file is created with a new random key (mode 0600).
    #[arg(
        long,
        env = "PLATFORM_MASTER_KEY_FILE",
        default_value = ".platform/master.key"
    )]
    pub master_key_file: std::path::PathBuf,
}

/// How strict the gateway is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// For a developer's machine: GraphiQL and introspection on; a master key file is made
    /// when there is none.
    Dev,
    /// For production: GraphiQL and introspection off, and a master key must be given.
    Production,
}

/// How the gateway serves.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// `dev` or `production`.
    #[arg(long, env = "PLATFORM_MODE", value_enum, default_value = "dev")]
    pub mode: Mode,

    /// Serve GraphiQL on `GET /graphql` (default: on in dev, off in production).
    #[arg(long, env = "PLATFORM_GRAPHIQL")]
    pub graphiql: Option<bool>,

    /// Answer introspection queries (default: on in dev, off in production).
    #[arg(long, env = "PLATFORM_INTROSPECTION")]
    pub introspection: Option<bool>,

    /// The `iss` of access tokens.
    #[arg(long, env = "PLATFORM_TOKEN_ISSUER", default_value = "platform")]
    pub token_issuer: String,

    /// The `aud` of access tokens.
    #[arg(long, env = "PLATFORM_TOKEN_AUDIENCE", default_value = "platform-api")]
    pub token_audience: String,

    /// How long an access token lives; at most 15 minutes.
    #[arg(
        long,
        env = "PLATFORM_ACCESS_TOKEN_TTL",
        default_value = "15m",
        value_parser = humantime::parse_duration
    )]
    pub access_token_ttl: Duration,

    /// How long what a credential proved, and a query's answer, may be served from memory
    /// while the tenant's read models have not changed; `0s` turns the memory off.
    #[arg(
        long,
        env = "PLATFORM_MEMORY_TTL",
        default_value = "1s",
        value_parser = humantime::parse_duration
    )]
    pub memory_ttl: Duration,

    /// The most query answers kept in memory, in MiB; `0` keeps none.
    #[arg(long, env = "PLATFORM_ANSWER_MEMORY_MIB", default_value_t = 64)]
    pub answer_memory_mib: u64,

    /// The master key.
    #[command(flatten)]
    pub master: MasterKeyArgs,
}

/// What `project` runs and connects to.
#[derive(Debug, Clone, Args)]
pub struct ProjectArgs {
    /// The bus the workers follow.
    #[command(flatten)]
    pub bus: RelayArgs,

    /// The Redis of the hot read models.
    #[command(flatten)]
    pub redis: RedisArgs,

    /// A projection to run (repeat for several); every projection when absent.
    #[arg(long = "projection", value_name = "NAME")]
    pub projections: Vec<String>,
}

/// What `replay` rebuilds.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// PostgreSQL URL of the application role.
    #[arg(
        long,
        env = "PLATFORM_DATABASE_URL",
        default_value = "postgres://platform_app@127.0.0.1:5432/platform"
    )]
    pub database_url: String,

    /// The Redis of the hot read models.
    #[command(flatten)]
    pub redis: RedisArgs,

    /// The projection to rebuild; every projection when absent.
    #[arg(long, value_name = "NAME")]
    pub projection: Option<String>,

    /// Rebuild through this global position instead of the head of the log.
    #[arg(long, value_name = "N")]
    pub to_position: Option<i64>,
}

/// `projections` and what it does.
#[derive(Debug, Clone, Args)]
pub struct ProjectionsArgs {
    /// PostgreSQL URL of the application role.
    #[arg(
        long,
        env = "PLATFORM_DATABASE_URL",
        default_value = "postgres://platform_app@127.0.0.1:5432/platform",
        global = true
    )]
    pub database_url: String,

    /// What to do.
    #[command(subcommand)]
    pub command: ProjectionsCommand,
}

/// The operator's commands for projections.
#[derive(Debug, Clone, Subcommand)]
pub enum ProjectionsCommand {
    /// Every projection's version, position, lag behind the log, and whether it is parked
    /// (with the event and its error); then the events ever skipped.
    Status,
    /// Resume a parked projection after a fix: it tries the parked event again.
    Resume {
        /// The projection.
        name: String,
    },
    /// Skip, for good, the event a projection is parked on, and resume it. The skip is
    /// recorded with who asked and the event's error.
    Skip {
        /// The projection.
        name: String,
        /// The global position of the parked event: only that one can be skipped.
        #[arg(long)]
        position: i64,
        /// Who is skipping it, for the record.
        #[arg(long, env = "USER", default_value = "operator")]
        by: String,
    },
}

/// What `relay` connects to.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// PostgreSQL URL of the application role.
    #[arg(
        long,
        env = "PLATFORM_DATABASE_URL",
        default_value = "postgres://platform_app@127.0.0.1:5432/platform"
    )]
    pub database_url: String,

    /// NATS server with JetStream enabled.
    #[arg(
        long,
        env = "PLATFORM_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// Prefix of every NATS subject; the stream is `<PREFIX>_EVENTS`.
    #[arg(long, env = "PLATFORM_NATS_PREFIX", default_value = "platform")]
    pub nats_prefix: String,
}

/// `relay`: the bus, and the stream the relay creates or updates.
#[derive(Debug, Clone, Args)]
pub struct RelayCommandArgs {
    /// Where the relay reads and publishes.
    #[command(flatten)]
    pub bus: RelayArgs,

    /// The stream it keeps.
    #[command(flatten)]
    pub stream: StreamArgs,

    /// Signed checkpoints. A relay signs them only when it is given a key.
    #[command(flatten)]
    pub checkpoints: CheckpointArgs,
}

/// The JetStream stream's settings, applied when the relay creates or updates it.
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// How long the stream keeps a message, such as `30d`; `0s` keeps every message. The
    /// log in PostgreSQL is the record either way: consumers heal what the stream dropped.
    #[arg(
        long,
        env = "PLATFORM_STREAM_MAX_AGE",
        default_value = "0s",
        value_parser = humantime::parse_duration
    )]
    pub stream_max_age: Duration,

    /// How long JetStream remembers a message id to drop a republished duplicate, such as
    /// `2m`. A relay that restarts republishes from its checkpoint, within this window.
    #[arg(
        long,
        env = "PLATFORM_STREAM_DUPLICATE_WINDOW",
        default_value = "2m",
        value_parser = humantime::parse_duration
    )]
    pub stream_duplicate_window: Duration,
}

/// Where the hot read models live.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis server for hot read models and rate limits.
    #[arg(
        long,
        env = "PLATFORM_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Prefix of every Redis key, so that deployments can share a server.
    #[arg(long, env = "PLATFORM_REDIS_PREFIX", default_value = "platform")]
    pub redis_prefix: String,
}

/// Where the event store lives.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL the serving process connects with: the application role, which can
    /// append and read events but cannot change them.
    #[arg(
        long,
        env = "PLATFORM_DATABASE_URL",
        default_value = "postgres://platform_app@127.0.0.1:5432/platform"
    )]
    pub database_url: String,

    /// PostgreSQL URL of the schema owner, used to create the database and run migrations.
    #[arg(
        long,
        env = "PLATFORM_ADMIN_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/platform"
    )]
    pub admin_database_url: String,
}

/// Everything `serve` connects to.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The event store.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// NATS server with JetStream enabled.
    #[arg(
        long,
        env = "PLATFORM_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// Prefix of every NATS subject and of the stream's name (`<PREFIX>_EVENTS`), so that
    /// deployments can share a server.
    #[arg(long, env = "PLATFORM_NATS_PREFIX", default_value = "platform")]
    pub nats_prefix: String,

    /// The Redis of the hot read models.
    #[command(flatten)]
    pub redis: RedisArgs,

    /// The stream the relay keeps.
    #[command(flatten)]
    pub stream: StreamArgs,

    /// Address the HTTP server will listen on.
    #[arg(long, env = "PLATFORM_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// How the gateway serves.
    #[command(flatten)]
    pub gateway: GatewayArgs,

    /// Signed checkpoints of the log.
    #[command(flatten)]
    pub checkpoints: CheckpointArgs,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_flag_overrides_the_default() {
        let cli = Cli::try_parse_from([
            "platform",
            "serve",
            "--nats-url",
            "nats://10.0.0.1:4222",
            "--http-addr",
            "0.0.0.0:9000",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(args.nats_url, "nats://10.0.0.1:4222");
        assert_eq!(args.http_addr.port(), 9000);
        assert_eq!(args.redis.redis_prefix, "platform");
    }

    #[test]
    fn a_bad_address_is_refused_by_name() {
        let err = Cli::try_parse_from(["platform", "serve", "--http-addr", "nowhere"]).unwrap_err();
        assert!(err.to_string().contains("--http-addr"), "{err}");
    }

    #[test]
    fn the_stream_keeps_everything_by_default_and_takes_human_durations() {
        let cli = Cli::try_parse_from(["platform", "relay"]).unwrap();
        let Command::Relay(args) = cli.command else {
            panic!("expected relay");
        };
        assert_eq!(args.stream.stream_max_age, Duration::ZERO);
        assert_eq!(
            args.stream.stream_duplicate_window,
            Duration::from_secs(120)
        );

        let cli = Cli::try_parse_from([
            "platform",
            "serve",
            "--stream-max-age",
            "30d",
            "--stream-duplicate-window",
            "90s",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(args.stream.stream_max_age, Duration::from_secs(30 * 86_400));
        assert_eq!(args.stream.stream_duplicate_window, Duration::from_secs(90));

        let err =
            Cli::try_parse_from(["platform", "relay", "--stream-max-age", "a while"]).unwrap_err();
        assert!(err.to_string().contains("--stream-max-age"), "{err}");
    }
}
