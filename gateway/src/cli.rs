//! The command line: subcommands, flags, and the environment variables behind them.

use std::net::SocketAddr;

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
    Serve(ServeArgs),
    /// Run only the relay, which publishes the event log to NATS JetStream in order. Start
    /// several: one leads, the others stand by and take over when it stops.
    Relay(RelayArgs),
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

    /// Redis server for hot read models and rate limits.
    #[arg(
        long,
        env = "PLATFORM_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Prefix of every Redis key.
    #[arg(long, env = "PLATFORM_REDIS_PREFIX", default_value = "platform")]
    pub redis_prefix: String,

    /// Address the HTTP server will listen on.
    #[arg(long, env = "PLATFORM_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
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
        assert_eq!(args.redis_prefix, "platform");
    }

    #[test]
    fn a_bad_address_is_refused_by_name() {
        let err = Cli::try_parse_from(["platform", "serve", "--http-addr", "nowhere"]).unwrap_err();
        assert!(err.to_string().contains("--http-addr"), "{err}");
    }
}
