//! Concurrent writers: every accepted event lands exactly once, positions and sequences stay
//! gap-free, contested sequences have exactly one winner, and the chain verifies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use commands::CommandMetadata;
use cqrs_es::AggregateError;
use domain::ActorKind;
use eventstore::{AppendError, platform_cqrs};
use tests::TestDb;
use tests::example::{Wallet, WalletCommand, WalletError};
use uuid::Uuid;

use crate::{append, assert_log_invariants};

const TASKS: usize = 50;
const COMMANDS_PER_TASK: usize = 40;
const AGGREGATES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_writers_on_twenty_aggregates_land_every_accepted_event_exactly_once() {
    let db = TestDb::new().await;
    // Two appenders over one database, as two processes would run them: the head lock must
    // order their batches too.
    let stores = [db.store(), db.store()];
    let cqrs: Vec<_> = stores
        .iter()
        .map(|store| {
            Arc::new(platform_cqrs::<Wallet>(
                store.repository.clone(),
                vec![],
                (),
            ))
        })
        .collect();
    let tenants = [
        Some(Uuid::now_v7()),
        Some(Uuid::now_v7()),
        Some(Uuid::now_v7()),
        None,
    ];
    let tenant_of = move |aggregate: usize| tenants[aggregate % tenants.len()];
    let metadata = move |aggregate: usize| {
        CommandMetadata::new("writer", ActorKind::System, tenant_of(aggregate)).to_map()
    };

    for aggregate in 0..AGGREGATES {
        cqrs[0]
            .execute_with_metadata(
                &format!("wallet-{aggregate}"),
                WalletCommand::Open {
                    owner: format!("owner {aggregate}"),
                },
                metadata(aggregate),
            )
            .await
            .unwrap();
    }

    let mut writers = Vec::new();
    for task in 0..TASKS {
        let cqrs = Arc::clone(&cqrs[task % cqrs.len()]);
        writers.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut conflicts = 0;
            for command in 0..COMMANDS_PER_TASK {
                let aggregate = (task * 7 + command * 3) % AGGREGATES;
                // Every deposit's amount is unique, so the log can be checked against it.
                let amount = (task * 1000 + command + 1) as i64;
                match cqrs
                    .execute_with_metadata(
                        &format!("wallet-{aggregate}"),
                        WalletCommand::Deposit { amount },
                        metadata(aggregate),
                    )
                    .await
                {
                    Ok(()) => accepted.push((aggregate, amount)),
                    Err(AggregateError::AggregateConflict) => conflicts += 1,
                    Err(other) => panic!("command failed: {other}"),
                }
            }
            (accepted, conflicts)
        }));
    }
    let mut accepted: BTreeMap<i64, usize> = BTreeMap::new();
    let mut conflicts = 0;
    for writer in writers {
        let (mine, refused) = writer.await.unwrap();
        conflicts += refused;
        for (aggregate, amount) in mine {
            assert!(accepted.insert(amount, aggregate).is_none());
        }
    }
    assert_eq!(accepted.len() + conflicts, TASKS * COMMANDS_PER_TASK);

    // Every accepted deposit is in the log exactly once, on its own aggregate, with its
    // tenant; nothing else is.
    let deposits: Vec<(i64, String, Option<Uuid>)> = sqlx::query_as(
        "SELECT (payload->'Deposited'->>'amount')::bigint, aggregate_id, tenant_id
           FROM events WHERE event_type = 'MoneyDeposited'",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(deposits.len(), accepted.len(), "deposits in the log");
    let mut seen = BTreeSet::new();
    for (amount, aggregate_id, tenant) in &deposits {
        assert!(seen.insert(*amount), "deposit {amount} is in the log twice");
        let aggregate = accepted[amount];
        assert_eq!(aggregate_id, &format!("wallet-{aggregate}"));
        assert_eq!(*tenant, tenant_of(aggregate));
    }

    let total = assert_log_invariants(&db.app).await;
    assert_eq!(total as usize, AGGREGATES + accepted.len());

    // Each wallet's state, rebuilt from the log, is the sum of its accepted deposits.
    for aggregate in 0..AGGREGATES {
        let expected: i64 = accepted
            .iter()
            .filter(|(_, a)| **a == aggregate)
            .map(|(amount, _)| amount)
            .sum();
        let balance: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum((payload->'Deposited'->>'amount')::bigint), 0)::bigint
               FROM events WHERE aggregate_id = $1",
        )
        .bind(format!("wallet-{aggregate}"))
        .fetch_one(&db.app)
        .await
        .unwrap();
        assert_eq!(balance, expected, "wallet-{aggregate}");
        // The command path sees the same state: withdrawing one more than it holds fails.
        let err = cqrs[1]
            .execute(
                &format!("wallet-{aggregate}"),
                WalletCommand::Withdraw {
                    amount: expected + 1,
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, AggregateError::UserError(WalletError::InsufficientFunds { balance, .. }) if balance == expected),
            "{err:?}"
        );
    }

    let report = stores[0].reader.verify(1, None).await.unwrap();
    assert!(report.is_intact(), "{:?}", report.fault);
    assert_eq!(report.verified as i64, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_contested_sequence_is_won_by_exactly_one_writer() {
    let db = TestDb::new().await;
    let stores = [db.store(), db.store()];
    for round in 0..10_usize {
        let contenders: Vec<_> = (0..8)
            .map(|i| {
                let repository = stores[i % 2].repository.clone();
                tokio::spawn(async move {
                    append(&repository, "ledger-1", round * 2 + 1, 2, None).await
                })
            })
            .collect();
        let mut winners = 0;
        for contender in contenders {
            match contender.await.unwrap() {
                Ok(_) => winners += 1,
                Err(AppendError::Conflict {
                    expected, actual, ..
                }) => {
                    assert_eq!(expected, (round * 2) as i64);
                    assert_eq!(actual, (round * 2 + 2) as i64);
                }
                Err(other) => panic!("unexpected failure: {other}"),
            }
        }
        // The next round builds on the winner's two events.
        assert_eq!(winners, 1, "round {round}");
    }
    assert_eq!(assert_log_invariants(&db.app).await, 20);
}

#[tokio::test]
async fn a_stale_append_fails_alone_and_the_rest_of_its_batch_commits() {
    let db = TestDb::new().await;
    let store = db.store();
    let repository = &store.repository;
    append(repository, "ledger-stale", 1, 1, None)
        .await
        .unwrap();

    // Hold the head lock so that the appender queues everything sent meanwhile into one
    // batch.
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

    let mut batch = Vec::new();
    for i in 0..20 {
        let repository = repository.clone();
        batch.push(tokio::spawn(async move {
            append(&repository, &format!("ledger-{i}"), 1, 2, None).await
        }));
    }
    let stale = {
        let repository = repository.clone();
        // Sequence 1 of ledger-stale exists: this append is based on a stale state.
        tokio::spawn(async move { append(&repository, "ledger-stale", 1, 1, None).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while repository.appender().queued() < 21 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "appends did not queue"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    blocker.rollback().await.unwrap();

    first.await.unwrap().unwrap();
    let stale = stale.await.unwrap().unwrap_err();
    assert!(
        matches!(
            stale,
            AppendError::Conflict {
                expected: 0,
                actual: 1,
                ..
            }
        ),
        "{stale}"
    );
    let mut positions = Vec::new();
    for append in batch {
        let receipt = append.await.unwrap().unwrap();
        positions.push((receipt.first_position, receipt.last_position));
    }
    // The twenty appends committed together: one transaction, one record time.
    let batch_times: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT recorded_at) FROM events WHERE aggregate_id LIKE 'ledger-%' AND aggregate_id NOT IN ('ledger-stale', 'ledger-first')",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(batch_times, 1);
    positions.sort_unstable();
    for pair in positions.windows(2) {
        assert_eq!(pair[0].1 + 1, pair[1].0, "positions are not contiguous");
    }
    assert_eq!(assert_log_invariants(&db.app).await, 1 + 1 + 40);
    assert!(store.reader.verify(1, None).await.unwrap().is_intact());
}
