//! `platform audit verify`: not built yet.

use std::process::ExitCode;

/// What `audit verify` checks.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {}

/// Verifies an export.
pub async fn run(_args: &VerifyArgs) -> ExitCode {
    ExitCode::from(2)
}
