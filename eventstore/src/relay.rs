//! The relay: the only publisher of events to NATS JetStream.
//!
//! One relay is active at a time. Each relay process tries a PostgreSQL advisory lock on a
//! connection of its own; the holder leads, the others wait as hot standbys and try again
//! every [`RelayConfig::standby_poll`]. A leader that dies loses its connection and with it
//! the lock, so a standby takes over within about one poll.
//!
//! The leader publishes strictly in `global_position` order. Each message has
//! `Nats-Msg-Id` set to the event id (JetStream drops a republished duplicate within the
//! stream's duplicate window) and CloudEvents binary-mode headers; the body is a protobuf
//! `EventEnvelope` (see `docs/events.md`). Up to [`RelayConfig::max_in_flight`] publish acks
//! are awaited at once; the checkpoint (`relay_checkpoints`) only moves over positions whose
//! acks arrived, in order, and is written by a task of its own so that publishing never
//! waits for PostgreSQL. A relay killed at any point therefore republishes from its
//! checkpoint, and deduplication plus idempotent consumers absorb the repeats.
//!
//! A reader task reads the log a page ahead (the next page is read while one is encoded),
//! with the payload and metadata as the text the log stores: the envelope's canonical bytes
//! are put together from that text and checked against the stored hash, so an event is
//! neither parsed nor re-encoded on its way to the bus unless its text was changed.
//!
//! It wakes on `NOTIFY platform_events`, which a statement-level trigger on `events` sends
//! once per append batch, and polls every [`RelayConfig::poll_interval`] as a fallback. While
//! NATS is down it backs off and tries again; on each start of leadership it compares its
//! checkpoint with the last message in the stream and starts from the lower, so a stream
//! that was deleted or lost messages is filled again from PostgreSQL.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::{self, Context};
use prost::Message as _;
use proto::TypedEvent;
use proto::v1::EventEnvelope;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep};

use crate::error::StoreError;
use crate::reader::read_stored_page;
use crate::record::{RecordedEvent, StoredEvent};

/// The channel the `events` trigger notifies after each append statement.
pub const NOTIFY_CHANNEL: &str = "platform_events";

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The first token of every subject: `<prefix>.events.<tenant|platform>.<aggregate>.<event>`.
    pub subject_prefix: String,
    /// The JetStream stream, created or updated on start.
    pub stream: String,
    /// How long the stream keeps messages; zero keeps them until limits say otherwise.
    pub max_age: Duration,
    /// How long JetStream remembers a `Nats-Msg-Id` to drop a duplicate.
    pub duplicate_window: Duration,
    /// Publish acks awaited at once.
    pub max_in_flight: usize,
    /// Events read from PostgreSQL per round trip.
    pub page_size: i64,
    /// The fallback poll when no notification arrives.
    pub poll_interval: Duration,
    /// How often a standby tries to take the lead, and a leader checks it still holds it.
    pub standby_poll: Duration,
    /// The advisory lock that elects the leader.
    pub lock_key: i64,
    /// The row of `relay_checkpoints` this relay moves.
    pub checkpoint: String,
    /// The longest wait between attempts while NATS or PostgreSQL fails.
    pub max_backoff: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            subject_prefix: "platform".to_owned(),
            stream: "PLATFORM_EVENTS".to_owned(),
            max_age: Duration::ZERO,
            duplicate_window: Duration::from_secs(120),
            max_in_flight: 256,
            page_size: 512,
            poll_interval: Duration::from_secs(1),
            standby_poll: Duration::from_millis(500),
            // "platform relay" in ASCII, so that it does not collide with other users' locks.
            lock_key: 0x706c_6174_7265_6c61,
            checkpoint: "relay".to_owned(),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RelayConfig {
    /// The subject filter that covers every event of this relay.
    pub fn all_subjects(&self) -> String {
        format!("{}.events.>", self.subject_prefix)
    }

    /// The subject of `event`.
    pub fn subject_of(&self, event: &RecordedEvent) -> String {
        let scope = event
            .tenant_id
            .map_or_else(|| "platform".to_owned(), |tenant| tenant.to_string());
        format!(
            "{}.events.{}.{}.{}",
            self.subject_prefix,
            scope,
            subject_token(&event.aggregate_type),
            subject_token(&event.event_type)
        )
    }
}

/// `text` as one subject token: characters NATS gives a meaning (`.`, `*`, `>`, white
/// space) become `_`.
fn subject_token(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() => '_',
            c => c,
        })
        .collect()
}

/// Why the relay stopped leading for a while.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// PostgreSQL failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// NATS or JetStream failed.
    #[error("NATS JetStream: {0}")]
    Nats(String),
    /// An event could not be turned into a message.
    #[error("event at position {position} cannot be encoded: {problem}")]
    Encode {
        /// Its position.
        position: i64,
        /// What is wrong.
        problem: String,
    },
    /// The advisory lock's connection broke: another relay may lead now.
    #[error("lost the relay lock")]
    LostLock,
    /// The task that reads the log ahead of the publisher stopped.
    #[error("the relay's log reader stopped")]
    ReaderStopped,
}

impl From<sqlx::Error> for RelayError {
    fn from(err: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(err))
    }
}

fn nats(err: impl std::fmt::Display) -> RelayError {
    RelayError::Nats(err.to_string())
}

/// What a relay has done, for metrics and tests.
#[derive(Debug, Default)]
pub struct RelayStats {
    leader: AtomicBool,
    published: AtomicU64,
    acked_position: AtomicI64,
    terms: AtomicU64,
}

impl RelayStats {
    /// Whether this relay leads now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Messages published (acked) by this relay since it started.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// The highest position whose ack arrived, with all before it.
    pub fn acked_position(&self) -> i64 {
        self.acked_position.load(Ordering::Relaxed)
    }

    /// How many times this relay took the lead.
    pub fn terms(&self) -> u64 {
        self.terms.load(Ordering::Relaxed)
    }
}

/// Encodes an event as the message body. The relay is generic over it so that the wire
/// format lives with the contracts (`proto`).
pub trait EncodeEvent: Send + Sync + 'static {
    /// The body of the message for `event`, and its content type.
    fn encode(&self, event: &RecordedEvent) -> Result<Vec<u8>, String>;

    /// The body of the message for an event read with its payload as the log stores it.
    /// The default parses the payload and calls [`EncodeEvent::encode`].
    fn encode_stored(&self, event: &StoredEvent) -> Result<Vec<u8>, String> {
        let parsed = event.parsed().map_err(|err| err.to_string())?;
        self.encode(&parsed)
    }

    /// The `content-type` header of every message.
    fn content_type(&self) -> &'static str;
}

/// The contracts' wire format: one protobuf `platform.events.v1.EventEnvelope` per event,
/// with the canonical bytes its hash covers and, for the aggregates the contracts type, the
/// typed payload. An event whose payload does not decode as its type says is still
/// published, without the typed payload, so that one odd event never stops the stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProtoEncoder;

impl EncodeEvent for ProtoEncoder {
    fn encode(&self, event: &RecordedEvent) -> Result<Vec<u8>, String> {
        let canonical = event.canonical_bytes().map_err(|err| err.to_string())?;
        let typed = TypedEvent::from_json(
            &event.aggregate_type,
            &event.event_type,
            &event.event_version,
            &event.payload,
        );
        envelope(event, canonical, typed)
    }

    /// Puts the canonical bytes together from the stored text, and decodes the typed payload
    /// straight from it; parses nothing else. A stored text that no longer hashes as it was
    /// written is encoded from its parsed values instead, like any event.
    fn encode_stored(&self, event: &StoredEvent) -> Result<Vec<u8>, String> {
        let Some(canonical) = event.canonical_bytes_as_stored() else {
            let parsed = event.parsed().map_err(|err| err.to_string())?;
            return self.encode(&parsed);
        };
        let record = &event.record;
        let typed = TypedEvent::from_json_text(
            &record.aggregate_type,
            &record.event_type,
            &record.event_version,
            &event.payload_json,
        );
        envelope(record, canonical, typed)
    }

    fn content_type(&self) -> &'static str {
        "application/protobuf; messageType=platform.events.v1.EventEnvelope"
    }
}

/// The envelope of `event` (whose `payload` is not read) with its canonical bytes and its
/// typed payload, encoded. A payload that does not decode as its type says is published
/// without the typed form.
fn envelope(
    event: &RecordedEvent,
    canonical: Vec<u8>,
    typed: Result<Option<TypedEvent>, proto::ConvertError>,
) -> Result<Vec<u8>, String> {
    let typed = typed.unwrap_or_else(|err| {
        tracing::warn!(
            position = event.global_position,
            "relay: publishing without a typed payload: {err}"
        );
        None
    });
    envelope_of(event, canonical, typed)
        .map(|envelope| envelope.encode_to_vec())
        .map_err(|err| err.to_string())
}

/// The envelope of `event` (whose `payload` is not read: the canonical bytes and the typed
/// payload carry it), as the relay publishes it and an audit export writes it.
pub(crate) fn envelope_of(
    event: &RecordedEvent,
    canonical: Vec<u8>,
    typed: Option<TypedEvent>,
) -> Result<EventEnvelope, proto::ConvertError> {
    let record = event.to_proto_with_payload(serde_json::Value::Null);
    let mut envelope = EventEnvelope::without_payload(record, canonical)?;
    envelope.payload = typed.map(Into::into);
    Ok(envelope)
}

/// The relay of one process.
#[derive(Clone)]
pub struct Relay<E> {
    pool: PgPool,
    jetstream: Context,
    config: RelayConfig,
    encoder: Arc<E>,
    stats: Arc<RelayStats>,
}

impl<E> std::fmt::Debug for Relay<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The stream's configuration for `config`.
pub fn stream_config(config: &RelayConfig) -> StreamConfig {
    StreamConfig {
        name: config.stream.clone(),
        subjects: vec![config.all_subjects()],
        max_age: config.max_age,
        duplicate_window: config.duplicate_window,
        storage: StorageType::File,
        ..StreamConfig::default()
    }
}

/// Creates the stream, or updates it to `config`. Returns its configuration.
pub async fn ensure_stream(
    jetstream: &Context,
    config: &RelayConfig,
) -> Result<StreamConfig, RelayError> {
    let wanted = stream_config(config);
    let mut stream = jetstream
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(nats)?;
    let current = stream.info().await.map_err(nats)?.config.clone();
    if current.subjects != wanted.subjects
        || current.max_age != wanted.max_age
        || current.duplicate_window != wanted.duplicate_window
    {
        let updated = StreamConfig {
            subjects: wanted.subjects.clone(),
            max_age: wanted.max_age,
            duplicate_window: wanted.duplicate_window,
            ..current
        };
        jetstream.update_stream(updated).await.map_err(nats)?;
    }
    Ok(wanted)
}

/// The relay's checkpoint, 0 if it never published.
pub async fn checkpoint(pool: &PgPool, name: &str) -> Result<i64, RelayError> {
    let position: Option<i64> =
        sqlx::query_scalar("SELECT position FROM relay_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    Ok(position.unwrap_or(0))
}

async fn store_checkpoint(pool: &PgPool, name: &str, position: i64) -> Result<(), RelayError> {
    sqlx::query(
        "INSERT INTO relay_checkpoints (name, position, updated_at) VALUES ($1, $2, now())
         ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
    )
    .bind(name)
    .bind(position)
    .execute(pool)
    .await?;
    Ok(())
}

/// The position in the header of the last message in the stream: `Some(0)` for a stream
/// that never held a message, `None` when it cannot be told (the messages aged out).
async fn last_in_stream(
    jetstream: &Context,
    config: &RelayConfig,
) -> Result<Option<i64>, RelayError> {
    let mut stream = jetstream.get_stream(&config.stream).await.map_err(nats)?;
    let state = stream.info().await.map_err(nats)?.state.clone();
    if state.last_sequence == 0 {
        return Ok(Some(0));
    }
    if state.messages == 0 {
        return Ok(None);
    }
    match stream.get_raw_message(state.last_sequence).await {
        Ok(message) => Ok(message
            .headers
            .get(POSITION_HEADER)
            .and_then(|value| value.as_str().parse::<i64>().ok())),
        Err(err) => {
            tracing::warn!("cannot read the stream's last message: {err}");
            Ok(None)
        }
    }
}

/// The header with the event's global position.
pub const POSITION_HEADER: &str = "platform-position";
/// The header with the event's hash, in hex.
pub const HASH_HEADER: &str = "platform-hash";

/// The CloudEvents and platform header names, made once: a name made from a `&str` is
/// checked and copied at every insert.
mod names {
    use async_nats::header::HeaderName;

    pub const SPEC_VERSION: HeaderName = HeaderName::from_static("ce-specversion");
    pub const ID: HeaderName = HeaderName::from_static("ce-id");
    pub const TYPE: HeaderName = HeaderName::from_static("ce-type");
    pub const SOURCE: HeaderName = HeaderName::from_static("ce-source");
    pub const SUBJECT: HeaderName = HeaderName::from_static("ce-subject");
    pub const TIME: HeaderName = HeaderName::from_static("ce-time");
    pub const CONTENT_TYPE: HeaderName = HeaderName::from_static("content-type");
    pub const POSITION: HeaderName = HeaderName::from_static(super::POSITION_HEADER);
    pub const HASH: HeaderName = HeaderName::from_static(super::HASH_HEADER);
}

/// The headers of the message for `event`.
pub fn headers_of(event: &RecordedEvent, content_type: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let id = event.event_id.to_string();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.clone());
    headers.insert(names::SPEC_VERSION, "1.0");
    headers.insert(names::ID, id);
    headers.insert(
        names::TYPE,
        format!(
            "platform.{}.{}.v{}",
            event.aggregate_type, event.event_type, event.event_version
        ),
    );
    let source = event.tenant_id.map_or_else(
        || "/platform".to_owned(),
        |tenant| format!("/platform/tenants/{tenant}"),
    );
    headers.insert(names::SOURCE, source);
    headers.insert(
        names::SUBJECT,
        format!("{}/{}", event.aggregate_type, event.aggregate_id),
    );
    headers.insert(
        names::TIME,
        event
            .recorded_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    );
    headers.insert(names::CONTENT_TYPE, content_type);
    headers.insert(names::POSITION, event.global_position.to_string());
    headers.insert(names::HASH, event.hash.to_hex());
    headers
}

/// Acks awaited in order, and the position they cover.
struct InFlight {
    acks: VecDeque<(i64, PublishAckFuture)>,
    acked: i64,
}

impl InFlight {
    async fn settle_one(&mut self, stats: &RelayStats) -> Result<(), RelayError> {
        if let Some((position, ack)) = self.acks.pop_front() {
            ack.await.map_err(nats)?;
            self.acked = position;
            stats.published.fetch_add(1, Ordering::Relaxed);
            stats.acked_position.store(position, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn settle_all(&mut self, stats: &RelayStats) -> Result<(), RelayError> {
        while !self.acks.is_empty() {
            self.settle_one(stats).await?;
        }
        Ok(())
    }
}

impl<E: EncodeEvent> Relay<E> {
    /// A relay over the log in `pool`, publishing through `nats`.
    pub fn new(pool: PgPool, nats: async_nats::Client, config: RelayConfig, encoder: E) -> Self {
        Self {
            pool,
            jetstream: jetstream::new(nats),
            config,
            encoder: Arc::new(encoder),
            stats: Arc::default(),
        }
    }

    /// What this relay has done.
    pub fn stats(&self) -> Arc<RelayStats> {
        Arc::clone(&self.stats)
    }

    /// Runs until `shutdown` completes: waits for the lead, leads while it holds the lock,
    /// and waits again when it loses it. Failures of NATS or PostgreSQL are retried with
    /// backoff; they never end the relay.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::new(self.config.max_backoff);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                outcome = self.term() => match outcome {
                    Ok(()) => backoff.reset(),
                    Err(err) => {
                        self.stats.leader.store(false, Ordering::Relaxed);
                        tracing::warn!("relay: {err}; trying again");
                        sleep(backoff.next()).await;
                    }
                },
            }
        }
    }

    /// One term: takes the lock (waiting as a standby), then leads until a failure.
    async fn term(&self) -> Result<(), RelayError> {
        let mut lock = PgConnection::connect_with(&self.pool.connect_options()).await?;
        sqlx::query("SET application_name = 'platform relay'")
            .execute(&mut lock)
            .await?;
        loop {
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(self.config.lock_key)
                .fetch_one(&mut lock)
                .await?;
            if taken {
                break;
            }
            sleep(self.config.standby_poll).await;
        }
        self.stats.leader.store(true, Ordering::Relaxed);
        self.stats.terms.fetch_add(1, Ordering::Relaxed);
        tracing::info!("relay: leading");
        let mut backoff = Backoff::new(self.config.max_backoff);
        loop {
            let result = self.lead(&mut lock).await;
            match result {
                Err(RelayError::LostLock) | Err(RelayError::Store(_)) => {
                    self.stats.leader.store(false, Ordering::Relaxed);
                    return result;
                }
                Err(err) => {
                    tracing::warn!("relay: {err}; backing off");
                    let wait = backoff.next();
                    // Hold the lead while NATS is away, but keep proving the lock.
                    let deadline = Instant::now() + wait;
                    while Instant::now() < deadline {
                        check_lock(&mut lock).await?;
                        sleep(self.config.standby_poll.min(wait)).await;
                    }
                }
                Ok(()) => return Ok(()),
            }
        }
    }

    /// Publishes from the checkpoint on, for as long as nothing fails.
    async fn lead(&self, lock: &mut PgConnection) -> Result<(), RelayError> {
        ensure_stream(&self.jetstream, &self.config).await?;
        let stored = checkpoint(&self.pool, &self.config.checkpoint).await?;
        let start = match last_in_stream(&self.jetstream, &self.config).await? {
            Some(published) if published < stored => {
                tracing::warn!(
                    "relay: the stream ends at position {published}, the checkpoint says {stored}; republishing from {published}"
                );
                store_checkpoint(&self.pool, &self.config.checkpoint, published).await?;
                published
            }
            _ => stored,
        };
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        let mut flight = InFlight {
            acks: VecDeque::with_capacity(self.config.max_in_flight),
            acked: start,
        };
        self.stats.acked_position.store(start, Ordering::Relaxed);
        // Reading and encoding run in a task of their own, a page or two ahead, so that they
        // take the other worker thread while this one only publishes and settles acks.
        let (pages_tx, mut pages) = mpsc::channel(READ_AHEAD_PAGES);
        let _reader = AbortOnDrop(tokio::spawn(read_ahead(
            ReadAhead {
                pool: self.pool.clone(),
                encoder: Arc::clone(&self.encoder),
                config: self.config.clone(),
                next: start + 1,
            },
            listener,
            pages_tx,
        )));
        // The checkpoint is written on a task of its own, so that publishing never waits for
        // PostgreSQL: it is told each acked position and stores the latest it has seen.
        let (acked, acked_seen) = watch::channel(start);
        let _writer = AbortOnDrop(tokio::spawn(write_checkpoints(
            self.pool.clone(),
            self.config.checkpoint.clone(),
            acked_seen,
            start,
        )));
        let mut lock_checked = Instant::now();
        loop {
            let page = tokio::select! {
                page = pages.recv() => page.ok_or(RelayError::ReaderStopped)??,
                () = sleep(self.config.standby_poll) => {
                    check_lock(lock).await?;
                    lock_checked = Instant::now();
                    continue;
                }
            };
            self.publish(page.messages, &mut flight).await?;
            if page.caught_up {
                flight.settle_all(&self.stats).await?;
            }
            acked.send_if_modified(|told| {
                let moved = flight.acked > *told;
                if moved {
                    *told = flight.acked;
                }
                moved
            });
            if lock_checked.elapsed() >= self.config.standby_poll {
                check_lock(lock).await?;
                lock_checked = Instant::now();
            }
        }
    }

    /// Publishes `messages` in order, keeping at most `max_in_flight` acks outstanding.
    async fn publish(
        &self,
        messages: Vec<Outgoing>,
        flight: &mut InFlight,
    ) -> Result<(), RelayError> {
        for message in messages {
            while flight.acks.len() >= self.config.max_in_flight.max(1) {
                flight.settle_one(&self.stats).await?;
            }
            let ack = self
                .jetstream
                .publish_with_headers(message.subject, message.headers, message.body.into())
                .await
                .map_err(nats)?;
            flight.acks.push_back((message.position, ack));
        }
        Ok(())
    }
}

/// Stores the latest acked position it is told of in `relay_checkpoints`, until the leader
/// stops (and drops the sender). A failed write is tried again, with whatever position is
/// the latest by then; a checkpoint that lags only means republishing after a restart, which
/// the stream's duplicate window and the consumers' own checkpoints absorb.
async fn write_checkpoints(
    pool: PgPool,
    name: String,
    mut acked: watch::Receiver<i64>,
    mut stored: i64,
) {
    while acked.changed().await.is_ok() {
        loop {
            let position = *acked.borrow_and_update();
            if position <= stored {
                break;
            }
            match store_checkpoint(&pool, &name, position).await {
                Ok(()) => stored = position,
                Err(err) => {
                    tracing::warn!(
                        "relay: cannot store the checkpoint at {position}: {err}; trying again"
                    );
                    sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// Pages read and encoded ahead of the publisher.
const READ_AHEAD_PAGES: usize = 2;

/// One event, ready to publish.
struct Outgoing {
    position: i64,
    subject: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A page of messages, and whether it reached the head of the log when it was read.
struct Page {
    messages: Vec<Outgoing>,
    caught_up: bool,
}

/// What the reader task needs.
struct ReadAhead<E> {
    pool: PgPool,
    encoder: Arc<E>,
    config: RelayConfig,
    next: i64,
}

/// Aborts the task when the leader stops, whichever way it stops.
struct AbortOnDrop<T = ()>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the log in pages from `state.next` on, encodes each page and hands it over in order.
/// At the head of the log it waits for a notification, or for the poll interval. A failure
/// is handed over as well, and ends the task.
async fn read_ahead<E: EncodeEvent>(
    mut state: ReadAhead<E>,
    mut listener: PgListener,
    pages: mpsc::Sender<Result<Page, RelayError>>,
) {
    let page_size = state.config.page_size;
    // Whether the publisher was last told that the head of the log was reached: it settles
    // every ack then, so after a full page an empty one must still tell it, once.
    let mut told_caught_up = true;
    // The next page, already being read while this one is encoded (behind a full page).
    let mut prefetched: Option<AbortOnDrop<Result<Vec<StoredEvent>, StoreError>>> = None;
    loop {
        let read = match prefetched.take() {
            Some(mut next) => (&mut next.0).await.map_err(|_| RelayError::ReaderStopped),
            None => Ok(read_stored_page(&state.pool, state.next, i64::MAX, page_size).await),
        };
        let page = match read.and_then(|page| page.map_err(RelayError::from)) {
            Ok(events) => events,
            Err(err) => {
                let _ = pages.send(Err(err)).await;
                return;
            }
        };
        let caught_up = (page.len() as i64) < page_size;
        if let Some(last) = page.last() {
            state.next = last.record.global_position + 1;
        }
        if !caught_up {
            let (pool, from) = (state.pool.clone(), state.next);
            prefetched = Some(AbortOnDrop(tokio::spawn(async move {
                read_stored_page(&pool, from, i64::MAX, page_size).await
            })));
        }
        if !page.is_empty() || !told_caught_up {
            let prepared =
                prepare(&page, state.encoder.as_ref(), &state.config).map(|messages| Page {
                    messages,
                    caught_up,
                });
            let failed = prepared.is_err();
            if pages.send(prepared).await.is_err() || failed {
                return;
            }
            told_caught_up = caught_up;
        }
        if caught_up {
            tokio::select! {
                notified = listener.recv() => if let Err(err) = notified {
                    let _ = pages.send(Err(err.into())).await;
                    return;
                },
                () = sleep(state.config.poll_interval) => {}
            }
        }
    }
}

/// The messages for `page`, in order.
fn prepare<E: EncodeEvent>(
    page: &[StoredEvent],
    encoder: &E,
    config: &RelayConfig,
) -> Result<Vec<Outgoing>, RelayError> {
    page.iter()
        .map(|stored| {
            let event = &stored.record;
            let body = encoder
                .encode_stored(stored)
                .map_err(|problem| RelayError::Encode {
                    position: event.global_position,
                    problem,
                })?;
            Ok(Outgoing {
                position: event.global_position,
                subject: config.subject_of(event),
                headers: headers_of(event, encoder.content_type()),
                body,
            })
        })
        .collect()
}

async fn check_lock(lock: &mut PgConnection) -> Result<(), RelayError> {
    lock.ping().await.map_err(|_| RelayError::LostLock)
}

/// Exponential backoff from 100 ms up to a ceiling.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self {
            next: Duration::from_millis(100),
            max,
        }
    }

    fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tokens_never_hold_a_wildcard_or_a_separator() {
        assert_eq!(subject_token("Tenant"), "Tenant");
        assert_eq!(subject_token("a.b*c>d e"), "a_b_c_d_e");
    }

    /// An event as the log holds it, hashed, and as the relay reads it back with its payload
    /// and metadata as stored text (`payload_text` when given, else the canonical text).
    fn as_read(
        aggregate_type: &str,
        event_type: &str,
        event_version: &str,
        payload: serde_json::Value,
        payload_text: Option<&str>,
    ) -> (RecordedEvent, StoredEvent) {
        let mut event = RecordedEvent {
            global_position: 7,
            event_id: uuid::Uuid::now_v7(),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: "agg-1".to_owned(),
            sequence: 3,
            event_type: event_type.to_owned(),
            event_version: event_version.to_owned(),
            tenant_id: Some(uuid::Uuid::now_v7()),
            recorded_at: crate::audit::checkpoint::to_micros(chrono::Utc::now()),
            payload,
            metadata: serde_json::json!({"actor_id": "someone", "actor_kind": "user"}),
            prev_hash: crate::Digest32([1; 32]),
            tenant_prev_hash: crate::Digest32([2; 32]),
            hash: crate::ZERO_HASH,
        };
        event.hash = event.compute_hash().unwrap();
        let stored = StoredEvent {
            record: RecordedEvent {
                payload: serde_json::Value::Null,
                ..event.clone()
            },
            payload_json: payload_text.map_or_else(
                || serde_json_canonicalizer::to_string(&event.payload).unwrap(),
                str::to_owned,
            ),
            metadata_json: serde_json_canonicalizer::to_string(&event.metadata).unwrap(),
        };
        (event, stored)
    }

    #[test]
    fn an_event_encoded_from_its_stored_text_is_the_envelope_of_its_parsed_values() {
        let typed = TypedEvent::Tenant(domain::identity::tenant::TenantEvent::TenantReactivated {
            reactivated_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        });
        let (event, stored) = as_read(
            "Tenant",
            &typed.event_type(),
            &typed.event_version(),
            typed.to_json().unwrap(),
            None,
        );
        assert!(stored.canonical_bytes_as_stored().is_some());
        let fast = ProtoEncoder.encode_stored(&stored).unwrap();
        assert_eq!(fast, ProtoEncoder.encode(&event).unwrap());
        let envelope = EventEnvelope::decode(fast.as_slice()).unwrap();
        assert!(envelope.payload.is_some(), "the typed payload is there");
        assert_eq!(envelope.verify(), Ok(()));

        // An event the contracts do not type.
        let (event, stored) = as_read(
            "Ledger",
            "EntryRecorded",
            "1",
            serde_json::json!({"entry": "e-1", "amount": 100}),
            None,
        );
        assert_eq!(
            ProtoEncoder.encode_stored(&stored).unwrap(),
            ProtoEncoder.encode(&event).unwrap()
        );
    }

    #[test]
    fn a_stored_text_that_is_not_canonical_is_encoded_from_its_parsed_values() {
        let (event, stored) = as_read(
            "Ledger",
            "EntryRecorded",
            "1",
            serde_json::json!({"entry": "e-1", "amount": 100}),
            Some("{ \"entry\" : \"e-1\",\n  \"amount\": 100 }"),
        );
        assert_eq!(stored.canonical_bytes_as_stored(), None);
        let encoded = ProtoEncoder.encode_stored(&stored).unwrap();
        assert_eq!(encoded, ProtoEncoder.encode(&event).unwrap());
        let envelope = EventEnvelope::decode(encoded.as_slice()).unwrap();
        assert_eq!(envelope.verify(), Ok(()));
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_starts_over_when_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(500));
        let waits: Vec<_> = (0..5).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next().as_millis(), 100);
    }
}
