//! `platform audit`: the checkpoint signing key, the checkpointer every serving process runs,
//! `/audit/public-key`, and the export and verification of the log (docs/audit.md).

pub mod export;
pub mod verify;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use eventstore::audit::{Checkpointer, CheckpointerConfig, PublicKey, SigningKey, store};
use sqlx::PgPool;

use crate::cli::{AuditArgs, AuditCommand, AuditKeyArgs, CheckpointArgs, Mode};
use crate::http::AppState;
use crate::serve::{Running, say};

/// Runs an `audit` subcommand. Verification answers with the exit codes of docs/audit.md
/// section 7; the other subcommands with 0, or 1 and the error.
pub async fn run(args: AuditArgs) -> ExitCode {
    let outcome = match args.command {
        AuditCommand::Verify(args) => return verify::run(&args).await,
        AuditCommand::Export(args) => export::run(&args).await,
        AuditCommand::Keygen { output } => keygen(&output),
        AuditCommand::PublicKey { key } => print_public_key(&key),
        AuditCommand::Checkpoint { database_url, key } => checkpoint(&database_url, &key).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The signing key of the configuration: `--audit-key`, else the key file. In dev mode a
/// missing file is created with a new key; otherwise a missing file means no key (`None`).
pub fn signing_key(args: &AuditKeyArgs, mode: Option<Mode>) -> Result<Option<SigningKey>> {
    if let Some(text) = &args.audit_key {
        return SigningKey::from_pem(text)
            .map(Some)
            .context("--audit-key (PLATFORM_AUDIT_KEY)");
    }
    let path = &args.audit_key_file;
    match std::fs::read_to_string(path) {
        Ok(text) => SigningKey::from_pem(&text)
            .map(Some)
            .with_context(|| format!("the audit key file {}", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if mode != Some(Mode::Dev) {
                return Ok(None);
            }
            let (key, pem) = SigningKey::generate()?;
            crate::app::create_private_file(path, pem.as_bytes())
                .context("cannot create the audit key file")?;
            say(&format!(
                "audit: created the checkpoint signing key {} (dev mode), key id {}",
                path.display(),
                key.kid()
            ));
            Ok(Some(key))
        }
        Err(err) => {
            Err(err).with_context(|| format!("cannot read the audit key file {}", path.display()))
        }
    }
}

/// Starts the checkpointer when a key is configured, after recording its public key (so
/// that `/audit/public-key` names it before it first signs). Says what it does.
pub async fn start_checkpointer(
    pool: &PgPool,
    args: &CheckpointArgs,
    mode: Option<Mode>,
) -> Result<Option<Running>> {
    let Some(key) = signing_key(&args.key, mode)? else {
        say(&format!(
            "audit: no checkpoint signing key (--audit-key, PLATFORM_AUDIT_KEY or {}); checkpoints are not signed",
            args.key.audit_key_file.display()
        ));
        return Ok(None);
    };
    store::record_key(pool, key.public())
        .await
        .context("cannot record the audit public key")?;
    say(&format!(
        "audit: signing checkpoints every {} events or {} with key {}{}",
        args.checkpoint_every,
        humantime::format_duration(args.checkpoint_interval),
        key.kid(),
        args.audit_witness
            .as_ref()
            .map(|path| format!(", witnessed in {}", path.display()))
            .unwrap_or_default()
    ));
    let checkpointer = Checkpointer::new(
        pool.clone(),
        Arc::new(key),
        CheckpointerConfig {
            every: args.checkpoint_every,
            interval: args.checkpoint_interval,
            witness: args.audit_witness.clone(),
            ..CheckpointerConfig::default()
        },
    );
    Ok(Some(Running::spawn(move |stopped| {
        checkpointer.run(stopped)
    })))
}

/// The configured signing key, which this command cannot do without.
fn required_key(args: &AuditKeyArgs) -> Result<SigningKey> {
    signing_key(args, None)?.with_context(|| {
        format!(
            "no audit key: give --audit-key or PLATFORM_AUDIT_KEY, or put one in {}",
            args.audit_key_file.display()
        )
    })
}

fn keygen(output: &Path) -> Result<()> {
    let (key, pem) = SigningKey::generate()?;
    crate::app::create_private_file(output, pem.as_bytes())?;
    say(&format!(
        "audit: wrote the signing key {} (key id {}); its public key:",
        output.display(),
        key.kid()
    ));
    print_json(key.public())
}

fn print_public_key(args: &AuditKeyArgs) -> Result<()> {
    let key = required_key(args)?;
    print_json(key.public())
}

async fn checkpoint(database_url: &str, args: &AuditKeyArgs) -> Result<()> {
    let key = required_key(args)?;
    let pool = crate::serve::app_pool(database_url).await?;
    let mut checkpointer = Checkpointer::new(pool, Arc::new(key), CheckpointerConfig::default());
    match checkpointer.checkpoint_now().await? {
        Some(made) => say(&format!(
            "audit: signed position {} (head hash {}) with key {}",
            made.position, made.head_hash, made.kid
        )),
        None => say("audit: the log head is already signed (or the log is empty)"),
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The body of `/audit/public-key`.
#[derive(Debug, serde::Serialize)]
struct PublicKeys {
    keys: Vec<PublicKey>,
}

/// `GET /audit/public-key`: every key that signs or has signed checkpoints, the most recent
/// first. Public, like a JWKS: an auditor needs it without an account.
pub async fn public_key(State(state): State<AppState>) -> Response {
    match store::public_keys(&state.services.pool).await {
        Ok(keys) => Json(PublicKeys { keys }).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "cannot read the audit keys");
            (StatusCode::SERVICE_UNAVAILABLE, "audit keys unavailable\n").into_response()
        }
    }
}
