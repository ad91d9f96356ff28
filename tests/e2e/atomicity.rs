//! All-or-nothing: an append that fails inside its transaction leaves nothing behind, and the
//! store carries on.

use std::time::Duration;

use eventstore::AppendError;
use tests::TestDb;
use uuid::Uuid;

use crate::{append, assert_log_invariants, events};

/// Waits until one of the application role's connections is waiting for a lock, and returns
/// its backend pid.
pub async fn wait_for_blocked_appender(db: &TestDb) -> i32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = $1 AND usename = 'platform_app' AND wait_event_type = 'Lock'
              LIMIT 1",
        )
        .bind(&db.name)
        .fetch_optional(&db.admin)
        .await
        .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the appender never blocked on the test's lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn count_of(db: &TestDb, aggregate_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(aggregate_id)
        .fetch_one(&db.admin)
        .await
        .unwrap()
}

/// Holds, uncommitted, a row that takes the place of `ledger-b`'s third event, so that an
/// append of `ledger-b` 1..=3 stops in the middle of its insert, after its first events and
/// the log head were written, and waits for this transaction.
async fn hold_the_third_event_of_ledger_b(
    db: &TestDb,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut blocker = db.admin.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (global_position, event_id, aggregate_type, aggregate_id, sequence,
                             event_type, event_version, tenant_id, recorded_at, payload, metadata,
                             prev_hash, tenant_prev_hash, hash)
         VALUES (1000000, gen_random_uuid(), 'Ledger', 'ledger-b', 3, 'Blocker', '1', NULL, now(),
                 '{}', '{}', decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex'),
                 decode(repeat('00', 32), 'hex'))",
    )
    .execute(&mut *blocker)
    .await
    .unwrap();
    blocker
}

async fn backend_state(db: &TestDb, pid: i32) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_optional(&db.admin)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_inside_the_transaction_leaves_nothing_behind() {
    let db = TestDb::new().await;
    let store = db.store();
    let tenant = Uuid::now_v7();
    append(&store.repository, "ledger-a", 1, 1, Some(tenant))
        .await
        .unwrap();

    let blocker = hold_the_third_event_of_ledger_b(&db).await;
    let pending = {
        let repository = store.repository.clone();
        tokio::spawn(async move { append(&repository, "ledger-b", 1, 3, Some(tenant)).await })
    };
    let pid = wait_for_blocked_appender(&db).await;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&db.admin)
        .await
        .unwrap();
    assert!(killed);
    blocker.rollback().await.unwrap();

    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, AppendError::Unavailable(_)), "{err}");
    assert_eq!(count_of(&db, "ledger-b").await, 0);
    assert_eq!(assert_log_invariants(&db.admin).await, 1);

    // The appender carries on with a new connection, and the log stays gap-free.
    let receipt = append(&store.repository, "ledger-b", 1, 3, Some(tenant))
        .await
        .unwrap();
    assert_eq!((receipt.first_position, receipt.last_position), (2, 4));
    assert!(store.reader.verify(1, None).await.unwrap().is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_appender_leaves_nothing_behind() {
    let db = TestDb::new().await;
    let store = db.store();
    let tenant = Uuid::now_v7();
    append(&store.repository, "ledger-a", 1, 1, Some(tenant))
        .await
        .unwrap();

    let blocker = hold_the_third_event_of_ledger_b(&db).await;
    let pending = {
        let repository = store.repository.clone();
        tokio::spawn(async move { append(&repository, "ledger-b", 1, 3, Some(tenant)).await })
    };
    let pid = wait_for_blocked_appender(&db).await;
    store.task.abort();
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, AppendError::Stopped), "{err}");

    // The server notices that the appender is gone and ends its statement, although the
    // statement is still waiting for the test's lock: it never gets to commit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Some(state) = backend_state(&db, pid).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backend {pid} stayed {state}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    blocker.rollback().await.unwrap();
    assert_eq!(count_of(&db, "ledger-b").await, 0);
    assert_eq!(assert_log_invariants(&db.admin).await, 1);

    // A stopped appender refuses clearly; a new one continues the log without a gap.
    let err = append(&store.repository, "ledger-b", 1, 1, Some(tenant))
        .await
        .unwrap_err();
    assert!(matches!(err, AppendError::Stopped), "{err}");
    let restarted = db.store();
    let receipt = append(&restarted.repository, "ledger-b", 1, 3, Some(tenant))
        .await
        .unwrap();
    assert_eq!(receipt.first_position, 2);
    assert!(restarted.reader.verify(1, None).await.unwrap().is_intact());
}

#[tokio::test]
async fn an_append_with_one_bad_event_writes_none_of_them() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut batch = events("ledger-c", 1, 3, None);
    batch[2].payload = serde_json::json!({"note": "nul \u{0} inside"});
    let err = store.repository.append(&batch, None).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot append: payload.note: contains the NUL character U+0000, which PostgreSQL cannot store"
    );
    batch[2].payload = serde_json::json!({"amount": 9_007_199_254_740_993_u64});
    let err = store.repository.append(&batch, None).await.unwrap_err();
    assert!(err.to_string().contains("payload.amount"), "{err}");
    assert_eq!(count_of(&db, "ledger-c").await, 0);

    let mut gap = events("ledger-c", 1, 3, None);
    gap[1].sequence = 5;
    let err = store.repository.append(&gap, None).await.unwrap_err();
    assert!(err.to_string().contains("consecutive"), "{err}");

    let mut tenant = events("ledger-c", 1, 1, None);
    tenant[0].metadata = serde_json::json!({"tenant_id": "acme"});
    let err = store.repository.append(&tenant, None).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot append: metadata `tenant_id` is not a UUID: \"acme\""
    );

    tenant[0].metadata = serde_json::json!({"tenant_id": Uuid::nil().to_string()});
    let err = store.repository.append(&tenant, None).await.unwrap_err();
    assert!(err.to_string().contains("nil UUID"), "{err}");

    let mut deep = serde_json::json!("bottom");
    for _ in 0..200 {
        deep = serde_json::json!([deep]);
    }
    let mut nested = events("ledger-c", 1, 1, None);
    nested[0].payload = deep;
    let err = store.repository.append(&nested, None).await.unwrap_err();
    assert!(err.to_string().contains("deeper than 64 levels"), "{err}");
    assert_eq!(assert_log_invariants(&db.admin).await, 0);
}
