//! The `platform` binary. See `platform --help`.

use std::process::ExitCode;

use clap::Parser;
use gateway::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PLATFORM_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,async_nats=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Migrate(args) => gateway::serve::migrate(&args).await,
        Command::Serve(args) => gateway::serve::serve(&args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
