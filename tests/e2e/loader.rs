//! The group loader: concurrent aggregate loads are read with few queries, each load gets
//! exactly its own aggregate's events after its own sequence, and a broken connection is
//! replaced without failing the load.

use eventstore::{LoadError, Loader, LoaderConfig};
use tests::TestDb;

use crate::append;

/// Aggregate `ledger-{i}` holds `i % 7` events (so some hold none), appended in rounds so
/// that aggregates interleave in the log.
async fn fill(db: &TestDb, aggregates: usize) {
    let store = db.store();
    for round in 1..7 {
        for i in 0..aggregates {
            if i % 7 >= round {
                append(&store.repository, &format!("ledger-{i}"), round, 1, None)
                    .await
                    .unwrap();
            }
        }
    }
}

/// Checks one load's answer: the events of `ledger-{i}` after `after`, in sequence order.
fn check(i: usize, after: usize, events: &[cqrs_es::persist::SerializedEvent]) {
    let id = format!("ledger-{i}");
    let expected: Vec<usize> = (after + 1..=i % 7).collect();
    let sequences: Vec<usize> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, expected, "{id} after {after}");
    for event in events {
        assert_eq!(event.aggregate_id, id);
        assert_eq!(event.aggregate_type, "Ledger");
        assert_eq!(
            event.payload["entry"],
            format!("{id}#{}", event.sequence),
            "{id} got another aggregate's payload"
        );
    }
}

#[tokio::test]
async fn concurrent_loads_share_queries_and_each_gets_exactly_its_own_events() {
    let db = TestDb::new().await;
    fill(&db, 40).await;
    // One connection, so that loads queue behind the query in flight and are batched.
    let (loader, _task) = Loader::spawn(
        &db.app,
        LoaderConfig {
            connections: 1,
            max_batch: 16,
            queue_capacity: 1024,
        },
    );
    // Every aggregate, from every starting sequence, and some aggregates that do not exist;
    // the same aggregate appears many times in one batch.
    let mut requests = Vec::new();
    for i in 0..40 {
        for after in 0..7 {
            requests.push((i, after));
        }
    }
    let loads = requests.iter().map(|&(i, after)| {
        let loader = loader.clone();
        async move {
            let events = loader
                .load("Ledger", &format!("ledger-{i}"), after as i64)
                .await
                .unwrap();
            (i, after, events)
        }
    });
    for (i, after, events) in futures::future::join_all(loads).await {
        check(i, after.min(i % 7), &events);
    }
    let missing = loader.load("Ledger", "no-such-ledger", 0).await.unwrap();
    assert!(missing.is_empty());
    let other_type = loader.load("Account", "ledger-6", 0).await.unwrap();
    assert!(
        other_type.is_empty(),
        "a load matched another aggregate type"
    );

    let stats = loader.stats();
    assert_eq!(stats.requests, requests.len() as u64 + 2);
    // 280 concurrent loads through one connection with batches of at most 16.
    assert!(
        stats.queries < stats.requests / 4,
        "loads were not batched: {stats:?}"
    );
    assert!(stats.queries >= (requests.len() as u64).div_ceil(16));
}

#[tokio::test]
async fn a_load_sees_every_append_that_committed_before_it() {
    let db = TestDb::new().await;
    let store = db.store();
    let (loader, _task) = Loader::spawn(&db.app, LoaderConfig::default());
    for sequence in 1..=20 {
        append(&store.repository, "ledger-1", sequence, 1, None)
            .await
            .unwrap();
        let events = loader.load("Ledger", "ledger-1", 0).await.unwrap();
        assert_eq!(events.len(), sequence, "the load missed a committed append");
    }
}

#[tokio::test]
async fn a_broken_loader_connection_is_replaced_without_failing_the_load() {
    let db = TestDb::new().await;
    fill(&db, 7).await;
    let (loader, _task) = Loader::spawn(&db.app, LoaderConfig::default());
    check(6, 0, &loader.load("Ledger", "ledger-6", 0).await.unwrap());

    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = $1",
    )
    .bind(eventstore::loader::APPLICATION_NAME)
    .fetch_all(&db.admin)
    .await
    .unwrap();
    assert!(!ended.is_empty() && ended.iter().all(|&ok| ok));

    for _ in 0..3 {
        check(6, 2, &loader.load("Ledger", "ledger-6", 2).await.unwrap());
    }
}

#[tokio::test]
async fn a_stopped_loader_says_so() {
    let db = TestDb::new().await;
    let (loader, task) = Loader::spawn(&db.app, LoaderConfig::default());
    task.abort();
    task.join().await;
    match loader.load("Ledger", "ledger-1", 0).await {
        Err(LoadError::Stopped) => {}
        other => panic!("expected LoadError::Stopped, got {other:?}"),
    }
}
