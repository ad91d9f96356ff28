//! The last use of API keys: gathered in memory, written in batches outside the event log,
//! only ever moving forward, and never lost to a failed write.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use eventstore::KeyUsage;
use tests::TestDb;
use uuid::Uuid;

fn at(second: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + second, 0).unwrap()
}

async fn events(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.app)
        .await
        .unwrap()
}

#[tokio::test]
async fn many_uses_of_a_key_become_one_row_with_the_latest_time_and_no_event() {
    let db = TestDb::new().await;
    let usage = KeyUsage::new(db.app.clone());
    let (key, other, tenant) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for second in [5, 9, 2, 7] {
        usage.record(key, tenant, at(second));
    }
    usage.record(other, tenant, at(1));
    assert_eq!(usage.pending(), 2);
    assert_eq!(usage.flush().await.unwrap(), 2);
    assert_eq!(usage.pending(), 0);
    assert_eq!(
        usage.flush().await.unwrap(),
        0,
        "a second flush wrote again"
    );

    let written = usage.last_use(key).await.unwrap().unwrap();
    assert_eq!(written.last_used_at, at(9));
    assert_eq!(written.uses, 4);
    assert_eq!(written.tenant_id, tenant);
    assert_eq!(events(&db).await, 0, "a use was written as an event");

    // A flush from a process that saw only an older use does not move the time back.
    let lagging = KeyUsage::new(db.app.clone());
    lagging.record(key, tenant, at(3));
    lagging.flush().await.unwrap();
    let written = usage.last_use(key).await.unwrap().unwrap();
    assert_eq!(written.last_used_at, at(9));
    assert_eq!(written.uses, 5);
    assert_eq!(usage.last_use(Uuid::now_v7()).await.unwrap(), None);
}

#[tokio::test]
async fn uses_survive_a_failed_write_and_are_flushed_when_the_flusher_stops() {
    let db = TestDb::new().await;
    let (key, tenant) = (Uuid::now_v7(), Uuid::now_v7());

    // A pool that cannot write (the table is locked away from it) keeps what it gathered.
    sqlx::query("REVOKE INSERT, UPDATE ON api_key_usage FROM platform_app")
        .execute(&db.admin)
        .await
        .unwrap();
    let usage = KeyUsage::new(db.app.clone());
    usage.record(key, tenant, at(1));
    assert!(usage.flush().await.is_err());
    assert_eq!(usage.pending(), 1);
    usage.record(key, tenant, at(4));
    sqlx::query("GRANT INSERT, UPDATE ON api_key_usage TO platform_app")
        .execute(&db.admin)
        .await
        .unwrap();

    // The flusher's interval is far away; stopping it still writes everything.
    let task = usage.spawn_flusher(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(usage.pending(), 1, "the flusher wrote before its interval");
    usage.record(key, tenant, at(6));
    task.stop().await;
    assert_eq!(usage.pending(), 0);
    let written = usage.last_use(key).await.unwrap().unwrap();
    assert_eq!((written.last_used_at, written.uses), (at(6), 3));
}
