//! The export of the log, or of one tenant's events, with the checkpoints that cover them
//! (docs/audit.md sections 4 and 6).
//!
//! [`Export::prepare`] fixes what an export holds (its range, the checkpoints it carries and
//! their keys) before anything is written, so that a caller can refuse a bad request before
//! it starts streaming; [`Export::into_stream`] then writes it as chunks of encoded items,
//! one page of events at a time: memory stays bounded by the page size however long the
//! log is. Events are written in their canonical encoding, so the text of each record
//! hashes to its `hash` as it stands and a verifier needs no re-encoding.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use futures::Stream;
use futures::stream;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::canonical::{Digest32, ZERO_HASH, format_recorded_at};
use crate::error::StoreError;
use crate::reader::{LogFilter, read_filtered_page, read_page};
use crate::record::RecordedEvent;

use super::checkpoint::{Checkpoint, CheckpointItem};
use super::key::PublicKey;
use super::merkle::{self, ChainHead, ChainHeadItem};
use super::store;

/// The `spec` member of an export's header.
pub const EXPORT_SPEC: &str = "platform-audit-export/1";

/// The version of docs/hash-spec.md the events are hashed by.
pub const HASH_SPEC: u32 = 1;

/// Events read per round trip unless configured otherwise.
pub const DEFAULT_EXPORT_PAGE: i64 = 2_000;

/// How an export is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One JSON object per line.
    #[default]
    Ndjson,
    /// Varint-length-delimited `platform.audit.v1.ExportItem` messages.
    Protobuf,
}

impl Format {
    /// The name the CLI and the HTTP endpoint use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ndjson => "ndjson",
            Self::Protobuf => "protobuf",
        }
    }

    /// The media type of an export in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Ndjson => "application/x-ndjson",
            Self::Protobuf => {
                "application/x-protobuf; messageType=platform.audit.v1.ExportItem; delimited=true"
            }
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "ndjson" => Ok(Self::Ndjson),
            "protobuf" => Ok(Self::Protobuf),
            other => Err(format!(
                "unknown format {other:?}: expected ndjson or protobuf"
            )),
        }
    }
}

/// One end of an export's range: a global position, or a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A global position.
    Position(i64),
    /// An RFC 3339 time. As `to`, the end of the longest prefix of the log recorded at or
    /// before it (one before the first event recorded after it); as `from`, the first
    /// event recorded at or after it.
    Time(DateTime<Utc>),
}

impl FromStr for Bound {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(position) = text.parse::<i64>() {
            return if position >= 0 {
                Ok(Self::Position(position))
            } else {
                Err(format!("position {position} is negative"))
            };
        }
        DateTime::parse_from_rfc3339(text)
            .map(|at| Self::Time(at.with_timezone(&Utc)))
            .map_err(|err| format!("{text:?} is neither a position nor an RFC 3339 time ({err})"))
    }
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// Only this tenant's events (a tenant export), or the whole log.
    pub tenant: Option<Uuid>,
    /// The first position (default 1).
    pub from: Option<Bound>,
    /// The last position (default: the log head when the export starts).
    pub to: Option<Bound>,
    /// The encoding.
    pub format: Format,
    /// Events read per round trip: the most the export holds in memory.
    pub page_size: i64,
}

impl Default for ExportRequest {
    fn default() -> Self {
        Self {
            tenant: None,
            from: None,
            to: None,
            format: Format::Ndjson,
            page_size: DEFAULT_EXPORT_PAGE,
        }
    }
}

/// Why an export cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The range asked for is not one the log has.
    #[error("{0}")]
    Range(String),
    /// An event cannot be encoded (its stored columns break the encoding's rules).
    #[error("the event at position {position} cannot be encoded: {problem}")]
    Encode {
        /// The event.
        position: i64,
        /// Why.
        problem: String,
    },
}

impl From<sqlx::Error> for ExportError {
    fn from(err: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(err))
    }
}

/// The header item (docs/audit.md section 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderItem {
    /// Always `header`.
    #[serde(rename = "type")]
    pub kind: String,
    /// [`EXPORT_SPEC`].
    pub spec: String,
    /// [`HASH_SPEC`].
    pub hash_spec: u32,
    /// `log` or `tenant`.
    pub scope: String,
    /// The tenant of a tenant export, else `null`.
    pub tenant_id: Option<String>,
    /// The first position covered.
    pub from: i64,
    /// The last position covered.
    pub to: i64,
    /// When the export was made.
    pub exported_at: String,
    /// Every key that signed a checkpoint in the file.
    pub public_keys: Vec<serde_json::Value>,
}

/// The end item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndItem {
    /// Always `end`.
    #[serde(rename = "type")]
    pub kind: String,
    /// How many events the file holds.
    pub events: u64,
    /// How many checkpoints it holds.
    pub checkpoints: u64,
    /// The position of its last event, or 0.
    pub last_position: i64,
    /// The hash of its last event, or 64 zeros.
    pub last_hash: String,
}

/// A tenant checkpoint's inclusion proof of the tenant's head (RFC 9162).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofItem {
    /// The leaf's index in the tree.
    pub leaf_index: u64,
    /// How many leaves the tree has.
    pub tree_size: u64,
    /// The audit path, from the leaf upwards, hex.
    pub path: Vec<String>,
}

/// The checkpoint of a tenant export: the checkpoint, the tenant's head at its position,
/// and the proof that the head is a leaf of the signed tenant heads tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantCheckpointItem {
    /// The checkpoint's members.
    #[serde(flatten)]
    pub checkpoint: CheckpointItem,
    /// The tenant's latest event at the checkpoint.
    pub tenant_head: ChainHeadItem,
    /// Its inclusion proof.
    pub proof: ProofItem,
}

/// A checkpoint of a tenant export, with what ties the tenant to it.
#[derive(Debug, Clone)]
struct TenantCheckpoint {
    checkpoint: Checkpoint,
    head: ChainHead,
    leaf_index: u64,
    tree_size: u64,
    path: Vec<Digest32>,
}

/// How far an export has got: cumulative, carried by every chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportProgress {
    /// The last position written (events only).
    pub position: i64,
    /// Events written.
    pub events: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Bytes written, this chunk's included.
    pub bytes: u64,
    /// The position of the last checkpoint written.
    pub last_checkpoint: Option<i64>,
    /// Events written after the last checkpoint: the unsigned tail.
    pub unsigned_tail: u64,
    /// Whether the end record is written.
    pub done: bool,
}

/// One piece of an export: encoded items, and where the export stands after them.
#[derive(Debug, Clone)]
pub struct ExportChunk {
    /// The encoded items.
    pub bytes: Vec<u8>,
    /// The export after this chunk.
    pub progress: ExportProgress,
}

/// An export whose contents are fixed, ready to be written.
#[derive(Debug, Clone)]
pub struct Export {
    pool: PgPool,
    tenant: Option<Uuid>,
    from: i64,
    to: i64,
    format: Format,
    page_size: i64,
    exported_at: DateTime<Utc>,
    keys: Vec<PublicKey>,
    /// Log exports: checkpoints up to this position are written (those stored when the
    /// export was prepared).
    checkpoints_to: i64,
    tenant_checkpoint: Option<TenantCheckpoint>,
}

impl Export {
    /// Resolves the range (times to positions; `to` defaults to the head and may not pass
    /// it), and fixes the checkpoints the export carries and the keys that signed them.
    pub async fn prepare(pool: &PgPool, request: &ExportRequest) -> Result<Self, ExportError> {
        let head: i64 = sqlx::query_scalar("SELECT position FROM log_head")
            .fetch_one(pool)
            .await?;
        let from = match request.from {
            None => 1,
            Some(Bound::Position(position)) => position,
            Some(Bound::Time(at)) => sqlx::query_scalar::<_, i64>(
                "SELECT global_position FROM events WHERE recorded_at >= $1
                  ORDER BY global_position LIMIT 1",
            )
            .bind(at)
            .fetch_optional(pool)
            .await?
            .unwrap_or(head + 1),
        };
        let to = match request.to {
            None => head,
            Some(Bound::Position(position)) => position,
            // The end of the longest prefix recorded at or before the time: one before the
            // first event recorded after it (`recorded_at` is not monotonic; see `history`).
            Some(Bound::Time(at)) => sqlx::query_scalar::<_, i64>(
                "SELECT global_position FROM events WHERE recorded_at > $1
                  ORDER BY global_position LIMIT 1",
            )
            .bind(at)
            .fetch_optional(pool)
            .await?
            .map_or(head, |first_after| first_after - 1),
        };
        if from < 1 {
            return Err(ExportError::Range(format!(
                "the export must start at position 1 or later, not {from}"
            )));
        }
        if to > head {
            return Err(ExportError::Range(format!(
                "position {to} is beyond the log head at {head}"
            )));
        }
        // `from` may pass `to` by one: an empty range (an empty log exports as 1..0).
        let to = to.max(from - 1);
        let mut export = Self {
            pool: pool.clone(),
            tenant: request.tenant,
            from,
            to,
            format: request.format,
            page_size: request.page_size.max(1),
            exported_at: Utc::now(),
            keys: Vec::new(),
            checkpoints_to: 0,
            tenant_checkpoint: None,
        };
        match request.tenant {
            None => {
                let last: Option<i64> = sqlx::query_scalar(
                    "SELECT max(position) FROM audit_checkpoints WHERE position BETWEEN $1 AND $2",
                )
                .bind(from)
                .bind(to)
                .fetch_one(pool)
                .await?;
                export.checkpoints_to = last.unwrap_or(0);
                export.keys = store::keys_of_checkpoints(pool, from, export.checkpoints_to).await?;
            }
            Some(tenant) => {
                export.tenant_checkpoint = tenant_checkpoint(pool, tenant, from, to).await?;
                if let Some(found) = &export.tenant_checkpoint {
                    export.keys = store::keys_of_checkpoints(
                        pool,
                        found.checkpoint.position,
                        found.checkpoint.position,
                    )
                    .await?;
                }
            }
        }
        Ok(export)
    }

    fn fetch_plan(&self) -> FetchPlan {
        FetchPlan {
            pool: self.pool.clone(),
            tenant: self.tenant,
            to: self.to,
            limit: self.page_size,
            checkpoints_to: self.checkpoints_to,
        }
    }

    /// The first position covered.
    pub fn from(&self) -> i64 {
        self.from
    }

    /// The last position covered.
    pub fn to(&self) -> i64 {
        self.to
    }

    /// The tenant of a tenant export.
    pub fn tenant(&self) -> Option<Uuid> {
        self.tenant
    }

    /// The encoding.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The keys that signed the checkpoints the export carries.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// The header item.
    pub fn header(&self) -> HeaderItem {
        HeaderItem {
            kind: "header".to_owned(),
            spec: EXPORT_SPEC.to_owned(),
            hash_spec: HASH_SPEC,
            scope: if self.tenant.is_some() {
                "tenant"
            } else {
                "log"
            }
            .to_owned(),
            tenant_id: self.tenant.map(|tenant| tenant.to_string()),
            from: self.from,
            to: self.to,
            exported_at: format_recorded_at(&self.exported_at),
            public_keys: self
                .keys
                .iter()
                .map(|key| {
                    serde_json::json!({
                        "kid": key.kid,
                        "algorithm": key.algorithm,
                        "public_key": key.public_key,
                    })
                })
                .collect(),
        }
    }

    /// The export as a stream of chunks: the header, one chunk per page of events with its
    /// checkpoints, and the end record. The stream ends after the end record, or at the
    /// first error.
    pub fn into_stream(self) -> impl Stream<Item = Result<ExportChunk, ExportError>> + Send {
        let state = Writer {
            next: Some(self.from),
            progress: ExportProgress::default(),
            last_hash: ZERO_HASH,
            header_written: false,
            ahead: None,
            export: self,
        };
        stream::try_unfold(Some(state), |state| async move {
            let Some(mut state) = state else {
                return Ok(None);
            };
            let chunk = state.next_chunk().await?;
            let more = !chunk.progress.done;
            Ok(Some((chunk, more.then_some(state))))
        })
    }
}

/// The writing state of a stream.
struct Writer {
    export: Export,
    /// The next position to read, or `None` once every event is written.
    next: Option<i64>,
    progress: ExportProgress,
    last_hash: Digest32,
    header_written: bool,
    /// The page being read ahead, and where it starts.
    ahead: Option<(i64, tokio::task::JoinHandle<Result<Page, ExportError>>)>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some((_, task)) = self.ahead.take() {
            task.abort();
        }
    }
}

/// What a page is read with: everything owned, so that it can be read on another task.
#[derive(Debug, Clone)]
struct FetchPlan {
    pool: PgPool,
    tenant: Option<Uuid>,
    to: i64,
    limit: i64,
    checkpoints_to: i64,
}

/// One page of events, with the checkpoints among them.
#[derive(Debug)]
struct Page {
    events: Vec<RecordedEvent>,
    checkpoints: Vec<Checkpoint>,
    /// Whether the page is full (more events may follow).
    full: bool,
    /// The last position the page answers for.
    through: i64,
}

async fn fetch(plan: FetchPlan, next: i64) -> Result<Page, ExportError> {
    let events = match plan.tenant {
        None => read_page(&plan.pool, next, plan.to, plan.limit).await?,
        Some(tenant) => {
            let filter = LogFilter {
                tenant: Some(tenant),
                ..LogFilter::default()
            };
            read_filtered_page(&plan.pool, &filter, next, plan.to, plan.limit).await?
        }
    };
    let full = events.len() as i64 == plan.limit;
    // The positions this page answers for: through its last event when it is full, else
    // through the end of the range.
    let through = match events.last() {
        Some(last) if full => last.global_position,
        _ => plan.to,
    };
    let checkpoints = if plan.tenant.is_none() && next <= plan.checkpoints_to {
        store::checkpoints_between(&plan.pool, next, through.min(plan.checkpoints_to)).await?
    } else {
        Vec::new()
    };
    Ok(Page {
        events,
        checkpoints,
        full,
        through,
    })
}

impl Writer {
    async fn next_chunk(&mut self) -> Result<ExportChunk, ExportError> {
        let mut out = Vec::new();
        if !self.header_written {
            self.header_written = true;
            let header = self.export.header();
            self.encode_header(&header, &mut out)?;
        } else if let Some(next) = self.next {
            self.write_page(next, &mut out).await?;
        } else {
            let end = EndItem {
                kind: "end".to_owned(),
                events: self.progress.events,
                checkpoints: self.progress.checkpoints,
                last_position: if self.progress.events == 0 {
                    0
                } else {
                    self.progress.position
                },
                last_hash: self.last_hash.to_hex(),
            };
            self.encode_end(&end, &mut out)?;
            self.progress.done = true;
        }
        self.progress.bytes += out.len() as u64;
        Ok(ExportChunk {
            bytes: out,
            progress: self.progress,
        })
    }

    async fn write_page(&mut self, next: i64, out: &mut Vec<u8>) -> Result<(), ExportError> {
        if next > self.export.to {
            self.next = None;
            return Ok(());
        }
        let page = match self.ahead.take() {
            Some((from, task)) if from == next => {
                task.await.map_err(|err| ExportError::Encode {
                    position: next,
                    problem: format!("the task reading ahead failed: {err}"),
                })??
            }
            _ => fetch(self.export.fetch_plan(), next).await?,
        };
        let Page {
            events: page,
            checkpoints,
            full,
            through,
        } = page;
        // The next page is read on another task while this one is encoded.
        if full && through < self.export.to {
            let plan = self.export.fetch_plan();
            self.ahead = Some((through + 1, tokio::spawn(fetch(plan, through + 1))));
        }
        let mut pending = checkpoints.into_iter().peekable();
        out.reserve(page.len() * 1024);
        for event in &page {
            while let Some(checkpoint) = pending.next_if(|c| c.position < event.global_position) {
                self.write_checkpoint(&checkpoint, out)?;
            }
            self.write_event(event, out)?;
            while let Some(checkpoint) = pending.next_if(|c| c.position == event.global_position) {
                self.write_checkpoint(&checkpoint, out)?;
            }
            if let Some(found) = &self.export.tenant_checkpoint
                && found.head.position == event.global_position
            {
                let found = found.clone();
                self.write_tenant_checkpoint(&found, out)?;
            }
        }
        for checkpoint in pending {
            self.write_checkpoint(&checkpoint, out)?;
        }
        self.next = if full { through.checked_add(1) } else { None };
        Ok(())
    }

    fn write_event(&mut self, event: &RecordedEvent, out: &mut Vec<u8>) -> Result<(), ExportError> {
        let canonical = event.canonical_bytes().map_err(|err| ExportError::Encode {
            position: event.global_position,
            problem: err.to_string(),
        })?;
        match self.export.format {
            Format::Ndjson => {
                out.extend_from_slice(b"{\"type\":\"event\",\"hash\":\"");
                out.extend_from_slice(event.hash.to_hex().as_bytes());
                out.extend_from_slice(b"\",\"record\":");
                out.extend_from_slice(&canonical);
                out.extend_from_slice(b"}\n");
            }
            Format::Protobuf => {
                let envelope = envelope_of(event, canonical)?;
                delimited(proto::audit::v1::export_item::Item::Event(envelope), out);
            }
        }
        self.progress.position = event.global_position;
        self.progress.events += 1;
        self.progress.unsigned_tail += 1;
        self.last_hash = event.hash;
        Ok(())
    }

    fn signed(&mut self, position: i64) {
        self.progress.checkpoints += 1;
        self.progress.last_checkpoint = Some(position);
        self.progress.unsigned_tail = 0;
    }

    fn write_checkpoint(
        &mut self,
        checkpoint: &Checkpoint,
        out: &mut Vec<u8>,
    ) -> Result<(), ExportError> {
        match self.export.format {
            Format::Ndjson => json_line(&checkpoint.to_item(), out)?,
            Format::Protobuf => delimited(
                proto::audit::v1::export_item::Item::Checkpoint(proto_checkpoint(checkpoint)),
                out,
            ),
        }
        self.signed(checkpoint.position);
        Ok(())
    }

    fn write_tenant_checkpoint(
        &mut self,
        found: &TenantCheckpoint,
        out: &mut Vec<u8>,
    ) -> Result<(), ExportError> {
        match self.export.format {
            Format::Ndjson => {
                let item = TenantCheckpointItem {
                    checkpoint: found.checkpoint.to_item(),
                    tenant_head: found.head.to_item(),
                    proof: ProofItem {
                        leaf_index: found.leaf_index,
                        tree_size: found.tree_size,
                        path: found.path.iter().map(Digest32::to_hex).collect(),
                    },
                };
                json_line(&item, out)?;
            }
            Format::Protobuf => {
                let mut checkpoint = proto_checkpoint(&found.checkpoint);
                checkpoint.tenant_head = Some(proto::audit::v1::ChainHead {
                    hash: found.head.hash.0.to_vec(),
                    position: found.head.position,
                    tenant_id: found.head.tenant_id.map(|tenant| tenant.to_string()),
                });
                checkpoint.proof = Some(proto::audit::v1::InclusionProof {
                    leaf_index: found.leaf_index,
                    tree_size: found.tree_size,
                    path: found.path.iter().map(|p| p.0.to_vec()).collect(),
                });
                delimited(
                    proto::audit::v1::export_item::Item::Checkpoint(checkpoint),
                    out,
                );
            }
        }
        self.signed(found.checkpoint.position);
        Ok(())
    }

    fn encode_header(&self, header: &HeaderItem, out: &mut Vec<u8>) -> Result<(), ExportError> {
        match self.export.format {
            Format::Ndjson => json_line(header, out),
            Format::Protobuf => {
                let item = proto::audit::v1::Header {
                    spec: header.spec.clone(),
                    hash_spec: header.hash_spec,
                    scope: header.scope.clone(),
                    tenant_id: header.tenant_id.clone(),
                    from: header.from,
                    to: header.to,
                    exported_at: header.exported_at.clone(),
                    public_keys: self
                        .export
                        .keys
                        .iter()
                        .map(|key| proto::audit::v1::PublicKey {
                            kid: key.kid.clone(),
                            algorithm: key.algorithm.clone(),
                            public_key: key.raw().to_vec(),
                        })
                        .collect(),
                };
                delimited(proto::audit::v1::export_item::Item::Header(item), out);
                Ok(())
            }
        }
    }

    fn encode_end(&self, end: &EndItem, out: &mut Vec<u8>) -> Result<(), ExportError> {
        match self.export.format {
            Format::Ndjson => json_line(end, out),
            Format::Protobuf => {
                let item = proto::audit::v1::End {
                    events: end.events,
                    checkpoints: end.checkpoints,
                    last_position: end.last_position,
                    last_hash: self.last_hash.0.to_vec(),
                };
                delimited(proto::audit::v1::export_item::Item::End(item), out);
                Ok(())
            }
        }
    }
}

fn json_line(item: &impl Serialize, out: &mut Vec<u8>) -> Result<(), ExportError> {
    serde_json::to_writer(&mut *out, item).map_err(|err| ExportError::Encode {
        position: 0,
        problem: err.to_string(),
    })?;
    out.push(b'\n');
    Ok(())
}

fn delimited(item: proto::audit::v1::export_item::Item, out: &mut Vec<u8>) {
    let message = proto::audit::v1::ExportItem { item: Some(item) };
    // Writing into a Vec cannot run out of room.
    if message.encode_length_delimited(out).is_err() {
        tracing::error!("cannot encode an export item into memory");
    }
}

fn proto_checkpoint(checkpoint: &Checkpoint) -> proto::audit::v1::Checkpoint {
    proto::audit::v1::Checkpoint {
        position: checkpoint.position,
        head_hash: checkpoint.head_hash.0.to_vec(),
        tenants_root: checkpoint.tenants_root.0.to_vec(),
        signed_at: format_recorded_at(&checkpoint.signed_at),
        kid: checkpoint.kid.clone(),
        signature: checkpoint.signature.to_vec(),
        tenant_head: None,
        proof: None,
    }
}

/// The event as an envelope of platform.events.v1, with its payload typed when the
/// contracts cover it (as the relay publishes it).
fn envelope_of(
    event: &RecordedEvent,
    canonical: Vec<u8>,
) -> Result<proto::v1::EventEnvelope, ExportError> {
    let typed = proto::TypedEvent::from_json(
        &event.aggregate_type,
        &event.event_type,
        &event.event_version,
        &event.payload,
    )
    .ok()
    .flatten();
    // The envelope's metadata is a map of strings. Metadata of another shape is still in
    // the canonical bytes, which are what the hash covers; the map is then left empty.
    crate::relay::envelope_of(event, canonical.clone(), typed.clone())
        .or_else(|_| {
            let plain = RecordedEvent {
                metadata: serde_json::Value::Object(serde_json::Map::new()),
                ..event.clone()
            };
            crate::relay::envelope_of(&plain, canonical, typed)
        })
        .map_err(|err| ExportError::Encode {
            position: event.global_position,
            problem: err.to_string(),
        })
}

/// The latest checkpoint at or before `to` in which the tenant has a leaf, with the
/// tenant's head there and its inclusion proof; `None` when there is none, or when the
/// tenant's head there lies before `from` (it would not be in the file).
async fn tenant_checkpoint(
    pool: &PgPool,
    tenant: Uuid,
    from: i64,
    to: i64,
) -> Result<Option<TenantCheckpoint>, ExportError> {
    let Some(checkpoint) = store::checkpoint_at_or_before(pool, to).await? else {
        return Ok(None);
    };
    // The tenant's head there, by its index, before the heads of every chain are read.
    let position: Option<i64> = sqlx::query_scalar(
        "SELECT max(global_position) FROM events WHERE tenant_id = $1 AND global_position <= $2",
    )
    .bind(tenant)
    .bind(checkpoint.position)
    .fetch_one(pool)
    .await?;
    if position.is_none_or(|position| position < from) {
        return Ok(None);
    }
    let heads = store::chain_heads_at(pool, checkpoint.position).await?;
    let Some(index) = heads.iter().position(|head| head.tenant_id == Some(tenant)) else {
        return Ok(None);
    };
    let head = heads[index];
    let leaves: Vec<Digest32> = heads.iter().map(ChainHead::leaf_hash).collect();
    let path = merkle::inclusion_proof(&leaves, index).unwrap_or_default();
    Ok(Some(TenantCheckpoint {
        checkpoint,
        head,
        leaf_index: index as u64,
        tree_size: leaves.len() as u64,
        path,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_is_a_position_or_an_rfc_3339_time() {
        assert_eq!("42".parse::<Bound>(), Ok(Bound::Position(42)));
        let Ok(Bound::Time(at)) = "2026-12-01T08:00:00+01:00".parse::<Bound>() else {
            panic!("a time");
        };
        assert_eq!(format_recorded_at(&at), "2026-12-01T07:00:00.000000Z");
        assert!("-3".parse::<Bound>().is_err());
        assert!("yesterday".parse::<Bound>().is_err());
    }

    #[test]
    fn the_formats_are_named_as_the_cli_names_them() {
        assert_eq!("ndjson".parse::<Format>(), Ok(Format::Ndjson));
        assert_eq!("protobuf".parse::<Format>(), Ok(Format::Protobuf));
        assert!("json".parse::<Format>().is_err());
    }
}
