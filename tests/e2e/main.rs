//! The platform's end-to-end tests: one binary, one module per feature, each test against
//! the real local services in a database of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod atomicity;
mod bus;
mod bus_faults;
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
mod subject_keys;
mod tampering;

use cqrs_es::persist::SerializedEvent;
use eventstore::{AppendError, AppendReceipt, EventRepository};
use serde_json::json;
use sqlx::PgPool;
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
/// are exactly 1..=k, and the head names the last event. Returns N.
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
    count
}
