//! The platform's end-to-end tests: one binary, one module per feature, each test against
//! the real local services in a database of its own. The helpers here serve more than one
//! feature: events to append, the log's length, head and invariants, the rows of a query,
//! waiting until something holds, and a relay and a projection runner on the test's stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod atomicity;
mod audit;
mod bus;
mod bus_faults;
mod checkpoints;
mod concurrency;
mod cqrs_compat;
mod identity;
mod identity_hot;
mod identity_models;
mod identity_props;
mod interleavings;
mod key_usage;
mod loader;
mod multi_aggregate;
mod projections;
mod reader;
mod relay;
mod service_accounts;
mod shredding;
mod subject_keys;
mod tampering;

use std::sync::Arc;
use std::time::Duration;

use ::projections::{Retry, RunnerConfig};
use cqrs_es::persist::SerializedEvent;
use eventstore::{
    AppendError, AppendReceipt, EventRepository, LogReader, ProtoEncoder, Relay, RelayConfig,
    RelayStats,
};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgRow;
use tests::{TestBus, TestDb};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Builds `count` events for one aggregate, from `first_sequence`, each with a payload that
/// names it uniquely.
pub fn events(
    aggregate_id: &str,
    first_sequence: usize,
    count: usize,
    tenant: Option<Uuid>,
) -> Vec<SerializedEvent> {
    let metadata = match tenant {
        Some(tenant) => {
            json!({"actor_id": "test", "actor_kind": "system", "tenant_id": tenant.to_string()})
        }
        None => json!({"actor_id": "test", "actor_kind": "system"}),
    };
    (0..count)
        .map(|i| {
            SerializedEvent::new(
                aggregate_id.to_owned(),
                first_sequence + i,
                "Ledger".to_owned(),
                "EntryRecorded".to_owned(),
                "1".to_owned(),
                json!({"entry": format!("{aggregate_id}#{}", first_sequence + i), "amount": 100 + i}),
                metadata.clone(),
            )
        })
        .collect()
}

/// Appends `count` events to one aggregate through the repository's append path.
pub async fn append(
    repository: &EventRepository,
    aggregate_id: &str,
    first_sequence: usize,
    count: usize,
    tenant: Option<Uuid>,
) -> Result<AppendReceipt, AppendError> {
    repository
        .append(&events(aggregate_id, first_sequence, count, tenant), None)
        .await
        .map(|receipt| receipt.expect("a non-empty append has a receipt"))
}

/// The log's structural invariants: positions are exactly 1..=N, every aggregate's sequences
/// are exactly 1..=k, the head names the last event, and record times never decrease along
/// the log. Returns N.
pub async fn assert_log_invariants(pool: &PgPool) -> i64 {
    let (count, min, max): (i64, Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT count(*), min(global_position), max(global_position) FROM events")
            .fetch_one(pool)
            .await
            .unwrap();
    if count > 0 {
        assert_eq!(
            (min, max),
            (Some(1), Some(count)),
            "positions are not 1..={count}"
        );
    }
    let broken: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, count(*), min(sequence), max(sequence)
           FROM events GROUP BY aggregate_type, aggregate_id
         HAVING min(sequence) <> 1 OR max(sequence) <> count(*)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        broken.is_empty(),
        "aggregates with sequence gaps: {broken:?}"
    );
    let head: i64 = sqlx::query_scalar("SELECT position FROM log_head")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(head, count, "the log head is not at the last position");
    let backwards: Vec<i64> = sqlx::query_scalar(
        "SELECT global_position FROM (
             SELECT global_position, recorded_at < lag(recorded_at) OVER (ORDER BY global_position) AS back
               FROM events) t
          WHERE back",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        backwards.is_empty(),
        "events recorded before the event preceding them: {backwards:?}"
    );
    count
}

/// The position of the log's last event; 0 when the log is empty.
pub async fn head(db: &TestDb) -> i64 {
    LogReader::new(db.app.clone())
        .head()
        .await
        .unwrap()
        .position
}

/// How many events the log holds.
pub async fn events_in_log(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.app)
        .await
        .unwrap()
}

/// The rows `sql` selects, collected as the caller asks (a `Vec`, a `BTreeSet`).
pub async fn rows<T, C>(pool: &PgPool, sql: &str) -> C
where
    T: Send + Unpin + for<'r> sqlx::FromRow<'r, PgRow>,
    C: FromIterator<T>,
{
    sqlx::query_as(sql)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Waits until `done` holds, failing after a generous bound so that a broken relay or
/// runner ends the test instead of hanging it.
pub async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..1200 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Starts a relay over `nats` on a task of its own; aborting the task kills the relay as a
/// crash would.
pub fn spawn_relay(
    db: &TestDb,
    nats: async_nats::Client,
    config: RelayConfig,
) -> (JoinHandle<()>, Arc<RelayStats>) {
    let relay = Relay::new(db.app.clone(), nats, config, ProtoEncoder);
    let stats = relay.stats();
    (tokio::spawn(relay.run(std::future::pending())), stats)
}

/// Waits until the relay behind `stats` has acked every position through `head`, and
/// asserts that the stream holds each of them once, in order.
pub async fn assert_relayed(bus: &TestBus, stats: &RelayStats, head: i64) {
    until(&format!("the relay acked position {head}"), async || {
        stats.acked_position() == head
    })
    .await;
    assert_eq!(
        bus.positions(&bus.stream).await,
        (1..=head).collect::<Vec<_>>()
    );
}

/// A projection runner's configuration on the test's stream and subject prefix; with no
/// message for `idle`, the runner looks at the log's head.
pub fn runner_config(bus: &TestBus, idle: Duration) -> RunnerConfig {
    RunnerConfig {
        subject_prefix: bus.prefix.clone(),
        stream: bus.stream.clone(),
        idle,
        ..RunnerConfig::default()
    }
}

/// `attempts` tries per event, the first wait a millisecond: a poison event parks within
/// moments.
pub fn quick_retry(attempts: u32) -> Retry {
    Retry {
        attempts,
        first_wait: Duration::from_millis(1),
    }
}
