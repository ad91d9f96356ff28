//! Whether an answer read a moment ago from the read models still holds.
//!
//! The gateway keeps what it read for a request (a caller's verified credential and
//! permissions, a query's answer) for a moment, so that the next identical request is
//! answered without the round trips to Redis and PostgreSQL. Such an entry is stamped, before
//! its reads, with its tenant's **generation**; it is served only while that generation is
//! unchanged. A tenant's generation moves whenever an event of the tenant may change what the
//! read models show:
//!
//! 1. **When the event is published.** A core NATS subscription to `<prefix>.events.>` sees
//!    each event as the relay publishes it, before any projection applies it, and moves the
//!    tenant's generation at once.
//! 2. **When the read models have applied it.** An entry filled between (1) and the moment
//!    the projections commit the event read the models before it, so the generation moves
//!    again once both identity models (the PostgreSQL `identity` checkpoint and the live Redis
//!    `identity_hot` model) stand at or past the event's position. They are polled every
//!    [`POLL`] while events wait for them.
//! 3. **When this gateway waited for its own write** (`consistency: STRONG`), so that the
//!    caller's next read sees it.
//!
//! Anything that could hide an event moves every generation at once (a new **epoch**), now
//! and again once the models stand at the log position it concerns: the subscription going
//! live (again: at the log's head then), a gap in the positions it sees (a message NATS
//! dropped), a message without a position, an event of no tenant (platform-level), and more
//! events waiting for the models than are remembered. The subscription ending, the
//! connection dropping or reconnecting (checked every [`CONNECTION_CHECK`]) makes it not live:
//! while it is not, no stamp is given, so nothing is remembered and nothing remembered is
//! served. The models themselves are watched too: a checkpoint that moves back or changes
//! version (a replay, a rebuild), or a Redis model that appears or disappears (Redis lost and
//! rebuilt), moves every generation.
//!
//! What no event announces is not seen: a change to the read models made by hand, or the
//! projections applying, while catching up after a start, events the relay has not published
//! yet (seen once it does). Every entry therefore also expires after a time to live counted
//! from its stamp, whatever happens.
//!
//! Generations are kept in a fixed table of counters indexed by a hash of the tenant id: two
//! tenants that share a counter only invalidate each other's entries more often. Memory is
//! constant, and reading a stamp is three atomic loads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use eventstore::relay::POSITION_HEADER;
use futures::StreamExt as _;
use projections::identity_hot::IdentityHot;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

/// How many generation counters there are (a power of two).
const SLOTS: usize = 4096;

/// How often the read models' positions are read while published events wait for them.
pub const POLL: Duration = Duration::from_millis(10);

/// How often the read models' checkpoints are read when no event waits, to see a replay or a
/// rebuild.
const WATCH: Duration = Duration::from_secs(1);

/// How often the NATS connection's state is checked.
const CONNECTION_CHECK: Duration = Duration::from_millis(100);

/// The most published events remembered while they wait for the read models; past it, the
/// whole cache is dropped once the models reach the last of them.
const MAX_WAITING: usize = 100_000;

/// The PostgreSQL identity model's checkpoint name.
const IDENTITY_CHECKPOINT: &str = "identity";

/// A tenant's generation when an entry's reads began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    epoch: u64,
    slot: usize,
    generation: u64,
    taken: Instant,
}

impl Stamp {
    /// How long ago the stamp was taken: an entry's age counts from before its reads.
    pub fn age(&self) -> Duration {
        self.taken.elapsed()
    }
}

/// An event the read models have not applied yet: its position, and the counter to move
/// once they have (`None`: every counter).
type Waiting = (i64, Option<usize>);

struct Inner {
    slots: Box<[AtomicU64]>,
    epoch: AtomicU64,
    /// Moves with every change of any generation or of the epoch.
    changes: AtomicU64,
    live: AtomicBool,
    waiting: Mutex<VecDeque<Waiting>>,
    arrived: Notify,
}

/// The generations of every tenant, shared by every clone.
#[derive(Clone)]
pub struct Freshness {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Freshness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Freshness")
            .field("live", &self.is_live())
            .field("epoch", &self.inner.epoch.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl Default for Freshness {
    fn default() -> Self {
        Self::new()
    }
}

fn slot_of(tenant: Uuid) -> usize {
    let (high, low) = tenant.as_u64_pair();
    // The low half of a v4 or v7 id is random; the high half adds the time of a v7.
    ((high ^ low ^ (low >> 32)) as usize) & (SLOTS - 1)
}

impl Freshness {
    /// Generations that are not live yet: no stamp is given until [`Freshness::spawn`]'s
    /// subscription is.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
                epoch: AtomicU64::new(0),
                changes: AtomicU64::new(0),
                live: AtomicBool::new(false),
                waiting: Mutex::new(VecDeque::new()),
                arrived: Notify::new(),
            }),
        }
    }

    /// Whether changes are being followed, so that entries may be filled and served.
    pub fn is_live(&self) -> bool {
        self.inner.live.load(Ordering::Acquire)
    }

    /// The tenant's generation now, to stamp an entry with before its reads; `None` while
    /// changes are not followed.
    pub fn stamp(&self, tenant: Uuid) -> Option<Stamp> {
        if !self.is_live() {
            return None;
        }
        let slot = slot_of(tenant);
        Some(Stamp {
            epoch: self.inner.epoch.load(Ordering::Acquire),
            slot,
            generation: self.inner.slots[slot].load(Ordering::Acquire),
            taken: Instant::now(),
        })
    }

    /// Whether an entry stamped `stamp` still holds.
    pub fn holds(&self, stamp: &Stamp) -> bool {
        self.is_live()
            && self.inner.epoch.load(Ordering::Acquire) == stamp.epoch
            && self.inner.slots[stamp.slot].load(Ordering::Acquire) == stamp.generation
    }

    /// A counter of every change: equal before and after some reads, it proves that no
    /// generation moved in between (for an entry whose tenant is known only after its reads).
    pub fn changes(&self) -> u64 {
        self.inner.changes.load(Ordering::Acquire)
    }

    /// The tenant's data may have changed: its entries no longer hold.
    pub fn changed(&self, tenant: Uuid) {
        self.move_slot(slot_of(tenant));
    }

    // `changes` moves first: whoever reads it unchanged after reading a stamp read the stamp
    // before the move.
    fn move_slot(&self, slot: usize) {
        self.inner.changes.fetch_add(1, Ordering::AcqRel);
        self.inner.slots[slot].fetch_add(1, Ordering::AcqRel);
    }

    /// Anything may have changed: no entry holds.
    pub fn reset(&self) {
        self.inner.changes.fetch_add(1, Ordering::AcqRel);
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn set_live(&self, live: bool) {
        if live {
            // Whatever happened while changes were not followed is unknown.
            self.reset();
        }
        self.inner.live.store(live, Ordering::Release);
        if !live {
            self.reset();
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// An event was published: its tenant changes now, and again once the models have it.
    fn published(&self, position: i64, tenant: Option<Uuid>) {
        let slot = tenant.map(slot_of);
        match tenant {
            Some(tenant) => self.changed(tenant),
            None => self.reset(),
        }
        {
            let mut waiting = self.waiting();
            if waiting.len() >= MAX_WAITING {
                waiting.clear();
                waiting.push_back((position, None));
            } else {
                waiting.push_back((position, slot));
            }
        }
        self.inner.arrived.notify_one();
    }

    /// The models stand at `reached`: the events they have applied change their tenants
    /// again. Returns whether events still wait.
    fn applied(&self, reached: i64) -> bool {
        let mut waiting = self.waiting();
        while let Some(&(position, slot)) = waiting.front() {
            if position > reached {
                break;
            }
            waiting.pop_front();
            match slot {
                Some(slot) => self.move_slot(slot),
                None => self.reset(),
            }
        }
        !waiting.is_empty()
    }

    /// Follows the events published under `subject_prefix` and the identity models' positions,
    /// until the returned tasks are aborted.
    pub fn spawn(
        &self,
        nats: async_nats::Client,
        subject_prefix: &str,
        pool: PgPool,
        hot: IdentityHot,
    ) -> FreshnessTasks {
        let follow = tokio::spawn(follow(
            self.clone(),
            nats,
            subject_prefix.to_owned(),
            pool.clone(),
        ));
        let models = tokio::spawn(watch_models(self.clone(), pool, hot));
        FreshnessTasks {
            freshness: self.clone(),
            follow,
            models,
        }
    }
}

/// The tasks that keep [`Freshness`] current; dropping this stops them and makes it not live.
#[derive(Debug)]
pub struct FreshnessTasks {
    freshness: Freshness,
    follow: tokio::task::JoinHandle<()>,
    models: tokio::task::JoinHandle<()>,
}

impl Drop for FreshnessTasks {
    fn drop(&mut self) {
        self.follow.abort();
        self.models.abort();
        self.freshness.set_live(false);
    }
}

/// The log's head position.
async fn log_head(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT position FROM log_head")
        .fetch_one(pool)
        .await
}

/// The tenant of an event's subject `<prefix>.events.<tenant|platform>.<type>.<event>`:
/// `Some(None)` for a platform-level event, `None` for a subject of another shape.
fn tenant_of(subject: &str, events_prefix: &str) -> Option<Option<Uuid>> {
    let scope = subject.strip_prefix(events_prefix)?.split('.').next()?;
    if scope == "platform" {
        return Some(None);
    }
    Uuid::parse_str(scope).ok().map(Some)
}

/// Follows published events; on any loss of the subscription the cache is not live until a
/// new subscription is.
async fn follow(
    freshness: Freshness,
    nats: async_nats::Client,
    subject_prefix: String,
    pool: PgPool,
) {
    let events_prefix = format!("{subject_prefix}.events.");
    let subject = format!("{subject_prefix}.events.>");
    let mut retry = Duration::from_millis(100);
    loop {
        freshness.set_live(false);
        let mut subscriber = match nats.subscribe(subject.clone()).await {
            Ok(subscriber) => subscriber,
            Err(err) => {
                tracing::warn!("freshness: cannot subscribe to {subject}: {err}; trying again");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        // The subscription is registered once the server has seen it.
        if let Err(err) = nats.flush().await {
            tracing::warn!("freshness: NATS did not confirm the subscription: {err}");
            tokio::time::sleep(retry).await;
            continue;
        }
        // Events published before the subscription are unknown: everything is new now, and
        // again once the models stand at the head the log has now.
        let head = match log_head(&pool).await {
            Ok(head) => head,
            Err(err) => {
                tracing::warn!("freshness: cannot read the log's head: {err}");
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        retry = Duration::from_millis(100);
        let connects = nats.statistics().connects.load(Ordering::Relaxed);
        freshness.set_live(true);
        freshness.published(head, None);
        let mut last: Option<i64> = None;
        let mut check = tokio::time::interval(CONNECTION_CHECK);
        loop {
            tokio::select! {
                message = subscriber.next() => {
                    let Some(message) = message else { break };
                    let position = message
                        .headers
                        .as_ref()
                        .and_then(|headers| headers.get(POSITION_HEADER))
                        .and_then(|value| value.as_str().parse::<i64>().ok());
                    let tenant = tenant_of(message.subject.as_str(), &events_prefix);
                    let (Some(position), Some(tenant)) = (position, tenant) else {
                        // Which event this was is unknown: anything may have changed, up to
                        // the log's head.
                        let head = log_head(&pool).await.ok().or(last).unwrap_or(0);
                        freshness.published(head, None);
                        continue;
                    };
                    if last.is_some_and(|last| position > last + 1) {
                        // NATS dropped what lies between: anything may have changed, up to
                        // this event.
                        freshness.published(position, None);
                    }
                    last = Some(last.map_or(position, |last| last.max(position)));
                    freshness.published(position, tenant);
                }
                _ = check.tick() => {
                    // A reconnect between two checks may have lost messages too.
                    if nats.connection_state() != State::Connected
                        || nats.statistics().connects.load(Ordering::Relaxed) != connects
                    {
                        break;
                    }
                }
            }
        }
        freshness.set_live(false);
        while nats.connection_state() != State::Connected {
            tokio::time::sleep(CONNECTION_CHECK).await;
        }
    }
}

/// Where the identity models stood at one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Models {
    /// The PostgreSQL model's version and position.
    pg: Option<(i32, i64)>,
    /// The live Redis model's position; `None` without a live model (credentials are then
    /// checked in PostgreSQL and the log).
    hot: Option<i64>,
}

impl Models {
    async fn look(pool: &PgPool, hot: &IdentityHot) -> Option<Self> {
        let pg = match projections::pg::checkpoint(pool, IDENTITY_CHECKPOINT).await {
            Ok(checkpoint) => {
                checkpoint.map(|checkpoint| (checkpoint.version, checkpoint.position))
            }
            Err(err) => {
                tracing::debug!("freshness: cannot read the identity checkpoint: {err}");
                return None;
            }
        };
        let hot = match hot.position().await {
            Ok(position) => position,
            Err(err) => {
                tracing::debug!("freshness: cannot read the identity hot model: {err}");
                return None;
            }
        };
        Some(Self { pg, hot })
    }

    /// The position both models have reached.
    fn reached(&self) -> i64 {
        let pg = self.pg.map_or(0, |(_, position)| position);
        self.hot.map_or(pg, |hot| pg.min(hot))
    }

    /// Whether the models changed otherwise than by applying events: a checkpoint that moved
    /// back or changed version, a Redis model that appeared or disappeared.
    fn remade_since(&self, before: &Self) -> bool {
        let back = |now: Option<i64>, then: Option<i64>| {
            now.zip(then).is_some_and(|(now, then)| now < then)
        };
        self.pg.map(|(version, _)| version) != before.pg.map(|(version, _)| version)
            || back(self.pg.map(|(_, p)| p), before.pg.map(|(_, p)| p))
            || self.hot.is_some() != before.hot.is_some()
            || back(self.hot, before.hot)
    }
}

/// Moves the generations of events the identity models have applied, and every generation
/// when the models are remade.
async fn watch_models(freshness: Freshness, pool: PgPool, hot: IdentityHot) {
    let mut before: Option<Models> = None;
    let mut waiting = false;
    loop {
        if waiting {
            tokio::time::sleep(POLL).await;
        } else {
            // An event published wakes the watch at once; otherwise it looks every `WATCH`.
            let _ = tokio::time::timeout(WATCH, freshness.inner.arrived.notified()).await;
        }
        let Some(models) = Models::look(&pool, &hot).await else {
            waiting = true;
            continue;
        };
        if before.is_some_and(|before| models.remade_since(&before)) {
            freshness.reset();
        }
        before = Some(models);
        waiting = freshness.applied(models.reached());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Freshness {
        let freshness = Freshness::new();
        freshness.set_live(true);
        freshness
    }

    #[test]
    fn nothing_is_stamped_or_holds_while_changes_are_not_followed() {
        let freshness = Freshness::new();
        assert_eq!(freshness.stamp(Uuid::now_v7()), None);
        let freshness = live();
        let stamp = freshness.stamp(Uuid::now_v7());
        assert!(stamp.is_some_and(|stamp| freshness.holds(&stamp)));
        freshness.set_live(false);
        assert!(stamp.is_some_and(|stamp| !freshness.holds(&stamp)));
    }

    #[test]
    fn an_event_of_a_tenant_moves_its_generation_when_published_and_when_applied() {
        let freshness = live();
        let (tenant, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_ne!(slot_of(tenant), slot_of(other));
        let before = freshness.stamp(tenant).unwrap();
        let untouched = freshness.stamp(other).unwrap();
        freshness.published(7, Some(tenant));
        assert!(!freshness.holds(&before));
        assert!(freshness.holds(&untouched));
        // Filled after the publication but before the models applied the event.
        let between = freshness.stamp(tenant).unwrap();
        assert!(freshness.applied(6), "position 7 still waits at 6");
        assert!(freshness.holds(&between));
        assert!(!freshness.applied(7));
        assert!(!freshness.holds(&between));
        assert!(freshness.holds(&untouched));
    }

    #[test]
    fn a_platform_event_and_a_reset_move_every_generation() {
        let freshness = live();
        let tenant = Uuid::now_v7();
        let stamp = freshness.stamp(tenant).unwrap();
        freshness.published(1, None);
        assert!(!freshness.holds(&stamp));
        let stamp = freshness.stamp(tenant).unwrap();
        let changes = freshness.changes();
        freshness.reset();
        assert!(!freshness.holds(&stamp));
        assert_ne!(freshness.changes(), changes);
    }

    #[test]
    fn a_replay_a_rebuild_or_a_lost_redis_model_is_a_remade_model() {
        let at = |version, pg, hot| Models {
            pg: Some((version, pg)),
            hot,
        };
        let before = at(3, 100, Some(90));
        assert!(
            !at(3, 120, Some(120)).remade_since(&before),
            "events applied"
        );
        assert!(
            at(3, 50, Some(120)).remade_since(&before),
            "a replay to a position"
        );
        assert!(at(4, 100, Some(90)).remade_since(&before), "a new version");
        assert!(at(3, 100, None).remade_since(&before), "Redis lost");
        assert!(
            at(3, 100, Some(90)).remade_since(&at(3, 100, None)),
            "Redis rebuilt"
        );
        assert!(at(3, 100, Some(10)).remade_since(&before), "Redis behind");
        assert_eq!(at(3, 100, Some(90)).reached(), 90);
        assert_eq!(at(3, 100, None).reached(), 100);
    }

    #[test]
    fn the_tenant_is_read_from_the_subject() {
        let tenant = Uuid::now_v7();
        let prefix = "t1.events.";
        assert_eq!(
            tenant_of(&format!("t1.events.{tenant}.Tenant.TenantRenamed"), prefix),
            Some(Some(tenant))
        );
        assert_eq!(
            tenant_of("t1.events.platform.EmailClaim.Claimed", prefix),
            Some(None)
        );
        assert_eq!(tenant_of("t1.events.nonsense.X.Y", prefix), None);
        assert_eq!(tenant_of("t2.events.platform.X.Y", prefix), None);
    }
}
