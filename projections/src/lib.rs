//! Projections: named, versioned functions of the ordered event log that build read models.
//!
//! A projection's runner applies events in `global_position` order and stores the last
//! applied position atomically with the effect (in the same PostgreSQL transaction, or in
//! the same Redis Lua call), so
//! that at-least-once delivery yields exactly-once effects. Events at or below the
//! checkpoint are passed over; a batch that does not follow the checkpoint is a gap, healed
//! from the log in PostgreSQL before anything else is applied. An event that keeps failing
//! parks its projection, visibly, until an operator resumes it or skips that event.

pub mod identity;
pub mod identity_hot;
pub mod pg;
pub mod redis;
pub mod runner;

use std::future::Future;
use std::time::Duration;

use eventstore::{LogReader, RecordedEvent};
use futures::TryStreamExt;
use sqlx::PgPool;

pub use pg::{Applied, ApplyError, BatchError, Checkpoint, Parked, PgProjection, Rebuilt, Setup};
pub use redis::{RedisModel, RedisProjection};
pub use runner::{PgRunner, RedisRunner, Runner, RunnerConfig, RunnerStats, wait_for_position};

/// Why a projection could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// PostgreSQL failed.
    #[error("projection database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Reading the log failed.
    #[error(transparent)]
    Log(#[from] eventstore::StoreError),
    /// A name that cannot name a schema.
    #[error(
        "projection name `{0}` must be 1 to 48 lowercase letters, digits or `_`, starting with a letter"
    )]
    BadName(String),
    /// The projection has no checkpoint yet.
    #[error("projection `{0}` is not set up")]
    NotSetUp(String),
    /// NATS JetStream failed.
    #[error("projection bus error: {0}")]
    Bus(String),
    /// Redis failed.
    #[error("projection cache error: {0}")]
    Redis(String),
    /// Redis holds no live model of the projection's version any more.
    #[error(
        "Redis holds no live model of projection `{0}` of this version (Redis lost or flushed it, or another version rebuilt it); it is rebuilt from the log"
    )]
    ModelLost(String),
    /// The projection is parked on a poison event.
    #[error("projection `{name}` is parked on the event at position {}: {}", parked.position, parked.error)]
    Parked {
        /// The projection.
        name: String,
        /// Where and why.
        parked: Parked,
    },
    /// A rebuild failed on an event; the live model is untouched.
    #[error("rebuilding projection `{name}` failed: {problem}")]
    Rebuild {
        /// The projection.
        name: String,
        /// What failed.
        problem: String,
    },
    /// A skip of a position the projection is not parked at.
    #[error(
        "projection `{name}` is not parked at position {position}; only the parked event can be skipped"
    )]
    NotParkedAt {
        /// The projection.
        name: String,
        /// The position asked for.
        position: i64,
    },
}

/// How hard the runner tries an event before it parks the projection.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts per event, the first included.
    pub attempts: u32,
    /// The wait before the second attempt; it doubles for each further one.
    pub first_wait: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_wait: Duration::from_millis(50),
        }
    }
}

/// The part of a batch a model at `position` applies: the events after it, which must
/// follow it without a gap, filtered to those the model `wants` and no operator skipped, with
/// the position the batch ends at. `Err` says what to answer instead: nothing new, or a gap.
pub(crate) fn fresh_part<'a>(
    events: &'a [RecordedEvent],
    position: i64,
    wants: impl Fn(&RecordedEvent) -> bool,
    skipped: &[i64],
) -> Result<(Vec<&'a RecordedEvent>, i64), Applied> {
    let fresh: Vec<&RecordedEvent> = events
        .iter()
        .filter(|event| event.global_position > position)
        .collect();
    let Some(last) = fresh.last().map(|event| event.global_position) else {
        return Err(Applied::Through { position });
    };
    for (expected, event) in (position + 1..).zip(fresh.iter()) {
        if event.global_position != expected {
            return Err(Applied::Gap {
                from: expected,
                to: event.global_position - 1,
            });
        }
    }
    let wanted = fresh
        .into_iter()
        .filter(|event| wants(event) && skipped.binary_search(&event.global_position).is_err())
        .collect();
    Ok((wanted, last))
}

/// Asks `reached` until it says yes, or `timeout` passes; polls often at first, then every
/// 20 ms. Returns whether it got there.
pub(crate) async fn poll_until<F>(
    timeout: Duration,
    mut reached: impl FnMut() -> F,
) -> Result<bool, ProjectionError>
where
    F: Future<Output = Result<bool, ProjectionError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut wait = Duration::from_millis(1);
    loop {
        if reached().await? {
            return Ok(true);
        }
        if tokio::time::Instant::now() + wait > deadline {
            return Ok(false);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(20));
    }
}

/// A read model a runner drives: where it stands, and a batch applied together with its
/// checkpoint, atomically. PostgreSQL models ([`pg::PgTarget`]) and Redis models
/// ([`redis::RedisModel`]) are targets; parking and skips are recorded in PostgreSQL for both,
/// so an operator sees and handles every projection the same way.
pub trait Target: Send + Sync {
    /// The projection's name.
    fn name(&self) -> &'static str;

    /// The database holding the log, the checkpoints' records and the parking records.
    fn pool(&self) -> &PgPool;

    /// Creates the model if it is missing, and rebuilds it from the log if it was built by
    /// another version of the projection (or, for a cache, was lost).
    fn prepare(
        &self,
        reader: &LogReader,
        page: i64,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;

    /// Where the model stands.
    fn checkpoint(&self) -> impl Future<Output = Result<Checkpoint, ProjectionError>> + Send;

    /// Applies `events` (in position order) with the checkpoint, all or nothing. Events at or
    /// below the checkpoint are passed over; a batch that does not follow it is a gap.
    fn apply_batch(
        &self,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<Applied, BatchError>> + Send;
}

/// Applies a batch; when the projection fails on it, tries its events one at a time, each
/// up to `retry.attempts` times, and parks the projection on the first event that keeps
/// failing. Every event before that one is applied.
pub async fn apply_or_park<P: PgProjection>(
    pool: &PgPool,
    projection: &P,
    events: &[RecordedEvent],
    retry: Retry,
) -> Result<Applied, ProjectionError> {
    apply_or_park_on(&pg::PgRef::new(pool, projection), events, retry).await
}

/// [`apply_or_park`] on any target.
pub async fn apply_or_park_on<T: Target + ?Sized>(
    target: &T,
    events: &[RecordedEvent],
    retry: Retry,
) -> Result<Applied, ProjectionError> {
    match target.apply_batch(events).await {
        Ok(applied) => return Ok(applied),
        Err(BatchError::Store(err)) => return Err(err),
        Err(BatchError::Apply(err)) => {
            tracing::warn!(
                projection = target.name(),
                "a batch failed ({err}); trying its events one at a time"
            );
        }
    }
    let mut applied = Applied::Through { position: 0 };
    for event in events {
        let mut wait = retry.first_wait;
        let mut attempt = 1;
        loop {
            match target.apply_batch(std::slice::from_ref(event)).await {
                Ok(Applied::Through { position }) => {
                    applied = Applied::Through { position };
                    break;
                }
                Ok(other) => return Ok(other),
                Err(BatchError::Store(err)) => return Err(err),
                Err(BatchError::Apply(err)) if attempt >= retry.attempts.max(1) => {
                    let error = err.to_string();
                    tracing::error!(
                        projection = target.name(),
                        position = event.global_position,
                        "parking the projection: the event failed {attempt} times: {error}"
                    );
                    pg::park(target.pool(), target.name(), event.global_position, &error).await?;
                    return Ok(Applied::Parked(Parked {
                        position: event.global_position,
                        error,
                    }));
                }
                Err(BatchError::Apply(_)) => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
            }
        }
    }
    Ok(applied)
}

/// Applies the log from the checkpoint through `to` (or the head of the log), reading
/// PostgreSQL a page at a time. Returns what the last batch did.
pub async fn catch_up<P: PgProjection>(
    pool: &PgPool,
    projection: &P,
    reader: &LogReader,
    to: Option<i64>,
    page: i64,
    retry: Retry,
) -> Result<Applied, ProjectionError> {
    catch_up_on(&pg::PgRef::new(pool, projection), reader, to, page, retry).await
}

/// [`catch_up`] on any target.
pub async fn catch_up_on<T: Target + ?Sized>(
    target: &T,
    reader: &LogReader,
    to: Option<i64>,
    page: i64,
    retry: Retry,
) -> Result<Applied, ProjectionError> {
    let to = match to {
        Some(to) => to,
        None => reader.head().await?.position,
    };
    loop {
        let checkpoint = target.checkpoint().await?;
        if let Some(parked) = checkpoint.parked {
            return Ok(Applied::Parked(parked));
        }
        if checkpoint.position >= to {
            return Ok(Applied::Through {
                position: checkpoint.position,
            });
        }
        let last = to.min(checkpoint.position.saturating_add(page.max(1)));
        let events: Vec<RecordedEvent> = reader
            .read_range(checkpoint.position + 1, last)
            .try_collect()
            .await?;
        match apply_or_park_on(target, &events, retry).await? {
            Applied::Through { .. } => {}
            other => return Ok(other),
        }
    }
}
