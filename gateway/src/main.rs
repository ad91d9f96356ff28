//! The `platform` binary. See `platform --help`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use gateway::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let outcome = match cli.command {
        // Verification has exit codes of its own, for scripts (docs/audit.md section 7).
        Command::Audit(args) => return gateway::audit::run(args).await,
        Command::Migrate(args) => gateway::serve::migrate(&args).await,
        Command::Serve(args) => gateway::serve::serve(&args).await,
        Command::Relay(args) => gateway::serve::relay(&args).await,
        Command::Project(args) => gateway::operate::project(&args).await,
        Command::Replay(args) => gateway::operate::replay(&args).await,
        Command::Projections(args) => gateway::operate::projections(&args).await,
        Command::Schema => gateway::app::print_schema(),
        Command::Keys(args) => gateway::app::keys(&args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `PLATFORM_LOG`. `PLATFORM_LOG_FORMAT=json` writes one JSON
/// object per line (with the span's fields, such as the request id), for log collectors;
/// `text` writes lines for people. The default is text on a terminal, JSON otherwise.
fn init_logging() {
    let filter = EnvFilter::try_from_env("PLATFORM_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,async_nats=warn"));
    let terminal = std::io::stderr().is_terminal();
    let json = match std::env::var("PLATFORM_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.with_ansi(terminal).init();
    }
}

/// The error and its causes, each said once: many errors already include their cause's
/// message in their own.
fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if !text.contains(&message) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
    }
    text
}
