//! The global reader: the log in order, from any position, a page at a time, and a tailing
//! reader that never skips an event while writers commit.

use std::time::Duration;

use futures::TryStreamExt;
use tests::TestDb;
use uuid::Uuid;

use crate::{append, assert_log_invariants};

#[tokio::test]
async fn reads_the_log_in_order_from_any_position_a_page_at_a_time() {
    let db = TestDb::new().await;
    let store = db.store();
    for aggregate in 0..25 {
        for round in 0..10 {
            append(
                &store.repository,
                &format!("ledger-{aggregate}"),
                round * 5 + 1,
                5,
                None,
            )
            .await
            .unwrap();
        }
    }
    assert_eq!(assert_log_invariants(&db.app).await, 1250);

    let reader = store.reader.clone().with_page_size(64);
    let all: Vec<_> = reader.read_from(1).try_collect().await.unwrap();
    let positions: Vec<i64> = all.iter().map(|e| e.global_position).collect();
    assert_eq!(positions, (1..=1250).collect::<Vec<_>>());
    for event in &all {
        assert_eq!(event.compute_hash().unwrap(), event.hash);
    }

    let tail: Vec<_> = reader.read_from(1200).try_collect().await.unwrap();
    assert_eq!(tail.first().map(|e| e.global_position), Some(1200));
    assert_eq!(tail.len(), 51);
    let range: Vec<_> = reader.read_range(129, 256).try_collect().await.unwrap();
    assert_eq!(range.len(), 128);
    assert_eq!(range.last().map(|e| e.global_position), Some(256));
    let beyond: Vec<_> = reader.read_from(1251).try_collect().await.unwrap();
    assert!(beyond.is_empty());

    let head = reader.head().await.unwrap();
    assert_eq!(head.position, 1250);
    assert_eq!(head.hash, all[1249].hash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tailing_reader_sees_every_event_once_and_in_order_while_writers_commit() {
    let db = TestDb::new().await;
    let stores = [db.store(), db.store()];
    let mut writers = Vec::new();
    for writer in 0..16 {
        let repository = stores[writer % 2].repository.clone();
        writers.push(tokio::spawn(async move {
            let tenant = Some(Uuid::now_v7());
            for round in 0..25 {
                append(
                    &repository,
                    &format!("ledger-{writer}"),
                    round * 2 + 1,
                    2,
                    tenant,
                )
                .await
                .unwrap();
            }
        }));
    }

    // Tail the log as a relay would: everything after the last position seen, again and
    // again, until the writers are done and the log is drained.
    let reader = stores[0].reader.clone().with_page_size(7);
    let mut seen = Vec::new();
    let mut next = 1;
    loop {
        let done = writers.iter().all(|w| w.is_finished());
        let page: Vec<_> = reader.read_from(next).try_collect().await.unwrap();
        for event in &page {
            assert_eq!(
                event.global_position, next,
                "the reader skipped or repeated"
            );
            next += 1;
            seen.push(event.global_position);
        }
        if done && page.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(seen.len(), 16 * 25 * 2);
    assert_eq!(assert_log_invariants(&db.app).await, 800);
    assert!(reader.verify(1, None).await.unwrap().is_intact());
}
