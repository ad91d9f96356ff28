//! The group-commit appender: one task that turns the appends of concurrent commands into
//! few, large transactions.
//!
//! Commands send their prepared events over a channel. The task takes whatever has queued
//! up (up to a bound), and writes it in one transaction:
//!
//! 1. lock the `log_head` row, and in the same statement read the current sequence of every
//!    aggregate in the batch and the head hash of every tenant in it;
//! 2. decide, in memory, which appends are current: an append whose expected sequence is
//!    stale is refused alone, and the rest go on;
//! 3. assign positions after the head, gap-free, and chain the hashes;
//! 4. insert every event with one multi-row `INSERT ... SELECT FROM unnest(...)`, move the
//!    tenant heads and the log head in the same statement, write snapshots;
//! 5. commit, and answer every command.
//!
//! While one batch commits, the next one queues, so batches grow with load and a lone
//! writer pays for one small transaction. Holding the head lock makes positions commit in
//! order across processes too: a second process's appender waits for the lock, and then
//! sees everything the first one committed.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::canonical::{CanonicalEvent, Digest32, Links};
use crate::error::{AppendError, is_connection_error};

/// Bounds of the appender's batches and queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppenderConfig {
    /// The most appends (commands) written in one transaction.
    pub max_batch_appends: usize,
    /// The most events written in one transaction. A single append larger than this is
    /// still written, alone.
    pub max_batch_events: usize,
    /// How many appends may wait for the appender before senders wait too.
    pub queue_capacity: usize,
}

impl Default for AppenderConfig {
    fn default() -> Self {
        Self {
            max_batch_appends: 256,
            max_batch_events: 4096,
            queue_capacity: 1024,
        }
    }
}

/// One event, validated and encoded, waiting for its position.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    pub(crate) event_id: Uuid,
    pub(crate) sequence: i64,
    pub(crate) event_type: String,
    pub(crate) event_version: String,
    pub(crate) tenant_id: Option<Uuid>,
    pub(crate) canonical: CanonicalEvent,
}

/// A snapshot of the aggregate to store with the append, in the same transaction.
#[derive(Debug, Clone)]
pub struct SnapshotWrite {
    /// The serialized aggregate.
    pub payload_json: String,
    /// The snapshot's version, as cqrs-es counts them.
    pub current_snapshot: i64,
}

/// One command's events for one aggregate: appended all together, or not at all.
#[derive(Debug, Clone)]
pub struct PendingAppend {
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) events: Vec<PreparedEvent>,
    pub(crate) snapshot: Option<SnapshotWrite>,
}

impl PendingAppend {
    fn first_sequence(&self) -> i64 {
        self.events.first().map_or(0, |e| e.sequence)
    }

    fn last_sequence(&self) -> i64 {
        self.events.last().map_or(0, |e| e.sequence)
    }
}

/// Where an append's events landed in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendReceipt {
    /// The global position of the append's first event.
    pub first_position: i64,
    /// The global position of its last event: a query can wait for a projection to reach it.
    pub last_position: i64,
}

type Reply = oneshot::Sender<Result<AppendReceipt, AppendError>>;

struct Job {
    append: PendingAppend,
    reply: Reply,
}

/// The sending side of the appender: cheap to clone, one per repository.
#[derive(Debug, Clone)]
pub struct Appender {
    sender: mpsc::Sender<Job>,
}

/// The running appender task. Dropping it leaves the task running; [`AppenderTask::abort`]
/// stops it at once: the transaction in flight is rolled back and its appends fail.
#[derive(Debug)]
pub struct AppenderTask {
    handle: JoinHandle<()>,
}

impl AppenderTask {
    /// Stops the task immediately. Appends in flight fail with [`AppendError::Stopped`]: a
    /// transaction that had not sent its commit is rolled back; one whose commit was already
    /// on its way may still land, all of it or none.
    pub fn abort(&self) {
        self.handle.abort();
    }

    /// Waits until the task ends: after every [`Appender`] is dropped and the queue drained.
    pub async fn join(self) {
        if let Err(err) = self.handle.await
            && err.is_panic()
        {
            tracing::error!("the event store appender panicked: {err}");
        }
    }
}

impl Appender {
    /// Starts the appender task on the current Tokio runtime.
    pub fn spawn(pool: PgPool, config: AppenderConfig) -> (Self, AppenderTask) {
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let handle = tokio::spawn(run(pool, config, receiver));
        (Self { sender }, AppenderTask { handle })
    }

    /// How many appends are queued, waiting for the appender to take them.
    pub fn queued(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    /// Appends one command's events. Returns once they are committed (or refused).
    pub async fn append(&self, append: PendingAppend) -> Result<AppendReceipt, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Job { append, reply })
            .await
            .map_err(|_| AppendError::Stopped)?;
        answer.await.map_err(|_| AppendError::Stopped)?
    }
}

async fn run(pool: PgPool, config: AppenderConfig, mut receiver: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::new();
    while let Some(first) = receiver.recv().await {
        let mut events = first.append.events.len();
        batch.push(first);
        while batch.len() < config.max_batch_appends && events < config.max_batch_events {
            match receiver.try_recv() {
                Ok(job) => {
                    events += job.append.events.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        write_batch(&pool, std::mem::take(&mut batch)).await;
    }
}

type Outcome = Result<AppendReceipt, AppendError>;

enum BatchError {
    /// The transaction failed before the commit was sent: nothing was written.
    Failed(sqlx::Error),
    /// The commit itself failed; whether it happened is unknown until checked.
    Commit {
        error: sqlx::Error,
        outcomes: Vec<Outcome>,
        /// The transaction's id, as text, to ask the server what became of it.
        xid: String,
    },
}

#[tracing::instrument(level = "debug", skip_all, fields(appends = jobs.len()))]
async fn write_batch(pool: &PgPool, mut jobs: Vec<Job>) {
    // A command that stopped waiting before its batch began (its task was cancelled) is
    // not appended: nobody would learn the outcome.
    jobs.retain(|job| !job.reply.is_closed());
    if jobs.is_empty() {
        return;
    }
    let appends: Vec<&PendingAppend> = jobs.iter().map(|job| &job.append).collect();
    match try_write(pool, &appends).await {
        Ok(outcomes) => reply_all(jobs, outcomes),
        Err(BatchError::Failed(error)) if jobs.len() > 1 && !is_connection_error(&error) => {
            // Something in the batch broke the transaction. Write each append alone, so that
            // only the one at fault fails.
            tracing::warn!(
                "batch of {} appends failed, retrying one by one: {error}",
                jobs.len()
            );
            for job in jobs {
                let outcome = match try_write(pool, &[&job.append]).await {
                    Ok(mut outcomes) => outcomes.pop().unwrap_or(Err(AppendError::Stopped)),
                    Err(err) => match resolve(pool, err).await {
                        Ok(mut outcomes) => outcomes.pop().unwrap_or(Err(AppendError::Stopped)),
                        Err(failure) => Err(failure),
                    },
                };
                let _ = job.reply.send(outcome);
            }
        }
        Err(err) => match resolve(pool, err).await {
            Ok(outcomes) => reply_all(jobs, outcomes),
            Err(failure) => {
                for job in jobs {
                    let _ = job.reply.send(Err(failure.clone()));
                }
            }
        },
    }
}

fn reply_all(jobs: Vec<Job>, outcomes: Vec<Outcome>) {
    for (job, outcome) in jobs.into_iter().zip(outcomes) {
        // The receiver may have gone away meanwhile; the append stands either way.
        let _ = job.reply.send(outcome);
    }
}

/// How long to wait for the server to settle a transaction whose commit failed on the wire.
const COMMIT_SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Turns a failed batch into its answer. A failed commit is settled by asking the server
/// for the transaction's status, waiting while it is still in progress (a commit can be
/// durable yet not visible, for example while it waits for a synchronous standby).
async fn resolve(pool: &PgPool, err: BatchError) -> Result<Vec<Outcome>, AppendError> {
    match err {
        BatchError::Failed(error) => Err(classify(error)),
        BatchError::Commit {
            error,
            outcomes,
            xid,
        } => {
            tracing::warn!("commit of an append batch failed, settling transaction {xid}: {error}");
            let deadline = tokio::time::Instant::now() + COMMIT_SETTLE_TIMEOUT;
            loop {
                let status =
                    sqlx::query_scalar::<_, Option<String>>("SELECT pg_xact_status($1::xid8)")
                        .bind(&xid)
                        .fetch_one(pool)
                        .await;
                match status.as_ref().map(Option::as_deref) {
                    Ok(Some("committed")) => return Ok(outcomes),
                    Ok(Some("aborted")) => return Err(classify(error)),
                    Ok(Some("in progress")) | Err(_) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    _ => return Err(AppendError::CommitUnknown(Arc::new(error))),
                }
            }
        }
    }
}

fn classify(error: sqlx::Error) -> AppendError {
    if is_connection_error(&error) {
        AppendError::Unavailable(Arc::new(error))
    } else {
        AppendError::Database(Arc::new(error))
    }
}

/// The reads that decide a batch: the current sequence of each aggregate ($1, $2) and the
/// head hash of each tenant chain ($3, the nil UUID for platform-level events).
macro_rules! batch_reads {
    () => {
        "ARRAY(SELECT COALESCE((SELECT max(e.sequence) FROM events e \
                                 WHERE e.aggregate_type = a.aggregate_type \
                                   AND e.aggregate_id = a.aggregate_id), 0) \
                 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY \
                      AS a(aggregate_type, aggregate_id, n) \
                ORDER BY a.n) AS sequences, \
         ARRAY(SELECT COALESCE(t.hash, decode(repeat('00', 32), 'hex')) \
                 FROM unnest($3::uuid[]) WITH ORDINALITY AS k(tenant_id, n) \
                 LEFT JOIN tenant_heads t ON t.tenant_id = k.tenant_id \
                ORDER BY k.n) AS tenant_hashes"
    };
}

/// Locks the log head and reads the batch's facts in one round trip. The reads use the
/// statement's snapshot, taken before the lock was granted; `seen_position` tells whether
/// another appender committed in between, in which case the reads are repeated.
const LOCK_AND_READ: &str = concat!(
    "WITH head AS (SELECT position, hash FROM log_head FOR UPDATE) \
     SELECT head.position, head.hash, (SELECT position FROM log_head) AS seen_position, \
            pg_current_xact_id()::text AS xid, ",
    batch_reads!(),
    " FROM head"
);

const READ: &str = concat!("SELECT ", batch_reads!());

const WRITE: &str = "\
WITH appended AS (
    INSERT INTO events (global_position, event_id, aggregate_type, aggregate_id, sequence,
                        event_type, event_version, tenant_id, recorded_at, payload, metadata,
                        prev_hash, tenant_prev_hash, hash)
    SELECT e.global_position, e.event_id, e.aggregate_type, e.aggregate_id, e.sequence,
           e.event_type, e.event_version, e.tenant_id, $9, e.payload::jsonb, e.metadata::jsonb,
           e.prev_hash, e.tenant_prev_hash, e.hash
      FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                  $7::text[], $8::uuid[], $10::text[], $11::text[], $12::bytea[], $13::bytea[],
                  $14::bytea[])
           AS e(global_position, event_id, aggregate_type, aggregate_id, sequence, event_type,
                event_version, tenant_id, payload, metadata, prev_hash, tenant_prev_hash, hash)
), tenants AS (
    INSERT INTO tenant_heads (tenant_id, position, hash)
    SELECT * FROM unnest($15::uuid[], $16::bigint[], $17::bytea[])
    ON CONFLICT (tenant_id) DO UPDATE SET position = EXCLUDED.position, hash = EXCLUDED.hash
)
UPDATE log_head SET position = $18, hash = $19";

const WRITE_SNAPSHOTS: &str = "\
INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
SELECT s.aggregate_type, s.aggregate_id, s.last_sequence, s.current_snapshot, s.payload::jsonb
  FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[])
       AS s(aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
   SET last_sequence = EXCLUDED.last_sequence,
       current_snapshot = EXCLUDED.current_snapshot,
       payload = EXCLUDED.payload";

/// The columns of the multi-row insert, one vector per column.
#[derive(Default)]
struct Rows<'a> {
    global_position: Vec<i64>,
    event_id: Vec<Uuid>,
    aggregate_type: Vec<&'a str>,
    aggregate_id: Vec<&'a str>,
    sequence: Vec<i64>,
    event_type: Vec<&'a str>,
    event_version: Vec<&'a str>,
    tenant_id: Vec<Option<Uuid>>,
    payload: Vec<&'a str>,
    metadata: Vec<&'a str>,
    prev_hash: Vec<Vec<u8>>,
    tenant_prev_hash: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

#[derive(Default)]
struct Snapshots<'a> {
    aggregate_type: Vec<&'a str>,
    aggregate_id: Vec<&'a str>,
    last_sequence: Vec<i64>,
    current_snapshot: Vec<i64>,
    payload: Vec<&'a str>,
}

fn tenant_key(tenant: Option<Uuid>) -> Uuid {
    tenant.unwrap_or(Uuid::nil())
}

fn digest(bytes: &[u8], column: &str) -> Result<Digest32, sqlx::Error> {
    Digest32::from_slice(bytes).ok_or_else(|| {
        sqlx::Error::Decode(format!("{column} holds {} bytes, not 32", bytes.len()).into())
    })
}

async fn try_write(pool: &PgPool, appends: &[&PendingAppend]) -> Result<Vec<Outcome>, BatchError> {
    // The distinct aggregates and tenant chains of the batch, in first-seen order.
    let mut aggregates: HashMap<(&str, &str), usize> = HashMap::new();
    let (mut aggregate_types, mut aggregate_ids) = (Vec::new(), Vec::new());
    let mut tenants: HashMap<Uuid, usize> = HashMap::new();
    let mut tenant_keys = Vec::new();
    for append in appends {
        let key = (append.aggregate_type.as_str(), append.aggregate_id.as_str());
        if let Entry::Vacant(slot) = aggregates.entry(key) {
            slot.insert(aggregate_types.len());
            aggregate_types.push(key.0);
            aggregate_ids.push(key.1);
        }
        for event in &append.events {
            if let Entry::Vacant(slot) = tenants.entry(tenant_key(event.tenant_id)) {
                slot.insert(tenant_keys.len());
                tenant_keys.push(tenant_key(event.tenant_id));
            }
        }
    }

    // The head lock relies on READ COMMITTED: each statement sees what committed before it.
    let mut tx: Transaction<'_, Postgres> = pool
        .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
        .await
        .map_err(BatchError::Failed)?;
    let row = sqlx::query(LOCK_AND_READ)
        .bind(&aggregate_types)
        .bind(&aggregate_ids)
        .bind(&tenant_keys)
        .fetch_one(&mut *tx)
        .await
        .map_err(BatchError::Failed)?;
    let head_position: i64 = row.try_get("position").map_err(BatchError::Failed)?;
    let head_hash: Vec<u8> = row.try_get("hash").map_err(BatchError::Failed)?;
    let seen_position: i64 = row.try_get("seen_position").map_err(BatchError::Failed)?;
    let xid: String = row.try_get("xid").map_err(BatchError::Failed)?;
    let row = if seen_position == head_position {
        row
    } else {
        // Another appender committed while this one waited for the lock: read again, with
        // a snapshot that includes its events.
        sqlx::query(READ)
            .bind(&aggregate_types)
            .bind(&aggregate_ids)
            .bind(&tenant_keys)
            .fetch_one(&mut *tx)
            .await
            .map_err(BatchError::Failed)?
    };
    let mut sequences: Vec<i64> = row.try_get("sequences").map_err(BatchError::Failed)?;
    let tenant_hashes: Vec<Vec<u8>> = row.try_get("tenant_hashes").map_err(BatchError::Failed)?;
    let mut tenant_heads = tenant_hashes
        .iter()
        .map(|bytes| digest(bytes, "tenant_heads.hash"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(BatchError::Failed)?;
    let mut tenant_positions: Vec<Option<i64>> = vec![None; tenant_keys.len()];
    let mut prev = digest(&head_hash, "log_head.hash").map_err(BatchError::Failed)?;

    let recorded_at: DateTime<Utc> = Utc::now().trunc_subsecs(6);
    let mut position = head_position;
    let mut rows = Rows::default();
    let mut snapshots = Snapshots::default();
    let mut outcomes = Vec::with_capacity(appends.len());
    for append in appends {
        let slot = aggregates[&(append.aggregate_type.as_str(), append.aggregate_id.as_str())];
        let actual = sequences[slot];
        let expected = append.first_sequence() - 1;
        if expected != actual {
            outcomes.push(Err(AppendError::Conflict {
                aggregate_type: append.aggregate_type.clone(),
                aggregate_id: append.aggregate_id.clone(),
                expected,
                actual,
            }));
            continue;
        }
        let first_position = position + 1;
        for event in &append.events {
            position += 1;
            let chain = tenants[&tenant_key(event.tenant_id)];
            let links = Links {
                global_position: position,
                prev_hash: prev,
                recorded_at,
                tenant_prev_hash: tenant_heads[chain],
            };
            let hash = event.canonical.hash(&links);
            rows.global_position.push(position);
            rows.event_id.push(event.event_id);
            rows.aggregate_type.push(&append.aggregate_type);
            rows.aggregate_id.push(&append.aggregate_id);
            rows.sequence.push(event.sequence);
            rows.event_type.push(&event.event_type);
            rows.event_version.push(&event.event_version);
            rows.tenant_id.push(event.tenant_id);
            rows.payload.push(event.canonical.payload_json());
            rows.metadata.push(event.canonical.metadata_json());
            rows.prev_hash.push(prev.0.to_vec());
            rows.tenant_prev_hash.push(tenant_heads[chain].0.to_vec());
            rows.hash.push(hash.0.to_vec());
            prev = hash;
            tenant_heads[chain] = hash;
            tenant_positions[chain] = Some(position);
        }
        sequences[slot] = append.last_sequence();
        if let Some(snapshot) = &append.snapshot {
            snapshots.aggregate_type.push(&append.aggregate_type);
            snapshots.aggregate_id.push(&append.aggregate_id);
            snapshots.last_sequence.push(append.last_sequence());
            snapshots.current_snapshot.push(snapshot.current_snapshot);
            snapshots.payload.push(&snapshot.payload_json);
        }
        outcomes.push(Ok(AppendReceipt {
            first_position,
            last_position: position,
        }));
    }

    if rows.global_position.is_empty() {
        // Every append was refused: nothing to write.
        tx.rollback().await.map_err(BatchError::Failed)?;
        return Ok(outcomes);
    }

    let (mut moved_tenants, mut moved_positions, mut moved_hashes) =
        (Vec::new(), Vec::new(), Vec::new());
    for (chain, moved) in tenant_positions.iter().enumerate() {
        if let Some(at) = moved {
            moved_tenants.push(tenant_keys[chain]);
            moved_positions.push(*at);
            moved_hashes.push(tenant_heads[chain].0.to_vec());
        }
    }

    sqlx::query(WRITE)
        .bind(&rows.global_position)
        .bind(&rows.event_id)
        .bind(&rows.aggregate_type)
        .bind(&rows.aggregate_id)
        .bind(&rows.sequence)
        .bind(&rows.event_type)
        .bind(&rows.event_version)
        .bind(&rows.tenant_id)
        .bind(recorded_at)
        .bind(&rows.payload)
        .bind(&rows.metadata)
        .bind(&rows.prev_hash)
        .bind(&rows.tenant_prev_hash)
        .bind(&rows.hash)
        .bind(&moved_tenants)
        .bind(&moved_positions)
        .bind(&moved_hashes)
        .bind(position)
        .bind(prev.0.to_vec())
        .execute(&mut *tx)
        .await
        .map_err(BatchError::Failed)?;

    if !snapshots.aggregate_type.is_empty() {
        sqlx::query(WRITE_SNAPSHOTS)
            .bind(&snapshots.aggregate_type)
            .bind(&snapshots.aggregate_id)
            .bind(&snapshots.last_sequence)
            .bind(&snapshots.current_snapshot)
            .bind(&snapshots.payload)
            .execute(&mut *tx)
            .await
            .map_err(BatchError::Failed)?;
    }

    match tx.commit().await {
        Ok(()) => Ok(outcomes),
        Err(error) => Err(BatchError::Commit {
            error,
            outcomes,
            xid,
        }),
    }
}
