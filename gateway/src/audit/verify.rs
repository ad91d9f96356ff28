//! `platform audit verify`: an export offline, or the live store with `--db`, with the exit
//! codes and output lines of docs/audit.md section 7.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use eventstore::audit::PublicKey;
use eventstore::audit::export::Format;
use eventstore::audit::key::parse_public_keys;
use eventstore::audit::verify_file::{self, Outcome, VerifyError, VerifyOptions};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::export::{mb, per_second, tell};
use crate::serve::say;

/// Verified.
const VERIFIED: u8 = 0;
/// Verification failed.
const FAILED: u8 = 1;
/// A usage error: a bad flag, or a key that is not a key.
const USAGE: u8 = 2;
/// The input could not be read.
const UNREADABLE: u8 = 3;

/// What `audit verify` checks.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The export to verify (NDJSON or protobuf).
    #[arg(
        value_name = "FILE",
        required_unless_present = "db",
        conflicts_with = "db"
    )]
    pub file: Option<PathBuf>,

    /// A trusted public key: its JSON (`{"kid", "algorithm", "public_key"}`), or a file
    /// holding it or the JSON of `/audit/public-key`. Repeat it for several keys. Without
    /// it the export's own keys are used, which proves only that the file is consistent
    /// with itself.
    #[arg(long = "public-key", value_name = "KEY")]
    pub public_key: Vec<String>,

    /// A witness file of checkpoints, kept outside the database: each one the export
    /// covers must match it.
    #[arg(long, value_name = "FILE")]
    pub witness: Option<PathBuf>,

    /// The export's format; guessed from its first bytes when absent.
    #[arg(long)]
    pub format: Option<Format>,

    /// Verify the live store at this PostgreSQL URL instead of a file: the chain, the log
    /// head, and every stored checkpoint.
    #[arg(long, value_name = "URL")]
    pub db: Option<String>,
}

/// Verifies, prints the outcome, and answers with the exit code of docs/audit.md section 7.
pub async fn run(args: &VerifyArgs) -> ExitCode {
    let keys = match trusted_keys(&args.public_key) {
        Ok(keys) => keys,
        Err(message) => {
            tell(&format!("audit verify: {message}"));
            return ExitCode::from(USAGE);
        }
    };
    let started = Instant::now();
    let outcome = match (&args.db, &args.file) {
        (Some(url), _) => verify_db(url, &keys).await,
        (None, Some(file)) => verify_file(file.clone(), args, keys).await,
        (None, None) => {
            tell("audit verify: give an export FILE, or --db URL");
            return ExitCode::from(USAGE);
        }
    };
    match outcome {
        Ok(Outcome::Verified(report)) => {
            for line in report.summary() {
                say(&line);
            }
            if report.bytes > 0 {
                let took = started.elapsed();
                say(&format!(
                    "read {:.1} MB in {:.2} s: {:.1} MB/s, {} events/s",
                    mb(report.bytes),
                    took.as_secs_f64(),
                    mb(report.bytes) / took.as_secs_f64().max(1e-9),
                    per_second(report.events, took)
                ));
            }
            ExitCode::from(VERIFIED)
        }
        Ok(Outcome::Failed(failure)) => {
            say(&failure.to_string());
            ExitCode::from(FAILED)
        }
        Err(VerifyError::Usage(message)) => {
            tell(&format!("audit verify: {message}"));
            ExitCode::from(USAGE)
        }
        Err(err) => {
            tell(&format!("audit verify: {err}"));
            ExitCode::from(UNREADABLE)
        }
    }
}

/// The keys of `--public-key`: each one JSON text, or a file of it.
fn trusted_keys(arguments: &[String]) -> Result<Vec<PublicKey>, String> {
    let mut keys: Vec<PublicKey> = Vec::new();
    for argument in arguments {
        let text = if argument.trim_start().starts_with('{') {
            argument.clone()
        } else {
            std::fs::read_to_string(argument)
                .map_err(|err| format!("--public-key {argument}: {err}"))?
        };
        let found =
            parse_public_keys(&text).map_err(|err| format!("--public-key {argument}: {err}"))?;
        if found.is_empty() {
            return Err(format!("--public-key {argument}: no keys"));
        }
        for key in found {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    Ok(keys)
}

async fn verify_file(
    file: PathBuf,
    args: &VerifyArgs,
    keys: Vec<PublicKey>,
) -> Result<Outcome, VerifyError> {
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let bar = progress_bar(size);
    let options = VerifyOptions {
        keys,
        witness: args.witness.clone(),
        format: args.format,
    };
    let shown = bar.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        verify_file::verify_path(&file, &options, |bytes| shown.set_position(bytes))
    })
    .await
    .map_err(|err| VerifyError::Io {
        what: "the export".to_owned(),
        source: std::io::Error::other(err),
    })?;
    bar.finish_and_clear();
    outcome
}

async fn verify_db(url: &str, keys: &[PublicKey]) -> Result<Outcome, VerifyError> {
    let pool = crate::serve::app_pool(url)
        .await
        .map_err(|err| VerifyError::Io {
            what: "the database".to_owned(),
            source: std::io::Error::other(format!("{err:#}")),
        })?;
    let outcome = verify_file::verify_store(&pool, keys).await;
    pool.close().await;
    outcome
}

/// A bar of bytes on the terminal's standard error; hidden when it is not a terminal.
fn progress_bar(size: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar.set_prefix("audit verify");
    bar
}
