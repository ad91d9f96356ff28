//! The relay through the real PostgreSQL and NATS JetStream: every event in the stream once,
//! in order, with its headers and a verifiable envelope; one leader at a time with a standby
//! that takes over; relays killed mid-stream; a deleted stream filled again from the log.

use std::time::Duration;

use eventstore::RelayConfig;
use prost::Message as _;
use tests::{TestBus, TestDb};
use uuid::Uuid;

use crate::{append, assert_relayed, head, spawn_relay, until};

async fn fill(db: &TestDb, store: &tests::TestStore, aggregates: usize, each: usize) {
    for aggregate in 0..aggregates {
        let tenant = (aggregate % 3 != 0).then(Uuid::now_v7);
        append(
            &store.repository,
            &format!("ledger-{}", Uuid::now_v7()),
            1,
            each,
            tenant,
        )
        .await
        .unwrap();
    }
    assert!(head(db).await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_every_event_once_in_order_with_cloudevents_headers() {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let store = db.store();
    fill(&db, &store, 30, 10).await;
    let (relay, stats) = spawn_relay(&db, bus.client.clone(), bus.relay_config());
    assert_relayed(&bus, &stats, 300).await;

    // Appends after the relay caught up wake it (NOTIFY), and the checkpoint follows.
    fill(&db, &store, 5, 10).await;
    until("350 events are acked", async || {
        stats.acked_position() == 350
    })
    .await;
    // The checkpoint is written by a task of its own, told of each acked position.
    let checkpoint = async || -> i64 {
        sqlx::query_scalar("SELECT position FROM relay_checkpoints WHERE name = 'relay'")
            .fetch_one(&db.app)
            .await
            .unwrap()
    };
    until("the checkpoint is stored", async || {
        checkpoint().await >= 350
    })
    .await;
    assert_eq!(checkpoint().await, 350);
    assert_eq!(
        bus.positions(&bus.stream).await,
        (1..=350).collect::<Vec<_>>()
    );
    relay.abort();

    // One message in full: its subject, its headers and its envelope.
    let event: (Uuid, String, String, Option<Uuid>, Vec<u8>) = sqlx::query_as(
        "SELECT event_id, aggregate_type, event_type, tenant_id, hash FROM events WHERE global_position = 2",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    let stream = bus.jetstream.get_stream(&bus.stream).await.unwrap();
    let message = stream.get_raw_message(2).await.unwrap();
    let scope = event.3.map_or("platform".to_owned(), |t| t.to_string());
    assert_eq!(
        message.subject.as_str(),
        format!("{}.events.{scope}.{}.{}", bus.prefix, event.1, event.2)
    );
    let header = |name: &str| {
        message
            .headers
            .get(name)
            .map(|value| value.as_str().to_owned())
            .unwrap_or_else(|| panic!("no {name} header"))
    };
    assert_eq!(header("Nats-Msg-Id"), event.0.to_string());
    assert_eq!(header("ce-id"), event.0.to_string());
    assert_eq!(header("ce-specversion"), "1.0");
    assert_eq!(
        header("ce-type"),
        format!("platform.{}.{}.v1", event.1, event.2)
    );
    assert_eq!(header("platform-position"), "2");
    assert_eq!(header("platform-hash"), hex::encode(&event.4));
    assert!(header("ce-time").ends_with('Z'));
    let envelope = proto::v1::EventEnvelope::decode(message.payload.as_ref()).unwrap();
    assert_eq!(envelope.global_position, 2);
    assert_eq!(envelope.hash, event.4);
    envelope.verify_hash().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_relays_one_publishes_and_the_other_takes_over_with_no_gap_or_reordering() {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let store = db.store();
    let (first, first_stats) = spawn_relay(&db, bus.client.clone(), bus.relay_config());
    until("the first relay leads", async || first_stats.is_leader()).await;
    let (second, second_stats) = spawn_relay(&db, bus.client.clone(), bus.relay_config());
    fill(&db, &store, 20, 10).await;
    until("200 events are acked", async || {
        first_stats.acked_position() == 200
    })
    .await;
    assert!(!second_stats.is_leader(), "two relays lead at once");
    assert_eq!(second_stats.published(), 0, "the standby published");

    first.abort();
    let _ = first.await;
    fill(&db, &store, 20, 10).await;
    // The standby takes over.
    assert_relayed(&bus, &second_stats, 400).await;
    second.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_again_and_again_under_load_leaves_every_event_in_the_stream_in_order() {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let store = db.store();
    let writer = {
        let repository = store.repository.clone();
        tokio::spawn(async move {
            for _ in 0..150 {
                append(
                    &repository,
                    &format!("ledger-{}", Uuid::now_v7()),
                    1,
                    4,
                    None,
                )
                .await
                .unwrap();
            }
        })
    };
    let config = RelayConfig {
        max_in_flight: 16,
        page_size: 32,
        ..bus.relay_config()
    };
    for round in 0..12u64 {
        let (relay, _) = spawn_relay(&db, bus.client.clone(), config.clone());
        tokio::time::sleep(Duration::from_millis(30 + round * 7)).await;
        relay.abort();
        let _ = relay.await;
    }
    writer.await.unwrap();
    let (relay, stats) = spawn_relay(&db, bus.client.clone(), config);
    assert_relayed(&bus, &stats, 600).await;
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_is_filled_again_from_the_log() {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let store = db.store();
    fill(&db, &store, 10, 10).await;
    let (relay, stats) = spawn_relay(&db, bus.client.clone(), bus.relay_config());
    until("100 events are acked", async || {
        stats.acked_position() == 100
    })
    .await;

    bus.jetstream.delete_stream(&bus.stream).await.unwrap();
    fill(&db, &store, 5, 10).await;
    until("the new stream holds all 150 events", async || {
        bus.positions(&bus.stream).await.len() == 150
    })
    .await;
    assert_eq!(
        bus.positions(&bus.stream).await,
        (1..=150).collect::<Vec<_>>()
    );
    assert!(stats.terms() >= 1);
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_ends_on_a_full_page_is_acked_and_checkpointed_to_its_last_event() {
    // The relay settles its acks when it reaches the head of the log. A log whose head falls
    // exactly at the end of a page is reached with an empty page, which must still count.
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let store = db.store();
    fill(&db, &store, 4, 10).await;
    let config = RelayConfig {
        page_size: 10,
        max_in_flight: 8,
        ..bus.relay_config()
    };
    let (relay, stats) = spawn_relay(&db, bus.client.clone(), config);
    until("every event is acked", async || {
        stats.acked_position() == 40
    })
    .await;
    until("the checkpoint reaches the head", async || {
        sqlx::query_scalar::<_, i64>("SELECT position FROM relay_checkpoints WHERE name = 'relay'")
            .fetch_optional(&db.app)
            .await
            .unwrap()
            == Some(40)
    })
    .await;
    relay.abort();
}
