//! Commands that write several aggregates: all of their appends commit together or none
//! does, so an invariant that spans aggregates (one user per email address) survives races.

use std::time::Duration;

use eventstore::AppendError;
use tests::TestDb;
use uuid::Uuid;

use crate::{append, assert_log_invariants, events};

#[tokio::test]
async fn a_command_on_several_aggregates_commits_every_append_at_consecutive_positions() {
    let db = TestDb::new().await;
    let store = db.store();
    append(&store.repository, "ledger-0", 1, 2, None)
        .await
        .unwrap();
    let (tenant_a, tenant_b) = (Uuid::now_v7(), Uuid::now_v7());
    let user = events("user-1", 1, 2, Some(tenant_a));
    let claim = events("claim-1", 1, 1, Some(tenant_a));
    let other = events("ledger-0", 3, 1, Some(tenant_b));
    let receipts = store
        .repository
        .append_all(&[&user, &claim, &other])
        .await
        .unwrap();
    let ranges: Vec<(i64, i64)> = receipts
        .iter()
        .map(|r| (r.first_position, r.last_position))
        .collect();
    assert_eq!(ranges, vec![(3, 4), (5, 5), (6, 6)]);
    let times: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT recorded_at) FROM events WHERE global_position BETWEEN 3 AND 6",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(times, 1, "the command's appends were not one transaction");
    assert_eq!(assert_log_invariants(&db.app).await, 6);
    assert!(store.reader.verify(1, None).await.unwrap().is_intact());
}

#[tokio::test]
async fn a_command_with_one_stale_aggregate_writes_nothing_and_its_batch_commits() {
    let db = TestDb::new().await;
    let store = db.store();
    let repository = &store.repository;
    append(repository, "claim-taken", 1, 1, None).await.unwrap();

    // Hold the head lock so that everything sent meanwhile queues into one batch.
    let mut blocker = db.admin.begin().await.unwrap();
    sqlx::query("SELECT position FROM log_head FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let first = {
        let repository = repository.clone();
        tokio::spawn(async move { append(&repository, "ledger-first", 1, 1, None).await })
    };
    crate::atomicity::wait_for_blocked_appender(&db).await;
    let mut others = Vec::new();
    for i in 0..10 {
        let repository = repository.clone();
        others.push(tokio::spawn(async move {
            append(&repository, &format!("ledger-{i}"), 1, 2, None).await
        }));
    }
    let doomed = {
        let repository = repository.clone();
        tokio::spawn(async move {
            let user = events("user-new", 1, 2, None);
            // Sequence 1 of claim-taken exists: the command decided on a stale state.
            let claim = events("claim-taken", 1, 1, None);
            repository.append_all(&[&user, &claim]).await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while repository.appender().queued() < 11 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "appends did not queue"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    blocker.rollback().await.unwrap();

    first.await.unwrap().unwrap();
    match doomed.await.unwrap() {
        Err(AppendError::Conflict {
            aggregate_id,
            expected: 0,
            actual: 1,
            ..
        }) => assert_eq!(aggregate_id, "claim-taken"),
        other => panic!("expected a conflict on claim-taken, got {other:?}"),
    }
    for other in others {
        other.await.unwrap().unwrap();
    }
    let user_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = 'user-new'")
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(user_events, 0, "half of the failed command was written");
    assert_eq!(assert_log_invariants(&db.app).await, 1 + 1 + 20);
    assert!(store.reader.verify(1, None).await.unwrap().is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_many_commands_claiming_one_aggregate_at_once_exactly_one_wins_whole() {
    let db = TestDb::new().await;
    // Two appenders, as two processes would have.
    let stores = [db.store(), db.store()];
    let mut racers = Vec::new();
    for i in 0..24 {
        let repository = stores[i % 2].repository.clone();
        racers.push(tokio::spawn(async move {
            let user = events(&format!("user-{i}"), 1, 2, None);
            let claim = events("claim-shared", 1, 1, None);
            repository.append_all(&[&user, &claim]).await
        }));
    }
    let mut winners = Vec::new();
    for (i, racer) in racers.into_iter().enumerate() {
        match racer.await.unwrap() {
            Ok(receipts) => winners.push((i, receipts)),
            Err(AppendError::Conflict { aggregate_id, .. }) => {
                assert_eq!(aggregate_id, "claim-shared");
            }
            Err(other) => panic!("racer {i} failed with {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT aggregate_id FROM events WHERE aggregate_id LIKE 'user-%'",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(users, vec![format!("user-{}", winners[0].0)]);
    assert_eq!(assert_log_invariants(&db.app).await, 3);
    assert!(stores[0].reader.verify(1, None).await.unwrap().is_intact());
}

#[tokio::test]
async fn a_command_that_names_one_aggregate_twice_or_none_is_refused() {
    let db = TestDb::new().await;
    let store = db.store();
    let first = events("user-1", 1, 1, None);
    let again = events("user-1", 2, 1, None);
    match store.repository.append_all(&[&first, &again]).await {
        Err(AppendError::Invalid(message)) => {
            assert!(message.contains("Ledger/user-1 twice"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match store.repository.append_all(&[]).await {
        Err(AppendError::Invalid(message)) => {
            assert!(message.contains("at least one event"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(assert_log_invariants(&db.app).await, 0);
}
