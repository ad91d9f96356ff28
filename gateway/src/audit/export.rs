//! `platform audit export`: not built yet.

use anyhow::Result;

/// What `audit export` writes.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {}

/// Writes an export.
pub async fn run(_args: &ExportArgs) -> Result<()> {
    anyhow::bail!("audit export is not available in this build")
}
