//! The event feed behind GraphQL subscriptions: the events of a [`Scope`] after a position,
//! caught up from PostgreSQL and then followed live from NATS, in order, each at most once,
//! with no gap at the switch or after it.
//!
//! Each subscription is one task that owns a cursor: the position up to which every event
//! of the scope has been handed to the subscriber, in order. It subscribes to the scope's
//! subjects first (core NATS: `<prefix>.events.<tenant>.>` for a tenant, `<prefix>.events.>`
//! for the platform operator; the relay's publishes reach them as they reach the stream, and
//! no server-side consumer is kept per subscriber), buffers what arrives, reads the log from
//! PostgreSQL up to its head, and then hands over buffered and new live events.
//!
//! **Why there is no gap and no duplicate.** The cursor starts at `from_position` and moves
//! in exactly two ways:
//! 1. over a range `(cursor, to]` just read from PostgreSQL with the scope's filter, where
//!    `to` is at most a head read from `log_head` before; positions are gap-free and commit in
//!    order, so every event up to that head was committed and visible to the read;
//! 2. over one live event whose chain link names the event at the cursor: its
//!    `tenant_prev_hash` is the hash of the tenant's last event at or before the cursor (its
//!    `prev_hash` the hash of the event at the cursor, for the whole log), so no event of the
//!    scope lies between them (the envelope's hash is checked against its canonical bytes,
//!    which cover the link). Anything else (a gap, a lost or reordered message) makes the
//!    feed read PostgreSQL up to that message's position instead.
//!
//! Only events above the cursor are handed over, and each move raises it: strictly
//! increasing positions, each at most once. A timer bounds how long an event can wait: every
//! poll interval, the feed reads PostgreSQL up to the head it saw one interval earlier (up to
//! the current head while NATS is unreachable), so a silent relay, a NATS outage, a dropped
//! message or a full buffer delays events by about one interval but loses none.
//!
//! **Bounded memory.** The subscriber's channel, the outbox (at most a page) and the live
//! buffer are bounded; PostgreSQL is read a page at a time, and only once the outbox is
//! empty. A live buffer that overflows is dropped: the feed then notes only the highest
//! position NATS announced, and reads up to it from PostgreSQL once the subscriber has taken
//! what it already has.
//!
//! **Cost.** Per subscriber, one read of `log_head` per poll interval, and a range read
//! through the `(tenant_id, global_position)` index when the head moved past the cursor
//! without the live feed getting there (for a tenant on a busy platform: most intervals, an
//! index probe that returns no row).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::client::SubscribeErrorKind;
use async_nats::connection::State;
use async_nats::{Message, Subscriber};
use eventstore::reader::{LogFilter, read_filtered_page};
use eventstore::relay::POSITION_HEADER;
use eventstore::{Digest32, LogReader, RecordedEvent, RelayConfig, StoreError, ZERO_HASH};
use futures::{Stream, StreamExt as _};
use projections::runner::event_of;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep, timeout};
use tracing::Instrument as _;
use uuid::Uuid;

/// The first wait before PostgreSQL is tried again; it doubles up to [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The longest wait between two tries of PostgreSQL, or of a NATS subscription.
const LAST_RETRY: Duration = Duration::from_secs(30);

/// Which events a subscriber may see and asked for.
///
/// The tenant is matched against the event's `tenant_id` column, never against anything in
/// its payload or metadata; the gateway takes it from the caller's credential.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// The tenant whose events are selected; `None` for the platform operator, who sees
    /// every event, platform-level ones included.
    pub tenant: Option<Uuid>,
    /// Only events of these aggregate types; `None` for all.
    pub aggregate_types: Option<Vec<String>>,
    /// Only events of these event types; `None` for all.
    pub event_types: Option<Vec<String>>,
}

impl Scope {
    /// Every event of the log: the platform operator's scope.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Every event of `tenant`.
    pub fn tenant(tenant: Uuid) -> Self {
        Self {
            tenant: Some(tenant),
            ..Self::default()
        }
    }

    /// This scope, narrowed to events of the given aggregate types.
    #[must_use]
    pub fn with_aggregate_types<S: Into<String>>(
        mut self,
        types: impl IntoIterator<Item = S>,
    ) -> Self {
        self.aggregate_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// This scope, narrowed to events of the given event types.
    #[must_use]
    pub fn with_event_types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Whether `event` is in this scope.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        let listed = |list: &Option<Vec<String>>, value: &str| {
            list.as_ref()
                .is_none_or(|list| list.iter().any(|item| item == value))
        };
        self.tenant
            .is_none_or(|tenant| event.tenant_id == Some(tenant))
            && listed(&self.aggregate_types, &event.aggregate_type)
            && listed(&self.event_types, &event.event_type)
    }

    fn has_type_filter(&self) -> bool {
        self.aggregate_types.is_some() || self.event_types.is_some()
    }

    fn filter(&self) -> LogFilter<'_> {
        LogFilter {
            tenant: self.tenant,
            aggregate_types: self.aggregate_types.as_deref(),
            event_types: self.event_types.as_deref(),
        }
    }

    /// The subjects that carry this scope's events, and every other event of its chain.
    fn subject(&self, prefix: &str) -> String {
        match self.tenant {
            Some(tenant) => format!("{prefix}.events.{tenant}.>"),
            None => format!("{prefix}.events.>"),
        }
    }
}

/// Why a feed ended. The feed retries what can be retried (PostgreSQL for a while, NATS
/// for ever, serving from PostgreSQL meanwhile); an error it yields is the last item of its
/// stream, and the subscriber may subscribe again from the last position it received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// PostgreSQL, the record, failed and kept failing: the feed cannot tell what comes next.
    #[error("the event feed cannot read the log: {0}")]
    Store(#[from] StoreError),
    /// NATS refused the feed's subscription for good (a subject it cannot subscribe to: the
    /// subject prefix is misconfigured).
    #[error("the event feed cannot subscribe to NATS: {0}")]
    Bus(String),
    /// The feed's task ended unexpectedly, or could not start outside a Tokio runtime.
    #[error("the event feed stopped unexpectedly")]
    Stopped,
}

/// How a feed runs.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// The relay's subject prefix: events are on `<prefix>.events.<tenant|platform>.<aggregate>.<event>`.
    pub subject_prefix: String,
    /// Events read from PostgreSQL per round trip; also the most the outbox holds.
    pub page_size: i64,
    /// Live events held while the feed catches up or the subscriber is slow; past it, the
    /// buffer is dropped and the feed catches up from PostgreSQL.
    pub live_buffer: usize,
    /// Events ready in the channel to the subscriber.
    pub channel_capacity: usize,
    /// How long an event may take to arrive live before the feed reads it from PostgreSQL;
    /// while NATS is unreachable, how often the feed polls PostgreSQL.
    pub poll_interval: Duration,
    /// The longest wait for NATS to take a subscription.
    pub bus_timeout: Duration,
    /// Tries of a failing PostgreSQL statement before the feed gives up with an error.
    pub store_attempts: u32,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            subject_prefix: "platform".to_owned(),
            page_size: 256,
            live_buffer: 1024,
            channel_capacity: 64,
            poll_interval: Duration::from_millis(500),
            bus_timeout: Duration::from_secs(1),
            store_attempts: 5,
        }
    }
}

impl FeedConfig {
    /// The default feed over the subjects `relay` publishes to.
    pub fn for_relay(relay: &RelayConfig) -> Self {
        Self {
            subject_prefix: relay.subject_prefix.clone(),
            ..Self::default()
        }
    }
}

/// What the feeds of one [`Feed`] have done, for metrics and tests.
#[derive(Debug, Default)]
pub struct FeedStats {
    live: AtomicU64,
    stored: AtomicU64,
    gaps: AtomicU64,
    overflows: AtomicU64,
    rejected: AtomicU64,
}

impl FeedStats {
    /// Events handed over as they arrived from NATS.
    pub fn live_events(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// Events handed over from PostgreSQL (catch-up, healed gaps, polling).
    pub fn stored_events(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// Live events that did not link to the cursor, so that the feed read PostgreSQL.
    pub fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }

    /// Times a live buffer overflowed and was dropped.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    /// Live messages not used because they did not decode, their hash did not match, or
    /// they were not of the subscribed tenant.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

/// The source of event feeds: one per gateway process, cheap to clone.
#[derive(Clone)]
pub struct Feed {
    reader: LogReader,
    nats: async_nats::Client,
    config: Arc<FeedConfig>,
    stats: Arc<FeedStats>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Feed {
    /// Feeds that read the log through `pool` (the application role) and follow `nats`.
    pub fn new(pool: PgPool, nats: async_nats::Client, config: FeedConfig) -> Self {
        Self {
            reader: LogReader::new(pool),
            nats,
            config: Arc::new(config),
            stats: Arc::default(),
        }
    }

    /// What the feeds have done.
    pub fn stats(&self) -> Arc<FeedStats> {
        Arc::clone(&self.stats)
    }

    /// The events of `scope` whose `global_position` is above `from_position`, in strictly
    /// increasing position order, each once: first those already in the log, then each new
    /// one as it is recorded. The stream runs until it is dropped, or ends after yielding a
    /// [`FeedError`]. Its work starts on the first poll, on a task of its own that stops
    /// when the stream is dropped.
    pub fn subscribe(
        &self,
        scope: Scope,
        from_position: i64,
    ) -> impl Stream<Item = Result<RecordedEvent, FeedError>> + Send + 'static + use<> {
        let capacity = self.config.channel_capacity.max(1);
        let (sender, receiver) = mpsc::channel(capacity);
        let cursor = from_position.max(0);
        let driver = Driver {
            reader: self.reader.clone(),
            nats: self.nats.clone(),
            config: Arc::clone(&self.config),
            stats: Arc::clone(&self.stats),
            subject: scope.subject(&self.config.subject_prefix),
            scope,
            cursor,
            anchor: None,
            known_head: 0,
            seen_head: None,
            catch_up_to: None,
            polling: false,
            outbox: VecDeque::new(),
            live: VecDeque::new(),
            discarding: false,
            subscription: None,
            next_subscribe: Instant::now(),
            subscribe_wait: FIRST_RETRY,
            received: 0,
            degraded: false,
        };
        FeedStream {
            start: Some((driver, sender)),
            receiver,
            task: None,
            done: false,
        }
    }
}

type Item = Result<RecordedEvent, FeedError>;

/// The subscriber's end: a bounded channel from the feed's task, which it starts on its
/// first poll and aborts when dropped.
struct FeedStream {
    start: Option<(Driver, mpsc::Sender<Item>)>,
    receiver: mpsc::Receiver<Item>,
    task: Option<tokio::task::JoinHandle<()>>,
    done: bool,
}

impl Stream for FeedStream {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some((driver, sender)) = this.start.take() {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                this.done = true;
                return Poll::Ready(Some(Err(FeedError::Stopped)));
            };
            let span = tracing::info_span!(
                "event_feed",
                tenant = ?driver.scope.tenant,
                from = driver.cursor
            );
            this.task = Some(runtime.spawn(Box::pin(driver.run(sender)).instrument(span)));
        }
        match this.receiver.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                this.done = item.is_err();
                Poll::Ready(Some(item))
            }
            // The task holds the sender until it has sent its error, or the stream is
            // dropped: a channel that closes under a live stream is a task that died.
            Poll::Ready(None) => {
                this.done = true;
                tracing::error!("event feed: the feed's task ended without a reason");
                Poll::Ready(Some(Err(FeedError::Stopped)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for FeedStream {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// One subscription's state; see the module's documentation for the invariants.
struct Driver {
    reader: LogReader,
    nats: async_nats::Client,
    config: Arc<FeedConfig>,
    stats: Arc<FeedStats>,
    scope: Scope,
    subject: String,
    /// Every event of the scope at or below it has been put in the outbox.
    cursor: i64,
    /// The hash of the last event of the scope's chain (the tenant's, or the whole log's) at
    /// or below the cursor, when known; 32 zero bytes when there is none.
    anchor: Option<Digest32>,
    /// The highest head read from `log_head`: everything at or below it is committed.
    known_head: i64,
    /// The head read at the last tick: what the live feed should have brought by the next.
    seen_head: Option<i64>,
    /// Read PostgreSQL through this position before taking live events.
    catch_up_to: Option<i64>,
    /// The pending catch-up was started by the timer while no live message came.
    polling: bool,
    /// Events for the subscriber, in order, all at or below the cursor.
    outbox: VecDeque<RecordedEvent>,
    /// Live events of the scope's chain, as they arrived.
    live: VecDeque<RecordedEvent>,
    /// The live buffer overflowed: until the outbox is empty, live messages only raise
    /// `catch_up_to`.
    discarding: bool,
    subscription: Option<Subscriber>,
    next_subscribe: Instant,
    subscribe_wait: Duration,
    /// Live messages since the last tick.
    received: u64,
    /// A warning said that the feed is not following NATS.
    degraded: bool,
}

/// What woke the feed's task.
enum Step<'a> {
    Closed,
    Send(Option<mpsc::Permit<'a, Item>>),
    Message(Option<Message>),
    Tick,
}

impl Driver {
    async fn run(mut self, sender: mpsc::Sender<Item>) {
        if let Err(err) = self.drive(&sender).await {
            tracing::warn!("event feed ends: {err}");
            let _ = sender.send(Err(err)).await;
        }
    }

    async fn drive(&mut self, sender: &mpsc::Sender<Item>) -> Result<(), FeedError> {
        // Subscribing before reading the head makes the switch seamless: whatever is
        // published after the catch-up's head is already arriving.
        self.subscribe().await?;
        let head = self.head().await?;
        self.extend_catch_up(head);
        self.seen_head = Some(head);
        let interval = self.config.poll_interval.max(Duration::from_millis(1));
        let mut tick = interval_at(Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            self.advance().await?;
            let step = tokio::select! {
                () = sender.closed() => Step::Closed,
                permit = sender.reserve(), if !self.outbox.is_empty() => Step::Send(permit.ok()),
                message = next_message(self.subscription.as_mut()), if self.subscription.is_some() => {
                    Step::Message(message)
                }
                _ = tick.tick() => Step::Tick,
            };
            match step {
                Step::Closed | Step::Send(None) => return Ok(()),
                Step::Send(Some(permit)) => {
                    if let Some(event) = self.outbox.pop_front() {
                        permit.send(Ok(event));
                    }
                }
                Step::Message(Some(message)) => self.receive(&message),
                Step::Message(None) => {
                    self.subscription = None;
                    self.warn_degraded("the NATS subscription ended");
                }
                Step::Tick => self.tick().await?,
            }
        }
    }

    /// Moves events into the outbox: a page from PostgreSQL while a catch-up is due, else
    /// the live events that link to the cursor, until the outbox holds a page.
    async fn advance(&mut self) -> Result<(), FeedError> {
        let page_size = usize::try_from(self.config.page_size.max(1)).unwrap_or(usize::MAX);
        loop {
            if self.discarding && self.outbox.is_empty() {
                self.discarding = false;
            }
            if self.outbox.len() >= page_size {
                return Ok(());
            }
            if let Some(target) = self.catch_up_to {
                if target <= self.cursor {
                    self.catch_up_to = None;
                    self.polling = false;
                    continue;
                }
                if !self.outbox.is_empty() {
                    return Ok(());
                }
                if self.cursor >= self.known_head {
                    self.head().await?;
                    if self.cursor >= self.known_head {
                        // Only a message from outside this log can name a position that
                        // PostgreSQL has not committed.
                        tracing::warn!(
                            target,
                            head = self.known_head,
                            "event feed: NATS announced a position beyond the log's head; ignoring it"
                        );
                        self.catch_up_to = None;
                        self.polling = false;
                        continue;
                    }
                }
                self.read_page(target.min(self.known_head)).await?;
                continue;
            }
            let Some(event) = self.live.pop_front() else {
                return Ok(());
            };
            self.offer(event).await?;
        }
    }

    /// Hands over a live event if it links to the cursor; else reads up to it from
    /// PostgreSQL.
    async fn offer(&mut self, event: RecordedEvent) -> Result<(), FeedError> {
        let position = event.global_position;
        if position <= self.cursor {
            return Ok(());
        }
        let anchor = self.anchor().await?;
        let link = match self.scope.tenant {
            Some(_) => event.tenant_prev_hash,
            None => event.prev_hash,
        };
        if link != anchor {
            self.stats.gaps.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                position,
                cursor = self.cursor,
                "event feed: a live event does not follow the cursor; reading the log up to it"
            );
            self.extend_catch_up(position);
            return Ok(());
        }
        self.cursor = position;
        self.anchor = Some(event.hash);
        if self.degraded {
            tracing::info!("event feed: following NATS again");
            self.degraded = false;
        }
        if self.scope.matches(&event) {
            self.stats.live.fetch_add(1, Ordering::Relaxed);
            self.outbox.push_back(event);
        }
        Ok(())
    }

    /// Reads the scope's events after the cursor through `to` (at most one page) into the
    /// outbox, and moves the cursor over what the page covers.
    async fn read_page(&mut self, to: i64) -> Result<(), FeedError> {
        let from = self.cursor + 1;
        let limit = self.config.page_size.max(1);
        let filter = self.scope.filter();
        let pool = self.reader.pool();
        let page = retrying(self.config.store_attempts, || {
            read_filtered_page(pool, &filter, from, to, limit)
        })
        .await?;
        let full = i64::try_from(page.len()).unwrap_or(i64::MAX) >= limit;
        let cursor = match page.last() {
            Some(last) if full => last.global_position,
            // A short page: nothing else of the scope up to `to`, which was committed.
            _ => to,
        };
        self.anchor = match (self.scope.tenant, self.scope.has_type_filter()) {
            (_, true) => None,
            // Every event of the tenant in the range was read: its last one is the anchor.
            (Some(_), false) => page.last().map(|event| event.hash).or(self.anchor),
            (None, false) => page
                .last()
                .filter(|event| event.global_position == cursor)
                .map(|event| event.hash),
        };
        if self.polling && !page.is_empty() && !self.degraded {
            tracing::warn!(
                "event feed: events came neither live nor within {:?}; reading them from PostgreSQL (is the relay running?)",
                self.config.poll_interval
            );
            self.degraded = true;
        }
        self.stats
            .stored
            .fetch_add(page.len() as u64, Ordering::Relaxed);
        self.cursor = cursor;
        self.outbox.extend(page);
        Ok(())
    }

    /// Takes one live message into the live buffer, if it is of the scope's chain and above
    /// the cursor.
    fn receive(&mut self, message: &Message) {
        self.received += 1;
        let announced = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(POSITION_HEADER))
            .and_then(|value| value.as_str().parse::<i64>().ok());
        if announced.is_some_and(|position| position <= self.cursor) {
            return;
        }
        if self.discarding {
            if let Some(position) = announced {
                self.extend_catch_up(position);
            }
            return;
        }
        let event = match event_of(&message.payload) {
            Ok(event) => event,
            Err(problem) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    subject = message.subject.as_str(),
                    "event feed: a live message was not used; its event will be read from PostgreSQL: {problem}"
                );
                return;
            }
        };
        if self
            .scope
            .tenant
            .is_some_and(|tenant| event.tenant_id != Some(tenant))
        {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                subject = message.subject.as_str(),
                "event feed: a live message on the tenant's subject holds another tenant's event"
            );
            return;
        }
        let position = event.global_position;
        if position <= self.cursor || self.catch_up_to.is_some_and(|to| position <= to) {
            // PostgreSQL is read up to it anyway.
            return;
        }
        if self.live.len() >= self.config.live_buffer.max(1) {
            self.stats.overflows.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                buffered = self.live.len(),
                "event feed: the live buffer is full; catching up from PostgreSQL"
            );
            self.live.clear();
            self.discarding = true;
            self.extend_catch_up(position);
            return;
        }
        self.live.push_back(event);
    }

    /// Every poll interval: reads the log's head, and catches up to what the live feed
    /// should have brought by now (everything, while NATS is unreachable).
    async fn tick(&mut self) -> Result<(), FeedError> {
        if self.subscription.is_none() && Instant::now() >= self.next_subscribe {
            self.subscribe().await?;
        }
        let head = self.head().await?;
        let following =
            self.subscription.is_some() && matches!(self.nats.connection_state(), State::Connected);
        if !following {
            self.warn_degraded("NATS is unreachable");
        }
        let due = if following {
            self.seen_head
        } else {
            Some(head)
        };
        if let Some(due) = due.filter(|due| *due > self.cursor)
            && self.catch_up_to.is_none_or(|to| to < due)
        {
            self.catch_up_to = Some(due);
            self.polling = following && self.received == 0;
        }
        self.seen_head = Some(head);
        self.received = 0;
        Ok(())
    }

    /// Subscribes to the scope's subjects. A subject NATS can never take ends the feed; any
    /// other failure leaves it on PostgreSQL until a later try.
    async fn subscribe(&mut self) -> Result<(), FeedError> {
        let wait = self.config.bus_timeout;
        match timeout(wait, self.nats.subscribe(self.subject.clone())).await {
            Ok(Ok(subscription)) => {
                // Once the server answers a ping, it holds the interest: what the relay
                // publishes from now on reaches this subscription.
                if !matches!(timeout(wait, self.nats.flush()).await, Ok(Ok(()))) {
                    tracing::debug!("event feed: NATS did not confirm the subscription yet");
                }
                self.subscription = Some(subscription);
                self.subscribe_wait = FIRST_RETRY;
                Ok(())
            }
            Ok(Err(err)) if err.kind() == SubscribeErrorKind::InvalidSubject => Err(
                FeedError::Bus(format!("cannot subscribe to {}: {err}", self.subject)),
            ),
            outcome => {
                let problem = match outcome {
                    Ok(Err(err)) => err.to_string(),
                    _ => format!("no answer within {wait:?}"),
                };
                self.next_subscribe = Instant::now() + self.subscribe_wait;
                self.subscribe_wait = (self.subscribe_wait * 2).min(LAST_RETRY);
                self.warn_degraded(&format!("cannot subscribe to NATS ({problem})"));
                Ok(())
            }
        }
    }

    fn warn_degraded(&mut self, why: &str) {
        if !self.degraded {
            tracing::warn!(
                "event feed: {why}; reading the log from PostgreSQL every {:?}",
                self.config.poll_interval
            );
            self.degraded = true;
        }
    }

    /// The log's head, also remembered as committed.
    async fn head(&mut self) -> Result<i64, FeedError> {
        let reader = &self.reader;
        let head = retrying(self.config.store_attempts, || async {
            reader.head().await.map(|head| head.position)
        })
        .await?;
        self.known_head = self.known_head.max(head);
        Ok(head)
    }

    /// The anchor at the cursor, read from PostgreSQL when it is not known.
    async fn anchor(&mut self) -> Result<Digest32, FeedError> {
        if let Some(anchor) = self.anchor {
            return Ok(anchor);
        }
        let (pool, tenant, at) = (self.reader.pool(), self.scope.tenant, self.cursor);
        let anchor = retrying(self.config.store_attempts, || {
            chain_anchor(pool, tenant, at)
        })
        .await?;
        self.anchor = Some(anchor);
        Ok(anchor)
    }

    fn extend_catch_up(&mut self, to: i64) {
        self.catch_up_to = Some(self.catch_up_to.map_or(to, |current| current.max(to)));
    }
}

/// The next live message, or never without a subscription.
async fn next_message(subscription: Option<&mut Subscriber>) -> Option<Message> {
    match subscription {
        Some(subscription) => subscription.next().await,
        None => std::future::pending().await,
    }
}

const TENANT_ANCHOR: &str = "\
SELECT hash FROM events
 WHERE tenant_id = $1 AND global_position <= $2
 ORDER BY global_position DESC
 LIMIT 1";

const LOG_ANCHOR: &str = "SELECT hash FROM events WHERE global_position = $1";

/// The hash of the last event of `tenant`'s chain (of the whole log for `None`) at or
/// before `at`; 32 zero bytes when there is none.
async fn chain_anchor(
    pool: &PgPool,
    tenant: Option<Uuid>,
    at: i64,
) -> Result<Digest32, StoreError> {
    let hash: Option<Vec<u8>> = match tenant {
        Some(tenant) => {
            sqlx::query_scalar(TENANT_ANCHOR)
                .bind(tenant)
                .bind(at)
                .fetch_optional(pool)
                .await?
        }
        None => {
            sqlx::query_scalar(LOG_ANCHOR)
                .bind(at)
                .fetch_optional(pool)
                .await?
        }
    };
    match hash {
        None => Ok(ZERO_HASH),
        Some(bytes) => Digest32::from_slice(&bytes).ok_or_else(|| StoreError::Corrupt {
            column: "hash",
            problem: format!("holds {} bytes where a SHA-256 digest has 32", bytes.len()),
        }),
    }
}

/// Runs `op`, trying a transient PostgreSQL failure again with backoff, `attempts` tries in
/// all.
async fn retrying<T, F, Fut>(attempts: u32, mut op: F) -> Result<T, FeedError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut wait = FIRST_RETRY;
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(err) if attempt < attempts && is_transient(&err) => {
                tracing::warn!(
                    attempt,
                    "event feed: PostgreSQL failed ({err}); trying again in {wait:?}"
                );
                sleep(wait).await;
                wait = (wait * 2).min(LAST_RETRY);
                attempt += 1;
            }
            Err(err) => return Err(FeedError::Store(err)),
        }
    }
}

/// Whether `err` may go away by itself: a broken or refused connection, an exhausted pool,
/// a server that is shutting down, a serialization failure.
fn is_transient(err: &StoreError) -> bool {
    let StoreError::Database(err) = err else {
        return false;
    };
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["08", "40", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    fn event(tenant: Option<Uuid>, aggregate_type: &str, event_type: &str) -> RecordedEvent {
        RecordedEvent {
            global_position: 1,
            event_id: Uuid::now_v7(),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: "a".to_owned(),
            sequence: 1,
            event_type: event_type.to_owned(),
            event_version: "1".to_owned(),
            tenant_id: tenant,
            recorded_at: Utc::now(),
            payload: json!({}),
            metadata: json!({}),
            prev_hash: ZERO_HASH,
            tenant_prev_hash: ZERO_HASH,
            hash: ZERO_HASH,
        }
    }

    #[test]
    fn a_tenant_scope_matches_the_tenant_column_and_both_type_lists() {
        let (tenant, other) = (Uuid::now_v7(), Uuid::now_v7());
        let scope = Scope::tenant(tenant)
            .with_aggregate_types(["Invoice"])
            .with_event_types(["InvoicePaid", "InvoiceVoided"]);
        assert!(scope.matches(&event(Some(tenant), "Invoice", "InvoicePaid")));
        assert!(!scope.matches(&event(Some(other), "Invoice", "InvoicePaid")));
        assert!(!scope.matches(&event(None, "Invoice", "InvoicePaid")));
        assert!(!scope.matches(&event(Some(tenant), "Ledger", "InvoicePaid")));
        assert!(!scope.matches(&event(Some(tenant), "Invoice", "InvoiceIssued")));
    }

    #[test]
    fn the_operators_scope_matches_every_tenant_and_the_platform() {
        let scope = Scope::everything();
        assert!(scope.matches(&event(Some(Uuid::now_v7()), "Tenant", "TenantCreated")));
        assert!(scope.matches(&event(None, "Tenant", "TenantCreated")));
        assert!(
            !Scope::everything()
                .with_event_types(Vec::<String>::new())
                .matches(&event(None, "Tenant", "TenantCreated"))
        );
    }

    #[test]
    fn a_tenant_follows_its_own_subjects_and_the_operator_every_subject() {
        let tenant = Uuid::nil();
        assert_eq!(
            Scope::tenant(tenant).with_event_types(["X"]).subject("p"),
            "p.events.00000000-0000-0000-0000-000000000000.>"
        );
        assert_eq!(Scope::everything().subject("p"), "p.events.>");
    }
}
