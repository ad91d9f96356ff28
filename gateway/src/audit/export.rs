//! `platform audit export`: the log, or one tenant's events, with the checkpoints that
//! cover them, to a file or to standard output (docs/audit.md sections 4 and 6).

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use eventstore::audit::export::{Bound, Export, ExportProgress, ExportRequest, Format};
use futures::TryStreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use uuid::Uuid;

use crate::serve::say;

/// What `audit export` writes.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// PostgreSQL URL of the application role.
    #[arg(
        long,
        env = "PLATFORM_DATABASE_URL",
        default_value = "postgres://platform_app@127.0.0.1:5432/platform"
    )]
    pub database_url: String,

    /// Export only this tenant's events, with the proof that ties them to a signed
    /// checkpoint (docs/audit.md section 6).
    #[arg(long, value_name = "ID")]
    pub tenant: Option<Uuid>,

    /// The first position: a global position, or an RFC 3339 time (the first event
    /// recorded at or after it). Default: 1.
    #[arg(long, value_name = "POSITION|TIME")]
    pub from: Option<Bound>,

    /// The last position: a global position, or an RFC 3339 time (the end of the longest
    /// prefix of the log recorded at or before it). Default: the log head when the export
    /// starts.
    #[arg(long, value_name = "POSITION|TIME")]
    pub to: Option<Bound>,

    /// `ndjson` (one JSON object per line) or `protobuf` (varint-delimited
    /// `platform.audit.v1.ExportItem`s).
    #[arg(long, default_value = "ndjson")]
    pub format: Format,

    /// Where to write the export; standard output when absent. The file appears only once
    /// the export is complete.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Writes an export, with a progress bar on a terminal and a summary at the end.
pub async fn run(args: &ExportArgs) -> Result<()> {
    let pool = crate::serve::app_pool(&args.database_url).await?;
    let request = ExportRequest {
        tenant: args.tenant,
        from: args.from,
        to: args.to,
        format: args.format,
        ..ExportRequest::default()
    };
    let export = Export::prepare(&pool, &request)
        .await
        .context("cannot prepare the export")?;
    let (from, to) = (export.from(), export.to());
    let bar = progress_bar(from, to);
    let started = Instant::now();

    let (mut sink, partial): (Box<dyn std::io::Write + Send>, Option<PathBuf>) = match &args.output
    {
        Some(path) => {
            let partial = partial_path(path);
            let file = std::fs::File::create(&partial)
                .with_context(|| format!("cannot create {}", partial.display()))?;
            (
                Box::new(std::io::BufWriter::with_capacity(1 << 20, file)),
                Some(partial),
            )
        }
        None => (
            Box::new(std::io::BufWriter::with_capacity(
                1 << 20,
                std::io::stdout(),
            )),
            None,
        ),
    };
    let mut progress = ExportProgress::default();
    let mut chunks = std::pin::pin!(export.into_stream());
    let written: Result<()> = async {
        while let Some(chunk) = chunks.try_next().await? {
            sink.write_all(&chunk.bytes)
                .context("cannot write the export")?;
            progress = chunk.progress;
            if progress.events > 0 {
                bar.set_position(u64::try_from(progress.position - from + 1).unwrap_or(0));
            }
        }
        sink.flush().context("cannot write the export")?;
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    drop(sink);
    if let Err(err) = written {
        if let Some(partial) = &partial {
            let _ = std::fs::remove_file(partial);
        }
        return Err(err);
    }
    if let (Some(partial), Some(path)) = (&partial, &args.output) {
        std::fs::rename(partial, path)
            .with_context(|| format!("cannot move the export into {}", path.display()))?;
    }
    let took = started.elapsed();
    let target = args
        .output
        .as_ref()
        .map_or_else(|| "standard output".to_owned(), |p| p.display().to_string());
    let scope = args
        .tenant
        .map_or_else(String::new, |tenant| format!(" of tenant {tenant}"));
    let lines = [
        format!(
            "exported {} events{scope}, {} checkpoints, positions {from}..{to}, as {} to {target}",
            progress.events, progress.checkpoints, args.format
        ),
        format!(
            "{:.1} MB in {:.2} s: {:.1} MB/s, {} events/s",
            mb(progress.bytes),
            took.as_secs_f64(),
            mb(progress.bytes) / took.as_secs_f64().max(1e-9),
            per_second(progress.events, took)
        ),
        match progress.last_checkpoint {
            Some(position) => format!(
                "unsigned tail: {} events after the checkpoint at position {position}",
                progress.unsigned_tail
            ),
            None => format!(
                "unsigned tail: {} events (no checkpoint in the export)",
                progress.unsigned_tail
            ),
        },
    ];
    pool.close().await;
    for line in lines {
        // The export itself may be on standard output: the summary goes beside it.
        if args.output.is_some() {
            say(&line);
        } else {
            tell(&line);
        }
    }
    Ok(())
}

/// `FILE.partial`, beside the file.
fn partial_path(path: &std::path::Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

#[allow(clippy::cast_precision_loss)]
pub(crate) fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

pub(crate) fn per_second(count: u64, took: Duration) -> u64 {
    let seconds = took.as_secs_f64();
    if seconds > 0.0 {
        // Display only.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rate = (count as f64 / seconds) as u64;
        rate
    } else {
        count
    }
}

/// A line for the person at the terminal, on standard error.
#[allow(clippy::print_stderr)]
pub(crate) fn tell(line: &str) {
    eprintln!("{line}");
}

/// A bar of positions on the terminal's standard error; hidden when it is not a terminal.
fn progress_bar(from: i64, to: i64) -> ProgressBar {
    let length = u64::try_from(to - from + 1).unwrap_or(0);
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} positions ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar.set_prefix("audit export");
    bar
}

/// The query of `GET /audit/export`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ExportQuery {
    /// The caller's own tenant; any other is refused.
    pub tenant: Option<String>,
    /// The first position, or an RFC 3339 time.
    pub from: Option<String>,
    /// The last position, or an RFC 3339 time.
    pub to: Option<String>,
    /// `ndjson` (the default) or `protobuf`.
    pub format: Option<String>,
}

/// `GET /audit/export`: the caller's tenant's export (docs/audit.md section 6), streamed
/// page by page as `platform audit export --tenant` writes it. Needs `audit:export`; the
/// tenant comes from the credential, so a caller exports its own tenant's events only.
pub async fn http_export(
    axum::extract::State(state): axum::extract::State<crate::http::AppState>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    use domain::identity::rbac::Permission;

    use crate::error::ApiError;
    use crate::http::{RequestId, caller_of, refused};

    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map_or_else(Uuid::now_v7, |id| id.0);
    let ip = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    let (caller, permissions) = match caller_of(&state, request.headers(), ip).await {
        Ok(found) => found,
        Err(err) => return refused(&err, request_id),
    };
    let caller = match caller.require() {
        Ok(caller) => caller.clone(),
        Err(err) => return refused(&err, request_id),
    };
    if !permissions.is_some_and(|held| held.contains(Permission::AuditExport)) {
        return refused(
            &ApiError::forbidden(Permission::AuditExport.as_str()),
            request_id,
        );
    }
    let query = match axum::extract::Query::<ExportQuery>::try_from_uri(request.uri()) {
        Ok(query) => query.0,
        Err(err) => return refused(&ApiError::bad_input("query", err.body_text()), request_id),
    };
    let bad =
        |field: &str, message: String| refused(&ApiError::bad_input(field, message), request_id);
    if let Some(tenant) = &query.tenant
        && Uuid::parse_str(tenant).ok() != Some(caller.tenant_id)
    {
        return refused(
            &ApiError::new(
                crate::error::Code::Forbidden,
                "an export covers the caller's own tenant only",
            )
            .with_reason("other_tenant"),
            request_id,
        );
    }
    let bound = |text: &Option<String>| text.as_deref().map(str::parse::<Bound>).transpose();
    let from = match bound(&query.from) {
        Ok(from) => from,
        Err(message) => return bad("from", message),
    };
    let to = match bound(&query.to) {
        Ok(to) => to,
        Err(message) => return bad("to", message),
    };
    let format = match query
        .format
        .as_deref()
        .map(str::parse::<Format>)
        .transpose()
    {
        Ok(format) => format.unwrap_or_default(),
        Err(message) => return bad("format", message),
    };
    let export = match Export::prepare(
        &state.services.pool,
        &ExportRequest {
            tenant: Some(caller.tenant_id),
            from,
            to,
            format,
            ..ExportRequest::default()
        },
    )
    .await
    {
        Ok(export) => export,
        Err(eventstore::audit::ExportError::Range(message)) => return bad("range", message),
        Err(err) => return refused(&ApiError::internal(err), request_id),
    };
    let filename = format!(
        "attachment; filename=\"audit-{}.{}\"",
        caller.tenant_id,
        match format {
            Format::Ndjson => "ndjson",
            Format::Protobuf => "pb",
        }
    );
    let body = export.into_stream().map_ok(|chunk| chunk.bytes).inspect_err(move |err| {
        tracing::error!(request_id = %request_id, error = %err, "audit export: the stream broke off");
    });
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                format.content_type().to_owned(),
            ),
            (axum::http::header::CONTENT_DISPOSITION, filename),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}
