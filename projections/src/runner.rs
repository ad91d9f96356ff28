//! The projection runner: one durable JetStream pull consumer per projection, batches
//! applied with their checkpoint, gaps healed from the log, poison events parked.
//!
//! The bus is transport, not the record. The runner therefore trusts positions, not
//! delivery: a message at or below the checkpoint is passed over, a message beyond the next
//! position means the bus lost or reordered something and the missing events are read from
//! PostgreSQL, and an idle runner compares its checkpoint with the head of the log and
//! catches up from PostgreSQL (a lost stream, a flushed cache, a relay that is behind). A
//! message whose envelope does not decode, or whose hash does not match its canonical
//! bytes, is never applied; its event arrives again from PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, Message};
use eventstore::{LogReader, RecordedEvent};
use futures::{FutureExt as _, StreamExt as _};
use prost::Message as _;
use proto::v1::EventEnvelope;
use sqlx::PgPool;
use tokio::time::sleep;

use crate::pg::{self, PgProjection, PgTarget};
use crate::redis::RedisModel;
use crate::{Applied, ProjectionError, Retry, Target, apply_or_park_on, catch_up_on};

/// The wait before a runner tries again after its first failure; it doubles with each
/// failure that follows, up to [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The longest wait between a runner's tries.
const LAST_RETRY: Duration = Duration::from_secs(5);

/// How a projection runner runs.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The subject prefix the relay publishes under.
    pub subject_prefix: String,
    /// The JetStream stream.
    pub stream: String,
    /// The most messages applied in one transaction.
    pub batch: usize,
    /// Events read from PostgreSQL per transaction when catching up.
    pub page: i64,
    /// How long the runner waits for a message before it checks the log's head.
    pub idle: Duration,
    /// How hard an event is tried before its projection is parked.
    pub retry: Retry,
    /// How long JetStream waits for an ack before it redelivers.
    pub ack_wait: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            subject_prefix: "platform".to_owned(),
            stream: "PLATFORM_EVENTS".to_owned(),
            batch: 512,
            page: 2000,
            idle: Duration::from_secs(1),
            retry: Retry::default(),
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// What a runner has done, for metrics, status lines and tests.
#[derive(Debug, Default)]
pub struct RunnerStats {
    position: AtomicI64,
    delivered: AtomicU64,
    healed: AtomicU64,
    rejected: AtomicU64,
    parked: AtomicBool,
}

impl RunnerStats {
    /// The checkpoint as the runner last saw it.
    pub fn position(&self) -> i64 {
        self.position.load(Ordering::Relaxed)
    }

    /// Messages received from the bus.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Times the runner read missing events from PostgreSQL.
    pub fn healed(&self) -> u64 {
        self.healed.load(Ordering::Relaxed)
    }

    /// Messages not applied because they did not decode or their hash did not match.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Whether the projection is parked on a poison event.
    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Relaxed)
    }
}

/// The durable consumer's name for a projection.
pub fn consumer_name(config: &RunnerConfig, projection: &str) -> String {
    format!("{}_projection_{projection}", config.subject_prefix)
}

/// The event an envelope carries, if it decodes and its hash matches its canonical bytes.
pub fn event_of(payload: &[u8]) -> Result<RecordedEvent, String> {
    let envelope = EventEnvelope::decode(payload).map_err(|err| err.to_string())?;
    envelope.verify_hash().map_err(|err| err.to_string())?;
    let record = envelope.to_record().map_err(|err| err.to_string())?;
    Ok(RecordedEvent::from(record))
}

/// A runner for one projection: follows the bus and applies it to the projection's model.
pub struct Runner<T> {
    reader: LogReader,
    jetstream: jetstream::Context,
    target: Arc<T>,
    config: RunnerConfig,
    stats: Arc<RunnerStats>,
}

/// A runner for one PostgreSQL projection.
pub type PgRunner<P> = Runner<PgTarget<P>>;

/// A runner for one Redis projection.
pub type RedisRunner<P> = Runner<RedisModel<P>>;

impl<T> std::fmt::Debug for Runner<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<P: PgProjection> Runner<PgTarget<P>> {
    /// A runner applying `projection` to the read models in `pool`.
    pub fn new(
        pool: PgPool,
        nats: async_nats::Client,
        projection: P,
        config: RunnerConfig,
    ) -> Self {
        let reader = LogReader::new(pool.clone());
        Self::on(reader, nats, PgTarget::new(pool, projection), config)
    }
}

impl<T: Target + 'static> Runner<T> {
    /// A runner applying the log, read with `reader`, to `target`.
    pub fn on(
        reader: LogReader,
        nats: async_nats::Client,
        target: T,
        config: RunnerConfig,
    ) -> Self {
        Self {
            reader,
            jetstream: jetstream::new(nats),
            target: Arc::new(target),
            config,
            stats: Arc::default(),
        }
    }

    /// What the runner has done.
    pub fn stats(&self) -> Arc<RunnerStats> {
        Arc::clone(&self.stats)
    }

    /// The model the runner applies the log to.
    pub fn target(&self) -> Arc<T> {
        Arc::clone(&self.target)
    }

    /// Sets the projection up (rebuilding it if its version changed or its model was lost),
    /// catches up from PostgreSQL, then follows the bus until `shutdown` completes. Failures
    /// of NATS, Redis or PostgreSQL are retried; they never end the runner.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let mut wait = FIRST_RETRY;
        loop {
            let started = tokio::time::Instant::now();
            tokio::select! {
                () = &mut shutdown => return,
                result = self.follow() => {
                    // A runner that followed for a while before it failed starts its backoff
                    // over: the failure is new, not the last of a series.
                    if started.elapsed() > LAST_RETRY * 4 {
                        wait = FIRST_RETRY;
                    }
                    match result {
                        Err(ProjectionError::Parked { parked, .. }) => {
                            self.note(&Applied::Parked(parked));
                        }
                        Err(err) => {
                            tracing::warn!(projection = self.target.name(), "projection runner: {err}; trying again");
                        }
                        Ok(()) => {}
                    }
                    sleep(wait).await;
                    wait = (wait * 2).min(LAST_RETRY);
                }
            }
        }
    }

    /// Catches up from PostgreSQL through `to` (or the head); records whether it parked.
    async fn heal(&self, to: Option<i64>) -> Result<Applied, ProjectionError> {
        self.stats.healed.fetch_add(1, Ordering::Relaxed);
        let applied = catch_up_on(
            self.target.as_ref(),
            &self.reader,
            to,
            self.config.page,
            self.config.retry,
        )
        .await?;
        self.note(&applied);
        Ok(applied)
    }

    fn note(&self, applied: &Applied) {
        match applied {
            Applied::Through { position } => {
                self.stats.position.store(*position, Ordering::Relaxed);
                self.stats.parked.store(false, Ordering::Relaxed);
            }
            Applied::Parked(parked) => {
                self.stats.parked.store(true, Ordering::Relaxed);
                tracing::error!(
                    projection = self.target.name(),
                    position = parked.position,
                    "projection parked on a poison event: {}",
                    parked.error
                );
            }
            Applied::Gap { .. } => {}
        }
    }

    async fn follow(&self) -> Result<(), ProjectionError> {
        self.target.prepare(&self.reader, self.config.page).await?;
        self.heal(None).await?;
        let stream = self
            .jetstream
            .get_stream(&self.config.stream)
            .await
            .map_err(|err| ProjectionError::Bus(err.to_string()))?;
        let name = consumer_name(&self.config, self.target.name());
        let consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: format!("{}.events.>", self.config.subject_prefix),
                    // Everything before now was just read from PostgreSQL.
                    deliver_policy: DeliverPolicy::New,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.config.ack_wait,
                    max_ack_pending: i64::try_from(self.config.batch * 4).unwrap_or(i64::MAX),
                    ..pull::Config::default()
                },
            )
            .await
            .map_err(|err| ProjectionError::Bus(err.to_string()))?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(self.config.batch)
            .messages()
            .await
            .map_err(|err| ProjectionError::Bus(err.to_string()))?;
        loop {
            if self.stats.is_parked() {
                // Nothing is applied until an operator resumes the projection or skips the
                // event; messages stay unacknowledged and come back later.
                sleep(self.config.idle).await;
                self.heal(None).await?;
                continue;
            }
            let first = tokio::time::timeout(self.config.idle, messages.next()).await;
            let mut batch: Vec<Message> = Vec::new();
            match first {
                Err(_idle) => {
                    self.heal(None).await?;
                    // A deleted stream takes the consumer with it, and a pull on a consumer
                    // that is gone may simply stay quiet: look, and start over if it is gone.
                    if let Err(err) = consumer.get_info().await {
                        return Err(ProjectionError::Bus(format!(
                            "the consumer {name} is gone ({err}); creating it again"
                        )));
                    }
                    continue;
                }
                Ok(None) => return Err(ProjectionError::Bus("the consumer's stream ended".into())),
                Ok(Some(Err(err))) => return Err(ProjectionError::Bus(err.to_string())),
                Ok(Some(Ok(message))) => batch.push(message),
            }
            while batch.len() < self.config.batch {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    _ => break,
                }
            }
            self.apply_messages(batch).await?;
        }
    }

    async fn apply_messages(&self, batch: Vec<Message>) -> Result<(), ProjectionError> {
        self.stats
            .delivered
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut events = Vec::with_capacity(batch.len());
        for message in &batch {
            match event_of(&message.payload) {
                Ok(event) => events.push(event),
                Err(problem) => {
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        projection = self.target.name(),
                        subject = message.subject.as_str(),
                        "a message was not applied; its event will be read from PostgreSQL: {problem}"
                    );
                }
            }
        }
        events.sort_by_key(|event| event.global_position);
        events.dedup_by_key(|event| event.global_position);
        let mut applied =
            apply_or_park_on(self.target.as_ref(), &events, self.config.retry).await?;
        if let Applied::Gap { to, .. } = applied {
            self.heal(Some(to)).await?;
            applied = apply_or_park_on(self.target.as_ref(), &events, self.config.retry).await?;
        }
        self.note(&applied);
        if matches!(applied, Applied::Through { .. }) {
            for message in &batch {
                if let Err(err) = message.ack().await {
                    // The checkpoint already holds the effect: a redelivery is passed over.
                    tracing::debug!("ack failed: {err}");
                }
            }
        }
        Ok(())
    }
}

/// Waits until the projection `name` has applied `position`, or `timeout` passes. Returns
/// whether it got there: a command's caller reads its own writes this way.
pub async fn wait_for_position(
    pool: &PgPool,
    name: &str,
    position: i64,
    timeout: Duration,
) -> Result<bool, ProjectionError> {
    crate::poll_until(timeout, || async {
        Ok(pg::checkpoint(pool, name)
            .await?
            .is_some_and(|checkpoint| checkpoint.position >= position))
    })
    .await
}
