//! Property: random interleavings of concurrent appends, some of them stale, from two
//! appenders, keep the log's invariants: gap-free positions and sequences, exactly one
//! winner per contested sequence, stale appends refused, receipts that name exactly the
//! events written, and a chain that verifies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use eventstore::AppendError;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tests::TestDb;
use uuid::Uuid;

use crate::{append, assert_log_invariants};

#[derive(Debug, Clone)]
struct Op {
    aggregate: usize,
    count: usize,
    stale: bool,
}

fn rounds() -> impl Strategy<Value = Vec<Vec<Op>>> {
    let op = (0..4_usize, 1..4_usize, prop::bool::weighted(0.2)).prop_map(
        |(aggregate, count, stale)| Op {
            aggregate,
            count,
            stale,
        },
    );
    prop::collection::vec(prop::collection::vec(op, 1..8), 1..5)
}

#[test]
fn random_interleavings_of_appends_keep_the_invariants() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(TestDb::new());
    let stores = runtime.block_on(async { [db.store(), db.store()] });
    let tenants = [Some(Uuid::now_v7()), Some(Uuid::now_v7()), None];
    let run = AtomicUsize::new(0);

    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    runner
        .run(&rounds(), |rounds| {
            let case = run.fetch_add(1, Ordering::SeqCst);
            runtime.block_on(async {
                let mut next: HashMap<usize, usize> = HashMap::new();
                for ops in rounds {
                    let mut pending = Vec::new();
                    for (i, op) in ops.iter().enumerate() {
                        let current = *next.get(&op.aggregate).unwrap_or(&1);
                        let stale = op.stale && current > 1;
                        let first = if stale { current - 1 } else { current };
                        let repository = stores[i % 2].repository.clone();
                        let id = format!("case{case}-agg{}", op.aggregate);
                        let tenant = tenants[op.aggregate % tenants.len()];
                        let count = op.count;
                        pending.push((
                            op.clone(),
                            stale,
                            first,
                            tokio::spawn(async move {
                                append(&repository, &id, first, count, tenant).await
                            }),
                        ));
                    }
                    let mut winners: HashMap<usize, usize> = HashMap::new();
                    let mut contested: HashMap<usize, bool> = HashMap::new();
                    for (op, stale, first, handle) in pending {
                        *contested.entry(op.aggregate).or_default() |= !stale;
                        match handle.await.unwrap() {
                            Ok(receipt) => {
                                assert!(!stale, "a stale append was accepted: {op:?}");
                                assert_eq!(
                                    receipt.last_position - receipt.first_position + 1,
                                    op.count as i64
                                );
                                // The receipt names exactly this append's events.
                                let rows: Vec<(String, i64)> = sqlx::query_as(
                                    "SELECT aggregate_id, sequence FROM events
                                      WHERE global_position BETWEEN $1 AND $2
                                      ORDER BY global_position",
                                )
                                .bind(receipt.first_position)
                                .bind(receipt.last_position)
                                .fetch_all(&db.app)
                                .await
                                .unwrap();
                                let expected: Vec<(String, i64)> = (0..op.count)
                                    .map(|k| {
                                        (
                                            format!("case{case}-agg{}", op.aggregate),
                                            (first + k) as i64,
                                        )
                                    })
                                    .collect();
                                assert_eq!(rows, expected);
                                *winners.entry(op.aggregate).or_default() += 1;
                                next.insert(op.aggregate, first + op.count);
                            }
                            Err(AppendError::Conflict { .. }) => {}
                            Err(other) => panic!("unexpected failure: {other}"),
                        }
                    }
                    // An aggregate with a current append has exactly one winner; one with only
                    // stale appends has none.
                    for (aggregate, had_current) in contested {
                        let expected = usize::from(had_current);
                        assert_eq!(
                            winners.get(&aggregate).copied().unwrap_or(0),
                            expected,
                            "winners on aggregate {aggregate}"
                        );
                    }
                }
                assert_log_invariants(&db.app).await;
                let report = stores[case % 2].reader.verify(1, None).await.unwrap();
                assert!(report.is_intact(), "{:?}", report.fault);
            });
            Ok(())
        })
        .unwrap();
}
