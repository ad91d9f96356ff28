//! The event feed behind subscriptions, against the real PostgreSQL, NATS and relay: each
//! subscriber gets exactly its scope's events after its position, in order and once, while
//! tenants append concurrently, when it joins in the middle of the appends, when the relay
//! stops, when NATS cannot be reached, and when it reads too slowly for its live buffer.
//!
//! A subscriber reads until a sentinel event appended last, so that the check is exact: the
//! events before the sentinel are compared with what the log holds, in full.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cqrs_es::persist::SerializedEvent;
use eventstore::relay::headers_of;
use eventstore::{
    EncodeEvent as _, EventRepository, LogReader, ProtoEncoder, RecordedEvent, Relay, RelayStats,
};
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use gateway::feed::{Feed, FeedConfig, FeedError, FeedStats, Scope};
use serde_json::json;
use tests::{TestBus, TestDb};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long a subscriber waits for its next event before the test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(60);

/// `count` events of one new aggregate, of `tenant` (by the metadata the appender reads the
/// tenant from).
fn events(
    tenant: Option<Uuid>,
    aggregate_type: &str,
    event_type: &str,
    aggregate_id: &str,
    count: usize,
) -> Vec<SerializedEvent> {
    let metadata = match tenant {
        Some(tenant) => {
            json!({"actor_id": "test", "actor_kind": "system", "tenant_id": tenant.to_string()})
        }
        None => json!({"actor_id": "test", "actor_kind": "system"}),
    };
    (1..=count)
        .map(|sequence| {
            SerializedEvent::new(
                aggregate_id.to_owned(),
                sequence,
                aggregate_type.to_owned(),
                event_type.to_owned(),
                "1".to_owned(),
                json!({"entry": format!("{aggregate_id}#{sequence}"), "amount": 100 + sequence}),
                metadata.clone(),
            )
        })
        .collect()
}

/// Appends `count` events of a new aggregate whose id starts with `name`; returns the last
/// position.
async fn append_named(
    repository: &EventRepository,
    tenant: Option<Uuid>,
    (aggregate_type, event_type): (&str, &str),
    name: &str,
    count: usize,
) -> i64 {
    let id = format!("{name}-{}", Uuid::now_v7());
    repository
        .append(
            &events(tenant, aggregate_type, event_type, &id, count),
            None,
        )
        .await
        .unwrap()
        .expect("a receipt")
        .last_position
}

const LEDGER: (&str, &str) = ("Ledger", "EntryRecorded");

async fn append(repository: &EventRepository, tenant: Option<Uuid>, count: usize) -> i64 {
    append_named(repository, tenant, LEDGER, "ledger", count).await
}

/// The event every subscriber of a test reads up to: appended after everything else.
async fn append_sentinel(
    repository: &EventRepository,
    tenant: Option<Uuid>,
    types: (&str, &str),
) -> i64 {
    append_named(repository, tenant, types, "sentinel", 1).await
}

fn is_sentinel(event: &RecordedEvent) -> bool {
    event.aggregate_id.starts_with("sentinel-")
}

/// The next event of `stream`; fails on an error, on the end of the stream, or when no
/// event comes for [`PATIENCE`].
async fn next_event(
    stream: &mut (impl Stream<Item = Result<RecordedEvent, FeedError>> + Unpin),
    received: &[RecordedEvent],
) -> RecordedEvent {
    let next = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no event for {PATIENCE:?} after {} events (last position {:?})",
                received.len(),
                received.last().map(|event| event.global_position)
            )
        });
    match next {
        None => panic!("the feed ended after {} events", received.len()),
        Some(Err(err)) => panic!("the feed failed after {} events: {err}", received.len()),
        Some(Ok(event)) => event,
    }
}

/// Reads `stream` up to and including the first sentinel.
async fn read_to_sentinel(
    stream: &mut (impl Stream<Item = Result<RecordedEvent, FeedError>> + Unpin),
) -> Vec<RecordedEvent> {
    let mut received = Vec::new();
    loop {
        let event = next_event(stream, &received).await;
        let last = is_sentinel(&event);
        received.push(event);
        if last {
            return received;
        }
    }
}

/// A subscriber on a task of its own, reading to the sentinel.
fn subscriber(feed: &Feed, scope: Scope, from: i64) -> JoinHandle<Vec<RecordedEvent>> {
    let mut stream = Box::pin(feed.subscribe(scope, from));
    tokio::spawn(async move { read_to_sentinel(&mut stream).await })
}

async fn finished(subscriber: JoinHandle<Vec<RecordedEvent>>) -> Vec<RecordedEvent> {
    tokio::time::timeout(PATIENCE * 2, subscriber)
        .await
        .expect("the subscriber finishes")
        .expect("the subscriber does not panic")
}

/// Every event of the log, by position.
async fn log(db: &TestDb) -> BTreeMap<i64, RecordedEvent> {
    LogReader::new(db.app.clone())
        .read_from(1)
        .map_ok(|event| (event.global_position, event))
        .try_collect()
        .await
        .unwrap()
}

/// What a subscriber should get, written out apart from the feed's own filter.
struct Expect<'a> {
    tenant: Option<Uuid>,
    aggregate_types: Option<&'a [&'a str]>,
    event_types: Option<&'a [&'a str]>,
}

impl Expect<'_> {
    fn tenant(tenant: Uuid) -> Self {
        Expect {
            tenant: Some(tenant),
            aggregate_types: None,
            event_types: None,
        }
    }

    fn everything() -> Self {
        Expect {
            tenant: None,
            aggregate_types: None,
            event_types: None,
        }
    }

    fn positions(&self, log: &BTreeMap<i64, RecordedEvent>, after: i64) -> Vec<i64> {
        log.values()
            .filter(|event| event.global_position > after)
            .filter(|event| self.tenant.is_none() || event.tenant_id == self.tenant)
            .filter(|event| {
                self.aggregate_types
                    .is_none_or(|types| types.contains(&event.aggregate_type.as_str()))
            })
            .filter(|event| {
                self.event_types
                    .is_none_or(|types| types.contains(&event.event_type.as_str()))
            })
            .map(|event| event.global_position)
            .collect()
    }
}

/// Asserts that `received` is exactly the events `expect` selects after `after`, in order,
/// each once, each equal to its row in the log.
fn assert_exactly(
    what: &str,
    received: &[RecordedEvent],
    log: &BTreeMap<i64, RecordedEvent>,
    expect: &Expect<'_>,
    after: i64,
) {
    let positions: Vec<i64> = received.iter().map(|event| event.global_position).collect();
    let expected = expect.positions(log, after);
    assert!(!expected.is_empty(), "{what}: the test selects no event");
    assert_eq!(
        positions, expected,
        "{what}: not exactly the scope's events after {after}, in order"
    );
    for event in received {
        assert_eq!(
            event, &log[&event.global_position],
            "{what}: the event at {} differs from the log",
            event.global_position
        );
    }
}

fn spawn_relay(db: &TestDb, bus: &TestBus) -> (JoinHandle<()>, Arc<RelayStats>) {
    let relay = Relay::new(
        db.app.clone(),
        bus.client.clone(),
        bus.relay_config(),
        ProtoEncoder,
    );
    let stats = relay.stats();
    (tokio::spawn(relay.run(std::future::pending())), stats)
}

fn feed_config(bus: &TestBus) -> FeedConfig {
    // Small pages, so that catching up takes several round trips.
    FeedConfig {
        poll_interval: Duration::from_millis(200),
        page_size: 16,
        ..FeedConfig::for_relay(&bus.relay_config())
    }
}

async fn head(db: &TestDb) -> i64 {
    LogReader::new(db.app.clone())
        .head()
        .await
        .unwrap()
        .position
}

/// Waits until `done` holds; fails after [`PATIENCE`] instead of hanging.
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Appends `rounds` small batches for `tenant`, on a task of its own.
fn writer(repository: &EventRepository, tenant: Option<Uuid>, rounds: usize) -> JoinHandle<()> {
    let repository = repository.clone();
    tokio::spawn(async move {
        for round in 0..rounds {
            append(&repository, tenant, 1 + round % 3).await;
            if round % 8 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_subscriber_gets_exactly_its_tenants_events_after_its_position_while_two_tenants_append()
 {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let store = db.store();
    let (relay, _) = spawn_relay(&db, &bus);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    for _ in 0..10 {
        append(&store.repository, Some(a), 3).await;
        append(&store.repository, Some(b), 2).await;
    }
    let middle = head(&db).await / 2;

    let feed = Feed::new(db.app.clone(), bus.client.clone(), feed_config(&bus));
    let a_from_start = subscriber(&feed, Scope::tenant(a), 0);
    let a_from_middle = subscriber(&feed, Scope::tenant(a), middle);
    let b_from_start = subscriber(&feed, Scope::tenant(b), 0);
    let writers = [
        writer(&store.repository, Some(a), 60),
        writer(&store.repository, Some(b), 60),
    ];
    for writer in writers {
        writer.await.unwrap();
    }
    append_sentinel(&store.repository, Some(a), LEDGER).await;
    append_sentinel(&store.repository, Some(b), LEDGER).await;

    let log = log(&db).await;
    let from_start = finished(a_from_start).await;
    assert_exactly("a from 0", &from_start, &log, &Expect::tenant(a), 0);
    let from_middle = finished(a_from_middle).await;
    assert_exactly(
        "a from the middle",
        &from_middle,
        &log,
        &Expect::tenant(a),
        middle,
    );
    let of_b = finished(b_from_start).await;
    assert_exactly("b from 0", &of_b, &log, &Expect::tenant(b), 0);
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_that_join_while_tenants_append_switch_to_live_with_no_gap_or_duplicate() {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let store = db.store();
    let (relay, _) = spawn_relay(&db, &bus);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let feed = Feed::new(db.app.clone(), bus.client.clone(), feed_config(&bus));
    let writers = [
        writer(&store.repository, Some(a), 120),
        writer(&store.repository, Some(b), 120),
    ];

    let mut subscribers = Vec::new();
    for round in 1..=4_i64 {
        until("the writers get further", async || {
            head(&db).await >= round * 60
        })
        .await;
        let from = if round % 2 == 0 {
            0
        } else {
            head(&db).await - 7
        };
        subscribers.push((from, subscriber(&feed, Scope::tenant(a), from)));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    append_sentinel(&store.repository, Some(a), LEDGER).await;

    let log = log(&db).await;
    for (from, subscriber) in subscribers {
        let received = finished(subscriber).await;
        assert_exactly(
            &format!("a subscriber from {from}"),
            &received,
            &log,
            &Expect::tenant(a),
            from,
        );
    }
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_gets_every_event_from_postgresql_after_the_relay_stops() {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let store = db.store();
    let (relay, relay_stats) = spawn_relay(&db, &bus);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let feed = Feed::new(db.app.clone(), bus.client.clone(), feed_config(&bus));
    let subscriber = subscriber(&feed, Scope::tenant(a), 0);
    for _ in 0..10 {
        append(&store.repository, Some(a), 2).await;
        append(&store.repository, Some(b), 2).await;
    }
    let relayed = head(&db).await;
    until("the relay published the first events", async || {
        relay_stats.acked_position() == relayed
    })
    .await;

    relay.abort();
    let _ = relay.await;
    let writers = [
        writer(&store.repository, Some(a), 20),
        writer(&store.repository, Some(b), 20),
    ];
    for writer in writers {
        writer.await.unwrap();
    }
    let sentinel = append_sentinel(&store.repository, Some(a), LEDGER).await;

    let received = finished(subscriber).await;
    assert_exactly(
        "a after the relay stopped",
        &received,
        &log(&db).await,
        &Expect::tenant(a),
        0,
    );
    assert!(
        relay_stats.acked_position() < sentinel,
        "the relay published after it stopped"
    );
    assert!(feed.stats().stored_events() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_feed_whose_nats_cannot_be_reached_serves_the_log_from_postgresql() {
    let db = TestDb::new().await;
    let store = db.store();
    let nowhere = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect("nats://127.0.0.1:1")
        .await
        .unwrap();
    let config = FeedConfig {
        poll_interval: Duration::from_millis(100),
        bus_timeout: Duration::from_millis(200),
        ..FeedConfig::default()
    };
    let feed = Feed::new(db.app.clone(), nowhere, config);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    for _ in 0..5 {
        append(&store.repository, Some(a), 2).await;
        append(&store.repository, Some(b), 2).await;
    }
    let from = head(&db).await / 2;
    let subscribers = [
        (0, subscriber(&feed, Scope::tenant(a), 0)),
        (from, subscriber(&feed, Scope::tenant(a), from)),
    ];
    let writers = [
        writer(&store.repository, Some(a), 30),
        writer(&store.repository, Some(b), 30),
    ];
    for writer in writers {
        writer.await.unwrap();
    }
    append_sentinel(&store.repository, Some(a), LEDGER).await;

    let log = log(&db).await;
    for (from, subscriber) in subscribers {
        let received = finished(subscriber).await;
        assert_exactly(
            &format!("a from {from} without NATS"),
            &received,
            &log,
            &Expect::tenant(a),
            from,
        );
    }
    assert_eq!(feed.stats().live_events(), 0);
}

const INVOICE_ISSUED: (&str, &str) = ("Invoice", "InvoiceIssued");
const INVOICE_PAID: (&str, &str) = ("Invoice", "InvoicePaid");
const WALLET_OPENED: (&str, &str) = ("Wallet", "WalletOpened");

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aggregate_and_event_type_filters_select_only_the_matching_events_of_the_scope() {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let store = db.store();
    let (relay, _) = spawn_relay(&db, &bus);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let mix = async |rounds: usize| {
        for round in 0..rounds {
            for tenant in [Some(a), Some(b), None] {
                let types = [LEDGER, INVOICE_ISSUED, INVOICE_PAID, WALLET_OPENED][round % 4];
                append_named(&store.repository, tenant, types, "mixed", 1 + round % 2).await;
            }
        }
    };
    mix(12).await;

    let feed = Feed::new(db.app.clone(), bus.client.clone(), feed_config(&bus));
    let invoices = subscriber(&feed, Scope::tenant(a).with_aggregate_types(["Invoice"]), 0);
    let paid_or_opened = subscriber(
        &feed,
        Scope::tenant(a).with_event_types(["InvoicePaid", "WalletOpened"]),
        0,
    );
    let paid_invoices = subscriber(
        &feed,
        Scope::tenant(a)
            .with_aggregate_types(["Invoice"])
            .with_event_types(["InvoicePaid"]),
        5,
    );
    let everyones_paid = subscriber(
        &feed,
        Scope::everything().with_event_types(["InvoicePaid"]),
        0,
    );
    mix(20).await;
    append_sentinel(&store.repository, Some(a), INVOICE_PAID).await;

    let log = log(&db).await;
    let expect = |aggregate_types, event_types| Expect {
        tenant: Some(a),
        aggregate_types,
        event_types,
    };
    assert_exactly(
        "a's invoices",
        &finished(invoices).await,
        &log,
        &expect(Some(&["Invoice"]), None),
        0,
    );
    assert_exactly(
        "a's paid invoices and opened wallets",
        &finished(paid_or_opened).await,
        &log,
        &expect(None, Some(&["InvoicePaid", "WalletOpened"])),
        0,
    );
    assert_exactly(
        "a's paid invoices after 5",
        &finished(paid_invoices).await,
        &log,
        &expect(Some(&["Invoice"]), Some(&["InvoicePaid"])),
        5,
    );
    assert_exactly(
        "every paid invoice",
        &finished(everyones_paid).await,
        &log,
        &Expect {
            event_types: Some(&["InvoicePaid"]),
            ..Expect::everything()
        },
        0,
    );
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_platform_operator_sees_every_event_of_every_tenant_and_of_the_platform() {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let store = db.store();
    let (relay, _) = spawn_relay(&db, &bus);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    for tenant in [Some(a), Some(b), None] {
        append(&store.repository, tenant, 4).await;
    }
    let middle = head(&db).await / 2;
    let feed = Feed::new(db.app.clone(), bus.client.clone(), feed_config(&bus));
    let from_start = subscriber(&feed, Scope::everything(), 0);
    let from_middle = subscriber(&feed, Scope::everything(), middle);
    let writers = [
        writer(&store.repository, Some(a), 40),
        writer(&store.repository, Some(b), 40),
        writer(&store.repository, None, 40),
    ];
    for writer in writers {
        writer.await.unwrap();
    }
    append_sentinel(&store.repository, None, LEDGER).await;

    let log = log(&db).await;
    let received = finished(from_start).await;
    assert_exactly("everything", &received, &log, &Expect::everything(), 0);
    assert!(received.iter().any(|event| event.tenant_id.is_none()));
    let received = finished(from_middle).await;
    assert_exactly(
        "everything after the middle",
        &received,
        &log,
        &Expect::everything(),
        middle,
    );
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_arrive_live_without_waiting_for_a_poll_of_postgresql() {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let store = db.store();
    let (relay, _) = spawn_relay(&db, &bus);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    for _ in 0..3 {
        append(&store.repository, Some(a), 2).await;
        append(&store.repository, Some(b), 2).await;
    }
    // No poll within the test: after the catch-up, only NATS can bring an event.
    let config = FeedConfig {
        poll_interval: Duration::from_secs(3600),
        ..feed_config(&bus)
    };
    let feed = Feed::new(db.app.clone(), bus.client.clone(), config);
    let stats: Arc<FeedStats> = feed.stats();
    let subscriber = subscriber(&feed, Scope::tenant(a), 0);
    until("the catch-up is done", async || stats.stored_events() == 6).await;
    for _ in 0..10 {
        append(&store.repository, Some(b), 1).await;
        append(&store.repository, Some(a), 1).await;
    }
    append_sentinel(&store.repository, Some(a), LEDGER).await;

    let received = finished(subscriber).await;
    assert_exactly("a, live", &received, &log(&db).await, &Expect::tenant(a), 0);
    assert!(
        stats.live_events() > 0,
        "no event came live: {} stored, {} gaps",
        stats.stored_events(),
        stats.gaps()
    );
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_too_slow_for_its_live_buffer_still_gets_every_event_in_order() {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let store = db.store();
    let (relay, _) = spawn_relay(&db, &bus);
    let a = Uuid::now_v7();
    append(&store.repository, Some(a), 1).await;
    let config = FeedConfig {
        live_buffer: 4,
        page_size: 8,
        channel_capacity: 1,
        ..feed_config(&bus)
    };
    let feed = Feed::new(db.app.clone(), bus.client.clone(), config);
    let stats = feed.stats();
    let mut stream = Box::pin(feed.subscribe(Scope::tenant(a), 0));
    let first = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("the first event")
        .expect("an item")
        .expect("an event");

    // The subscriber reads nothing while its tenant records 100 events, one at a time.
    for _ in 0..100 {
        append(&store.repository, Some(a), 1).await;
    }
    until("the live buffer overflows", async || stats.overflows() > 0).await;
    append_sentinel(&store.repository, Some(a), LEDGER).await;

    let mut received = vec![first];
    received.extend(read_to_sentinel(&mut stream).await);
    assert_exactly(
        "a slow subscriber",
        &received,
        &log(&db).await,
        &Expect::tenant(a),
        0,
    );
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_prefix_that_nats_refuses_ends_the_feed_with_a_bus_error() {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let config = FeedConfig {
        subject_prefix: "not a prefix".to_owned(),
        ..FeedConfig::default()
    };
    let feed = Feed::new(db.app.clone(), bus.client.clone(), config);
    let mut stream = Box::pin(feed.subscribe(Scope::tenant(Uuid::now_v7()), 0));
    let first = tokio::time::timeout(PATIENCE, stream.next()).await.unwrap();
    assert!(matches!(first, Some(Err(FeedError::Bus(_)))), "{first:?}");
    let after = tokio::time::timeout(PATIENCE, stream.next()).await.unwrap();
    assert!(after.is_none(), "the feed went on after its error");
}

/// Publishes `event` as the relay would, on the core subject only.
async fn publish(bus: &TestBus, event: &RecordedEvent) {
    let encoder = ProtoEncoder;
    bus.client
        .publish_with_headers(
            bus.relay_config().subject_of(event),
            headers_of(event, encoder.content_type()),
            encoder.encode(event).unwrap().into(),
        )
        .await
        .unwrap();
    bus.client.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_event_that_skips_an_event_of_the_tenant_makes_the_feed_read_it_from_postgresql_and_repeats_are_passed_over()
 {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let store = db.store();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    append(&store.repository, Some(a), 2).await;
    // No relay and no poll: what comes after the catch-up comes from the messages below.
    let config = FeedConfig {
        poll_interval: Duration::from_secs(3600),
        ..feed_config(&bus)
    };
    let feed = Feed::new(db.app.clone(), bus.client.clone(), config);
    let stats = feed.stats();
    let mut stream = Box::pin(feed.subscribe(Scope::tenant(a), 0));
    let mut received = vec![next_event(&mut stream, &[]).await];
    received.push(next_event(&mut stream, &received).await);

    // The message of the tenant's next event is lost; the one after it arrives.
    let lost = append(&store.repository, Some(a), 1).await;
    append(&store.repository, Some(b), 3).await;
    let sentinel = append_sentinel(&store.repository, Some(a), LEDGER).await;
    let log = log(&db).await;
    publish(&bus, &log[&1]).await;
    publish(&bus, &log[&sentinel]).await;
    received.extend(read_to_sentinel(&mut stream).await);
    assert_exactly("a, healed", &received, &log, &Expect::tenant(a), 0);
    assert!(received.iter().any(|event| event.global_position == lost));
    assert!(stats.gaps() > 0, "the lost event was not noticed as a gap");

    // Repeats of what was handed over already are passed over; the next event links.
    let next = append(&store.repository, Some(a), 1).await;
    let log = self::log(&db).await;
    for position in [sentinel, 2, sentinel] {
        publish(&bus, &log[&position]).await;
    }
    publish(&bus, &log[&next]).await;
    let event = next_event(&mut stream, &received).await;
    assert_eq!(
        event.global_position, next,
        "a repeat was handed over again"
    );
    assert!(stats.live_events() > 0);
}
