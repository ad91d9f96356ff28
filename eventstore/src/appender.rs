//! The group-commit appender: one task that turns the appends of concurrent commands into
//! few, large transactions.
//!
//! Commands send their prepared events over a channel. The task takes whatever has queued
//! up (up to a bound) as one batch, on a connection of its own:
//!
//! 1. it decides, in memory, which appends are current, gives the accepted events the
//!    positions after the head and one record time (the later of its clock and the last
//!    event's, so that times never decrease along the log), and chains their hashes;
//! 2. it writes the batch with one statement that is its own transaction: the statement
//!    moves the log head only if the head is still where this appender left it and each
//!    aggregate is at the sequence the batch assumed, and inserts every event
//!    (`INSERT ... SELECT FROM unnest(...)`) and snapshot only if the head moved;
//! 3. if that guard fails, nothing was written: the appender opens a transaction, locks the
//!    head row, reads the sequences and tenant chain heads under the lock, decides again,
//!    writes and commits. It does the same when it has not written before, or meets a tenant
//!    chain it does not remember;
//! 4. it answers every command.
//!
//! A command may write several aggregates ([`Appender::append_all`]): its appends are
//! decided together, so either all of them are current and written, at consecutive
//! positions in one transaction, or none is.
//!
//! The guard is sound because every append moves the head: if the head row, once its lock
//! is granted, still holds the position this appender left, nothing was appended since, so
//! the statement's snapshot (taken before any wait for the lock) holds every event, and what
//! the appender remembers of the tenant chains is current.
//!
//! While one batch is written, the next one queues, so batches grow with load and a lone
//! writer pays for one statement. Positions are assigned only under the head row's lock, so
//! they are gap-free and commit in order, across processes too.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::{Connection, Executor, PgConnection, PgPool, Row};
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

type Reply = oneshot::Sender<Outcome>;

/// One command's write: one append, or several appends to distinct aggregates that are
/// written together or not at all.
struct Job {
    appends: Vec<PendingAppend>,
    reply: Reply,
}

impl Job {
    fn events(&self) -> usize {
        self.appends.iter().map(|append| append.events.len()).sum()
    }
}

/// The sending side of the appender: cheap to clone, one per repository.
#[derive(Debug, Clone)]
pub struct Appender {
    sender: mpsc::Sender<Job>,
}

/// The running appender task. Dropping it leaves the task running; [`AppenderTask::abort`]
/// stops it at once.
#[derive(Debug)]
pub struct AppenderTask {
    handle: JoinHandle<()>,
}

impl AppenderTask {
    /// Stops the task immediately. Appends in flight fail with [`AppendError::Stopped`]. The
    /// server ends a statement whose client went away, even one waiting for a lock, so a
    /// batch in flight is not committed, unless its commit was already under way: then it
    /// lands whole.
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
        let receipts = self.append_all(vec![append]).await?;
        receipts.into_iter().next().ok_or(AppendError::Stopped)
    }

    /// Appends one command's events to several aggregates, atomically: either every append
    /// is committed, in the order given and at consecutive positions, or none is. If any
    /// aggregate moved on since the command loaded it, the whole command fails with that
    /// [`AppendError::Conflict`]. Returns a receipt per append, in order.
    pub async fn append_all(
        &self,
        appends: Vec<PendingAppend>,
    ) -> Result<Vec<AppendReceipt>, AppendError> {
        check_distinct(&appends)?;
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Job { appends, reply })
            .await
            .map_err(|_| AppendError::Stopped)?;
        answer.await.map_err(|_| AppendError::Stopped)?
    }
}

/// A command writes each aggregate at most once, and at least one.
fn check_distinct(appends: &[PendingAppend]) -> Result<(), AppendError> {
    if appends.is_empty() {
        return Err(AppendError::Invalid(
            "an append needs at least one event".into(),
        ));
    }
    for (i, append) in appends.iter().enumerate() {
        if appends[..i].iter().any(|earlier| {
            earlier.aggregate_type == append.aggregate_type
                && earlier.aggregate_id == append.aggregate_id
        }) {
            return Err(AppendError::Invalid(format!(
                "one command appends to {}/{} twice; put all of an aggregate's events in one append",
                append.aggregate_type, append.aggregate_id
            )));
        }
    }
    Ok(())
}

async fn run(pool: PgPool, config: AppenderConfig, mut receiver: mpsc::Receiver<Job>) {
    let mut writer = Writer::new(pool);
    let mut batch: Vec<Job> = Vec::new();
    while let Some(first) = receiver.recv().await {
        let mut events = first.events();
        batch.push(first);
        while batch.len() < config.max_batch_appends && events < config.max_batch_events {
            match receiver.try_recv() {
                Ok(job) => {
                    events += job.events();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        writer.write_batch(std::mem::take(&mut batch)).await;
    }
}

/// A command's outcome: a receipt per append, or why none was written.
type Outcome = Result<Vec<AppendReceipt>, AppendError>;

/// `connect` and `settle` return boxed `Send` futures that own what they use: written as
/// plain `async fn`s borrowing the pool, the appender's future fails the compiler's `Send`
/// check for borrows held across awaits (rust-lang/rust#100013).
type BoxedFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

enum BatchError {
    /// The batch failed and was not committed: nothing was written.
    Failed(sqlx::Error),
    /// The connection broke while the batch may have been committing.
    Ambiguous {
        error: sqlx::Error,
        outcomes: Vec<Outcome>,
        /// The id of the batch's first event: present in the log if and only if the batch
        /// committed.
        probe: Uuid,
        /// The server process that ran the batch.
        backend: Backend,
    },
}

/// The server process behind the appender's connection.
#[derive(Debug, Clone, Copy)]
struct Backend {
    pid: i32,
    started: DateTime<Utc>,
}

/// The appender's connection.
struct Session {
    connection: PgConnection,
    backend: Backend,
}

/// The last event of the log: its position, hash and record time (`None` for an empty log).
type Head = (i64, Digest32, Option<DateTime<Utc>>);

/// The record time of a batch: now, unless the last event of the log was recorded later
/// (another process's clock runs ahead): record times never decrease along the log, so a
/// time names a prefix of it.
fn record_time(last: Option<DateTime<Utc>>) -> DateTime<Utc> {
    let now = Utc::now().trunc_subsecs(6);
    last.map_or(now, |last| now.max(last))
}

/// How many tenant chain heads the appender remembers before it starts over.
const MAX_REMEMBERED_TENANTS: usize = 100_000;

/// The appender's connection, and what it remembers of the log it wrote.
struct Writer {
    pool: PgPool,
    session: Option<Session>,
    /// The log head (position, hash and record time) this appender left after its last
    /// commit. While the log head is still there, nobody else has appended since.
    head: Option<Head>,
    /// The hash of the last event of each tenant chain, valid while `head` is the log head.
    tenants: HashMap<Uuid, Digest32>,
}

impl Writer {
    fn new(pool: PgPool) -> Self {
        Self {
            pool,
            session: None,
            head: None,
            tenants: HashMap::new(),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(appends = jobs.len()))]
    async fn write_batch(&mut self, mut jobs: Vec<Job>) {
        // A command that stopped waiting before its batch began (its task was cancelled) is
        // not appended: nobody would learn the outcome.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            return;
        }
        let commands: Vec<&[PendingAppend]> =
            jobs.iter().map(|job| job.appends.as_slice()).collect();
        match self.write(&commands).await {
            Ok(outcomes) => reply_all(jobs, outcomes),
            Err(BatchError::Failed(error)) if jobs.len() > 1 && !is_connection_error(&error) => {
                // Something in the batch broke its statement. Write each append alone, so that
                // only the one at fault fails.
                tracing::warn!(
                    "batch of {} commands failed, retrying one by one: {error}",
                    jobs.len()
                );
                for job in jobs {
                    let outcome = match self.write(&[job.appends.as_slice()]).await {
                        Ok(mut outcomes) => outcomes.pop().unwrap_or(Err(AppendError::Stopped)),
                        Err(err) => match settle(self.pool.clone(), err).await {
                            Ok(mut outcomes) => outcomes.pop().unwrap_or(Err(AppendError::Stopped)),
                            Err(failure) => Err(failure),
                        },
                    };
                    let _ = job.reply.send(outcome);
                }
            }
            Err(err) => match settle(self.pool.clone(), err).await {
                Ok(outcomes) => reply_all(jobs, outcomes),
                Err(failure) => {
                    for job in jobs {
                        let _ = job.reply.send(Err(failure.clone()));
                    }
                }
            },
        }
    }

    /// Writes one batch. On any failure the connection is dropped (which ends a transaction
    /// it had open) and what the appender remembered of the log is forgotten.
    async fn write(&mut self, commands: &[&[PendingAppend]]) -> Result<Vec<Outcome>, BatchError> {
        let mut session = match self.session.take() {
            Some(session) => session,
            None => connect(&self.pool).await.map_err(BatchError::Failed)?,
        };
        let result = write_batch(
            &mut session.connection,
            session.backend,
            commands,
            self.head,
            &mut self.tenants,
        )
        .await;
        match result {
            Ok((outcomes, head)) => {
                self.session = Some(session);
                self.head = Some(head);
                if self.tenants.len() > MAX_REMEMBERED_TENANTS {
                    // Forgetting costs one read under the lock, for the next batch only.
                    self.tenants.clear();
                }
                Ok(outcomes)
            }
            Err(err) => {
                self.head = None;
                self.tenants.clear();
                Err(err)
            }
        }
    }
}

/// Opens the appender's own connection, with the pool's settings.
fn connect(pool: &PgPool) -> BoxedFuture<'static, Result<Session, sqlx::Error>> {
    let options = pool.connect_options();
    Box::pin(async move {
        let mut connection = PgConnection::connect_with(&options).await?;
        // The appender runs the same few statements for ever: plan them once. If the
        // appender goes away in the middle of a statement (its task aborted, its process
        // killed), the server notices within half a second, even while the statement waits
        // for a lock, and rolls it back instead of committing an append nobody waits for.
        connection
            .execute(
                "SET plan_cache_mode = force_generic_plan; \
                 SET client_connection_check_interval = '500ms'",
            )
            .await?;
        let (pid, started): (i32, DateTime<Utc>) = sqlx::query_as(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .fetch_one(&mut connection)
        .await?;
        Ok(Session {
            connection,
            backend: Backend { pid, started },
        })
    })
}

fn reply_all(jobs: Vec<Job>, outcomes: Vec<Outcome>) {
    for (job, outcome) in jobs.into_iter().zip(outcomes) {
        // The receiver may have gone away meanwhile; the append stands either way.
        let _ = job.reply.send(outcome);
    }
}

/// How long to wait for the server to end the process of a batch whose outcome is unknown.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Turns a failed batch into its answer. When the connection broke while the batch may
/// have been committing, the server process that ran it is ended and waited for: after that
/// the batch is either in the log or not, for good, and its first event tells which.
fn settle(
    pool: PgPool,
    err: BatchError,
) -> BoxedFuture<'static, Result<Vec<Outcome>, AppendError>> {
    Box::pin(async move {
        let (error, outcomes, probe, backend) = match err {
            BatchError::Failed(error) => return Err(classify(error)),
            BatchError::Ambiguous {
                error,
                outcomes,
                probe,
                backend,
            } => (error, outcomes, probe, backend),
        };
        tracing::warn!(
            pid = backend.pid,
            "the connection broke while a batch may have been committing; settling it: {error}"
        );
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let gone = sqlx::query_scalar::<_, bool>(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_stat_activity
                                           WHERE pid = $1 AND backend_start = $2)
                             THEN pg_terminate_backend($1) AND false
                             ELSE true
                        END",
            )
            .bind(backend.pid)
            .bind(backend.started)
            .fetch_one(&pool)
            .await;
            match gone {
                Ok(true) => break,
                Ok(false) | Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                _ => return Err(AppendError::CommitUnknown(Arc::new(error))),
            }
        }
        let committed = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM events WHERE event_id = $1)",
        )
        .bind(probe)
        .fetch_one(&pool)
        .await;
        match committed {
            Ok(true) => Ok(outcomes),
            Ok(false) => Err(classify(error)),
            Err(_) => Err(AppendError::CommitUnknown(Arc::new(error))),
        }
    })
}

fn classify(error: sqlx::Error) -> AppendError {
    if is_connection_error(&error) {
        AppendError::Unavailable(Arc::new(error))
    } else {
        AppendError::Database(Arc::new(error))
    }
}

/// Opens a transaction and locks the log head, with the record time of the last event, in
/// one round trip (no parameters, so the simple protocol can carry both statements).
const LOCK: &str = "BEGIN ISOLATION LEVEL READ COMMITTED; \
     SELECT h.position, h.hash, \
            (SELECT e.recorded_at FROM events e WHERE e.global_position = h.position) AS recorded_at \
       FROM log_head h FOR UPDATE OF h";

/// Reads the current sequence of each aggregate ($1, $2) and the hash of the last event of
/// each tenant chain ($3; the nil UUID stands for the platform-level chain).
const READ: &str = "\
SELECT ARRAY(SELECT COALESCE((SELECT max(e.sequence) FROM events e
                               WHERE e.aggregate_type = a.aggregate_type
                                 AND e.aggregate_id = a.aggregate_id), 0)
               FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS a(aggregate_type, aggregate_id, n)
              ORDER BY a.n) AS sequences,
       ARRAY(SELECT COALESCE(
                      CASE WHEN k.tenant_id = '00000000-0000-0000-0000-000000000000'::uuid
                           THEN (SELECT e.hash FROM events e WHERE e.tenant_id IS NULL
                                  ORDER BY e.global_position DESC LIMIT 1)
                           ELSE (SELECT e.hash FROM events e WHERE e.tenant_id = k.tenant_id
                                  ORDER BY e.global_position DESC LIMIT 1)
                      END,
                      decode(repeat('00', 32), 'hex'))
               FROM unnest($3::uuid[]) WITH ORDINALITY AS k(tenant_id, n)
              ORDER BY k.n) AS tenant_hashes";

/// Writes a batch, provided the log head is still at $15 and every aggregate in $16..$18
/// is at the sequence the batch assumed for it. Otherwise it writes nothing and `written`
/// is false. Run alone, it is its own transaction: one round trip appends the batch.
///
/// Why the guard makes the reads sound: every append moves the head. If the head is still
/// where this appender left it once the row lock is granted, nothing was appended since
/// then, so the statement's snapshot (taken before any wait for the lock) holds every event.
const WRITE: &str = "\
WITH stale AS (
    SELECT 1
      FROM unnest($16::text[], $17::text[], $18::bigint[]) AS c(aggregate_type, aggregate_id, sequence)
     WHERE COALESCE((SELECT max(e.sequence) FROM events e
                      WHERE e.aggregate_type = c.aggregate_type
                        AND e.aggregate_id = c.aggregate_id), 0) <> c.sequence
     LIMIT 1
), head AS (
    UPDATE log_head SET position = $19, hash = $20
     WHERE position = $15 AND NOT EXISTS (SELECT 1 FROM stale)
    RETURNING position
), appended AS (
    INSERT INTO events (global_position, event_id, aggregate_type, aggregate_id, sequence,
                        event_type, event_version, tenant_id, recorded_at, payload, metadata,
                        prev_hash, tenant_prev_hash, hash)
    SELECT e.global_position, e.event_id, e.aggregate_type, e.aggregate_id, e.sequence,
           e.event_type, e.event_version, e.tenant_id, $9, e.payload::json, e.metadata::json,
           e.prev_hash, e.tenant_prev_hash, e.hash
      FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                  $7::text[], $8::uuid[], $10::text[], $11::text[], $12::bytea[], $13::bytea[],
                  $14::bytea[])
           AS e(global_position, event_id, aggregate_type, aggregate_id, sequence, event_type,
                event_version, tenant_id, payload, metadata, prev_hash, tenant_prev_hash, hash)
     WHERE EXISTS (SELECT 1 FROM head)
), snapshotted AS (
    INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
    SELECT s.aggregate_type, s.aggregate_id, s.last_sequence, s.current_snapshot, s.payload::json
      FROM unnest($21::text[], $22::text[], $23::bigint[], $24::bigint[], $25::text[])
           AS s(aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
     WHERE EXISTS (SELECT 1 FROM head)
    ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
       SET last_sequence = EXCLUDED.last_sequence,
           current_snapshot = EXCLUDED.current_snapshot,
           payload = EXCLUDED.payload
)
SELECT EXISTS (SELECT 1 FROM head) AS written";

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

/// The assumptions a plan made: each aggregate's sequence before the batch.
#[derive(Default)]
struct Checks<'a> {
    aggregate_type: Vec<&'a str>,
    aggregate_id: Vec<&'a str>,
    sequence: Vec<i64>,
}

/// What one batch will write, and what each append is told.
struct Plan<'a> {
    rows: Rows<'a>,
    snapshots: Snapshots<'a>,
    checks: Checks<'a>,
    outcomes: Vec<Outcome>,
    /// The last event of each tenant chain the batch extends.
    moved: HashMap<Uuid, Digest32>,
    /// The head before the batch.
    base: i64,
    head_position: i64,
    head_hash: Digest32,
}

/// The distinct aggregates and tenant chains of a batch, in first-seen order.
struct BatchKeys<'a> {
    aggregates: HashMap<(&'a str, &'a str), usize>,
    aggregate_types: Vec<&'a str>,
    aggregate_ids: Vec<&'a str>,
    tenants: Vec<Uuid>,
}

impl<'a> BatchKeys<'a> {
    fn of(commands: &[&'a [PendingAppend]]) -> Self {
        let mut keys = Self {
            aggregates: HashMap::new(),
            aggregate_types: Vec::new(),
            aggregate_ids: Vec::new(),
            tenants: Vec::new(),
        };
        let mut tenants_seen: HashMap<Uuid, ()> = HashMap::new();
        for append in commands.iter().flat_map(|appends| appends.iter()) {
            let key = (append.aggregate_type.as_str(), append.aggregate_id.as_str());
            if let Entry::Vacant(slot) = keys.aggregates.entry(key) {
                slot.insert(keys.aggregate_types.len());
                keys.aggregate_types.push(key.0);
                keys.aggregate_ids.push(key.1);
            }
            for event in &append.events {
                let tenant = tenant_key(event.tenant_id);
                if tenants_seen.insert(tenant, ()).is_none() {
                    keys.tenants.push(tenant);
                }
            }
        }
        keys
    }

    fn slot(&self, append: &PendingAppend) -> usize {
        self.aggregates
            .get(&(append.aggregate_type.as_str(), append.aggregate_id.as_str()))
            .copied()
            .unwrap_or_default()
    }
}

fn tenant_key(tenant: Option<Uuid>) -> Uuid {
    tenant.unwrap_or(Uuid::nil())
}

fn decode_error(message: String) -> sqlx::Error {
    sqlx::Error::Decode(message.into())
}

fn digest(bytes: &[u8], column: &str) -> Result<Digest32, sqlx::Error> {
    Digest32::from_slice(bytes)
        .ok_or_else(|| decode_error(format!("{column} holds {} bytes, not 32", bytes.len())))
}

/// Decides a batch. With `known` sequences, a command is accepted when each of its
/// aggregates is at the sequence it expects; without them, an aggregate's first append in
/// the batch is assumed current and the assumption is recorded in the plan's checks. A
/// command whose appends are not all current writes nothing.
fn plan<'a>(
    commands: &[&'a [PendingAppend]],
    keys: &BatchKeys<'a>,
    known: Option<&[i64]>,
    tenant_heads: &HashMap<Uuid, Digest32>,
    head: (i64, Digest32),
    recorded_at: DateTime<Utc>,
) -> Plan<'a> {
    let mut sequences: Vec<Option<i64>> = match known {
        Some(known) => known.iter().copied().map(Some).collect(),
        None => vec![None; keys.aggregate_types.len()],
    };
    let (mut position, mut prev) = head;
    let mut plan = Plan {
        rows: Rows::default(),
        snapshots: Snapshots::default(),
        checks: Checks::default(),
        outcomes: Vec::with_capacity(commands.len()),
        moved: HashMap::new(),
        base: position,
        head_position: position,
        head_hash: prev,
    };
    'commands: for appends in commands {
        for append in *appends {
            let expected = append.first_sequence() - 1;
            if let Some(actual) = sequences[keys.slot(append)]
                && actual != expected
            {
                plan.outcomes.push(Err(AppendError::Conflict {
                    aggregate_type: append.aggregate_type.clone(),
                    aggregate_id: append.aggregate_id.clone(),
                    expected,
                    actual,
                }));
                continue 'commands;
            }
        }
        let mut receipts = Vec::with_capacity(appends.len());
        for append in *appends {
            let slot = keys.slot(append);
            if sequences[slot].is_none() {
                plan.checks.aggregate_type.push(&append.aggregate_type);
                plan.checks.aggregate_id.push(&append.aggregate_id);
                plan.checks.sequence.push(append.first_sequence() - 1);
            }
            let first_position = position + 1;
            for event in &append.events {
                position += 1;
                let tenant = tenant_key(event.tenant_id);
                let tenant_prev = match plan.moved.get(&tenant) {
                    Some(hash) => *hash,
                    None => tenant_heads.get(&tenant).copied().unwrap_or_default(),
                };
                let links = Links {
                    global_position: position,
                    prev_hash: prev,
                    recorded_at,
                    tenant_prev_hash: tenant_prev,
                };
                let hash = event.canonical.hash(&links);
                let rows = &mut plan.rows;
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
                rows.tenant_prev_hash.push(tenant_prev.0.to_vec());
                rows.hash.push(hash.0.to_vec());
                prev = hash;
                plan.moved.insert(tenant, hash);
            }
            sequences[slot] = Some(append.last_sequence());
            if let Some(snapshot) = &append.snapshot {
                let snapshots = &mut plan.snapshots;
                snapshots.aggregate_type.push(&append.aggregate_type);
                snapshots.aggregate_id.push(&append.aggregate_id);
                snapshots.last_sequence.push(append.last_sequence());
                snapshots.current_snapshot.push(snapshot.current_snapshot);
                snapshots.payload.push(&snapshot.payload_json);
            }
            receipts.push(AppendReceipt {
                first_position,
                last_position: position,
            });
        }
        plan.outcomes.push(Ok(receipts));
    }
    plan.head_position = position;
    plan.head_hash = prev;
    plan
}

impl Plan<'_> {
    fn is_empty(&self) -> bool {
        self.rows.global_position.is_empty()
    }

    fn probe(&self) -> Uuid {
        self.rows.event_id.first().copied().unwrap_or_default()
    }
}

/// Reads the sequences of the batch's aggregates and the heads of its tenant chains.
async fn read(
    connection: &mut PgConnection,
    keys: &BatchKeys<'_>,
) -> Result<(Vec<i64>, Vec<Digest32>), sqlx::Error> {
    let row = sqlx::query(READ)
        .bind(&keys.aggregate_types)
        .bind(&keys.aggregate_ids)
        .bind(&keys.tenants)
        .fetch_one(&mut *connection)
        .await?;
    let sequences: Vec<i64> = row.try_get("sequences")?;
    let hashes: Vec<Vec<u8>> = row.try_get("tenant_hashes")?;
    if sequences.len() != keys.aggregate_types.len() || hashes.len() != keys.tenants.len() {
        return Err(decode_error(format!(
            "read {} sequences and {} chain heads for {} aggregates and {} tenant chains",
            sequences.len(),
            hashes.len(),
            keys.aggregate_types.len(),
            keys.tenants.len()
        )));
    }
    let hashes = hashes
        .iter()
        .map(|bytes| digest(bytes, "events.hash"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((sequences, hashes))
}

/// Runs the plan's write. Returns whether it was written (the head and every assumption
/// held).
async fn execute(
    connection: &mut PgConnection,
    plan: &Plan<'_>,
    recorded_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let (rows, snapshots, checks) = (&plan.rows, &plan.snapshots, &plan.checks);
    sqlx::query_scalar::<_, bool>(WRITE)
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
        .bind(plan.base)
        .bind(&checks.aggregate_type)
        .bind(&checks.aggregate_id)
        .bind(&checks.sequence)
        .bind(plan.head_position)
        .bind(plan.head_hash.0.to_vec())
        .bind(&snapshots.aggregate_type)
        .bind(&snapshots.aggregate_id)
        .bind(&snapshots.last_sequence)
        .bind(&snapshots.current_snapshot)
        .bind(&snapshots.payload)
        .fetch_one(&mut *connection)
        .await
}

/// One batch. Returns each append's outcome and the log head after it.
///
/// When this appender knows the head (it wrote last, as far as it knows) and every tenant
/// chain of the batch, it writes in one statement that is its own transaction, assuming each
/// aggregate is at the sequence its first append expects; the statement checks the head and
/// the assumptions and writes nothing if one fails. Otherwise, or then, it locks the head in
/// a transaction, reads the sequences and chain heads, decides, writes and commits.
async fn write_batch(
    connection: &mut PgConnection,
    backend: Backend,
    commands: &[&[PendingAppend]],
    remembered: Option<Head>,
    tenants: &mut HashMap<Uuid, Digest32>,
) -> Result<(Vec<Outcome>, Head), BatchError> {
    let keys = BatchKeys::of(commands);

    if let Some((position, hash, last_recorded)) = remembered
        && keys
            .tenants
            .iter()
            .all(|tenant| tenants.contains_key(tenant))
    {
        let recorded_at = record_time(last_recorded);
        let plan = plan(
            commands,
            &keys,
            None,
            tenants,
            (position, hash),
            recorded_at,
        );
        match execute(connection, &plan, recorded_at).await {
            Ok(true) => {
                tenants.extend(plan.moved.iter().map(|(tenant, hash)| (*tenant, *hash)));
                return Ok((
                    plan.outcomes,
                    (plan.head_position, plan.head_hash, Some(recorded_at)),
                ));
            }
            // Another appender moved the head, or an append was stale: nothing was written.
            Ok(false) => {}
            Err(error) if is_connection_error(&error) => {
                return Err(BatchError::Ambiguous {
                    error,
                    probe: plan.probe(),
                    outcomes: plan.outcomes,
                    backend,
                });
            }
            Err(error) => return Err(BatchError::Failed(error)),
        }
    }

    // A plain string with no arguments goes over the simple protocol, which carries both
    // statements in one round trip.
    let row = connection
        .fetch_one(LOCK)
        .await
        .map_err(BatchError::Failed)?;
    let head_position: i64 = row.try_get("position").map_err(BatchError::Failed)?;
    let head_hash: Vec<u8> = row.try_get("hash").map_err(BatchError::Failed)?;
    let head = (
        head_position,
        digest(&head_hash, "log_head.hash").map_err(BatchError::Failed)?,
    );
    let head_recorded: Option<DateTime<Utc>> =
        row.try_get("recorded_at").map_err(BatchError::Failed)?;
    let recorded_at = record_time(head_recorded);
    let (sequences, hashes) = read(connection, &keys).await.map_err(BatchError::Failed)?;
    tenants.clear();
    tenants.extend(keys.tenants.iter().copied().zip(hashes));
    let plan = plan(
        commands,
        &keys,
        Some(&sequences),
        tenants,
        head,
        recorded_at,
    );
    if plan.is_empty() {
        // Every append was refused: nothing to commit.
        connection
            .execute("ROLLBACK")
            .await
            .map_err(BatchError::Failed)?;
        return Ok((plan.outcomes, (head.0, head.1, head_recorded)));
    }
    let written = execute(connection, &plan, recorded_at)
        .await
        .map_err(BatchError::Failed)?;
    if !written {
        return Err(BatchError::Failed(decode_error(
            "the log changed while its head was locked: something writes events without the appender"
                .to_owned(),
        )));
    }
    if let Err(error) = connection.execute("COMMIT").await {
        return Err(if is_connection_error(&error) {
            BatchError::Ambiguous {
                error,
                probe: plan.probe(),
                outcomes: plan.outcomes,
                backend,
            }
        } else {
            BatchError::Failed(error)
        });
    }
    tenants.extend(plan.moved.iter().map(|(tenant, hash)| (*tenant, *hash)));
    Ok((
        plan.outcomes,
        (plan.head_position, plan.head_hash, Some(recorded_at)),
    ))
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn a_batch_is_never_recorded_before_the_last_event_of_the_log() {
        // Another process, whose clock runs a minute ahead, wrote the last event.
        let ahead = (Utc::now() + TimeDelta::minutes(1)).trunc_subsecs(6);
        assert_eq!(record_time(Some(ahead)), ahead);
        let behind = Utc::now() - TimeDelta::minutes(1);
        assert!(record_time(Some(behind)) > behind);
        let now = record_time(None);
        assert!(now <= Utc::now());
        assert_eq!(now, now.trunc_subsecs(6));
    }
}
