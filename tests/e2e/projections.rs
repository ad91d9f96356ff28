//! Projections through the real PostgreSQL and NATS JetStream: effects and checkpoints in
//! one transaction, redeliveries passed over, gaps reported and healed from the log, poison
//! events parked until an operator acts, blue/green rebuilds identical to the live model,
//! and a runner that follows the relay and reads its own writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use eventstore::{LogReader, RecordedEvent};
use futures::TryStreamExt;
use projections::pg::{self, Applied, ApplyError, PgProjection, PgTarget};
use projections::{
    PgRunner, ProjectionError, Retry, Target, catch_up, catch_up_on, wait_for_position,
};
use sqlx::{PgConnection, PgPool};
use tests::{TestBus, TestDb};
use uuid::Uuid;

use crate::{append, quick_retry, runner_config, spawn_relay};

/// Counts ledger entries per aggregate, and sums their amounts. Fails on every entry of an
/// aggregate whose id starts with `poison` while `poisoned` is set.
#[derive(Clone, Default)]
struct Ledger {
    poisoned: Arc<AtomicBool>,
}

impl PgProjection for Ledger {
    fn name(&self) -> &'static str {
        "ledger"
    }

    fn version(&self) -> i32 {
        1
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        event.aggregate_type == "Ledger"
    }

    fn schema_sql(&self) -> &'static str {
        "CREATE TABLE totals (aggregate_id text PRIMARY KEY, entries bigint NOT NULL, amount bigint NOT NULL, last_position bigint NOT NULL)"
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ApplyError> {
        for event in events {
            if self.poisoned.load(Ordering::Relaxed) && event.aggregate_id.starts_with("poison") {
                return Err(ApplyError::at(
                    event.global_position,
                    "this entry cannot be booked",
                ));
            }
            let amount = event.payload["amount"].as_i64().unwrap_or_default();
            sqlx::query(
                "INSERT INTO totals VALUES ($1, 1, $2, $3)
                 ON CONFLICT (aggregate_id) DO UPDATE SET entries = totals.entries + 1,
                     amount = totals.amount + EXCLUDED.amount, last_position = EXCLUDED.last_position",
            )
            .bind(&event.aggregate_id)
            .bind(amount)
            .bind(event.global_position)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// The ledger, poisoned and set up.
async fn poisoned_ledger(pool: &PgPool) -> Ledger {
    let projection = Ledger::default();
    projection.poisoned.store(true, Ordering::Relaxed);
    pg::setup(pool, &projection).await.unwrap();
    projection
}

async fn totals(pool: &PgPool) -> Vec<(String, i64, i64)> {
    sqlx::query_as(
        "SELECT aggregate_id, entries, amount FROM rm_ledger.totals ORDER BY aggregate_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn digest(pool: &PgPool) -> String {
    sqlx::query_scalar(
        "SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY aggregate_id)), '') FROM rm_ledger.totals t",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// What `aggregates` × `each` entries add up to, computed from what was appended, not from
/// the log: `events()` gives entry i the amount 100 + i.
fn expected(aggregates: &[String], each: usize) -> Vec<(String, i64, i64)> {
    let amount: i64 = (0..each as i64).map(|i| 100 + i).sum();
    let mut rows: Vec<_> = aggregates
        .iter()
        .map(|id| (id.clone(), each as i64, amount))
        .collect();
    rows.sort();
    rows
}

async fn fill(
    store: &tests::TestStore,
    prefix: &str,
    aggregates: usize,
    each: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..aggregates {
        let id = format!("{prefix}-{}", Uuid::now_v7());
        append(&store.repository, &id, 1, each, None).await.unwrap();
        ids.push(id);
    }
    ids
}

async fn all_events(reader: &LogReader) -> Vec<RecordedEvent> {
    reader.read_from(1).try_collect().await.unwrap()
}

#[tokio::test]
async fn a_redelivered_batch_is_passed_over_and_a_batch_after_a_gap_applies_nothing() {
    let db = TestDb::new().await;
    let store = db.store();
    let ids = fill(&store, "ledger", 4, 5).await;
    let events = all_events(&store.reader).await;
    let projection = Ledger::default();
    assert_eq!(
        pg::setup(&db.app, &projection).await.unwrap(),
        pg::Setup::Created
    );

    let first = pg::apply_batch(&db.app, &projection, &events[..8])
        .await
        .unwrap();
    assert_eq!(first, Applied::Through { position: 8 });
    let before = digest(&db.app).await;
    // The same batch again, and a batch overlapping it: only the new events count.
    assert_eq!(
        pg::apply_batch(&db.app, &projection, &events[..8])
            .await
            .unwrap(),
        Applied::Through { position: 8 }
    );
    assert_eq!(digest(&db.app).await, before);
    // A batch that skips positions 9 and 10 is a gap: nothing of it is applied.
    assert_eq!(
        pg::apply_batch(&db.app, &projection, &events[10..])
            .await
            .unwrap(),
        Applied::Gap { from: 9, to: 10 }
    );
    assert_eq!(digest(&db.app).await, before);
    assert_eq!(
        pg::apply_batch(&db.app, &projection, &events[4..])
            .await
            .unwrap(),
        Applied::Through { position: 20 }
    );
    assert_eq!(totals(&db.app).await, expected(&ids, 5));
}

#[tokio::test]
async fn a_poison_event_parks_its_projection_until_an_operator_skips_exactly_that_event() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut ids = fill(&store, "ledger", 2, 3).await;
    fill(&store, "poison", 1, 1).await;
    ids.extend(fill(&store, "ledger", 2, 3).await);
    let projection = poisoned_ledger(&db.app).await;
    let retry = quick_retry(3);

    let applied = catch_up(&db.app, &projection, &store.reader, None, 100, retry)
        .await
        .unwrap();
    let Applied::Parked(parked) = applied else {
        panic!("expected the projection to park, got {applied:?}");
    };
    assert_eq!(parked.position, 7);
    assert!(parked.error.contains("cannot be booked"));
    // Visible where an operator looks, and everything before it applied.
    let checkpoint = pg::checkpoint(&db.app, "ledger").await.unwrap().unwrap();
    assert_eq!(checkpoint.position, 6);
    assert_eq!(checkpoint.parked.as_ref().map(|p| p.position), Some(7));
    // Parked means parked: catching up again applies nothing.
    assert!(matches!(
        catch_up(&db.app, &projection, &store.reader, None, 100, retry)
            .await
            .unwrap(),
        Applied::Parked(_)
    ));
    assert_eq!(totals(&db.app).await.len(), 2);

    // Only the parked event can be skipped.
    assert!(matches!(
        pg::skip(&db.app, "ledger", 8, "ops@example.org").await,
        Err(ProjectionError::NotParkedAt { position: 8, .. })
    ));
    pg::skip(&db.app, "ledger", 7, "ops@example.org")
        .await
        .unwrap();
    let recorded: (i64, String, String) = sqlx::query_as(
        "SELECT position, error, skipped_by FROM projection_skips WHERE name = 'ledger'",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(recorded.0, 7);
    assert!(recorded.1.contains("cannot be booked"));
    assert_eq!(recorded.2, "ops@example.org");

    let applied = catch_up(&db.app, &projection, &store.reader, None, 100, retry)
        .await
        .unwrap();
    assert_eq!(applied, Applied::Through { position: 13 });
    assert_eq!(totals(&db.app).await, expected(&ids, 3));

    // The skip stays on the record: a rebuild from zero passes over that event too, and
    // comes out identical.
    let live = digest(&db.app).await;
    let rebuilt = pg::rebuild(&db.app, &projection, &store.reader, None, 4, |_, _| {})
        .await
        .unwrap();
    assert_eq!(rebuilt.position, 13);
    assert_eq!(digest(&db.app).await, live);
}

/// The ledger projection at version 2, whose table has one more column.
struct LedgerV2(Ledger);

impl PgProjection for LedgerV2 {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn version(&self) -> i32 {
        2
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        self.0.wants(event)
    }

    fn schema_sql(&self) -> &'static str {
        "CREATE TABLE totals (aggregate_id text PRIMARY KEY, entries bigint NOT NULL, amount bigint NOT NULL, last_position bigint NOT NULL, note text)"
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ApplyError> {
        self.0.apply(conn, events).await
    }
}

#[tokio::test]
async fn a_projection_whose_version_changed_rebuilds_itself_when_its_worker_starts() {
    let db = TestDb::new().await;
    let store = db.store();
    let ids = fill(&store, "ledger", 4, 3).await;
    let v1 = PgTarget::new(db.app.clone(), Ledger::default());
    v1.prepare(&store.reader, 100).await.unwrap();
    catch_up_on(&v1, &store.reader, None, 5, Retry::default())
        .await
        .unwrap();
    let columns = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM information_schema.columns
              WHERE table_schema = 'rm_ledger' AND table_name = 'totals'",
        )
        .fetch_one(&db.app)
        .await
        .unwrap()
    };
    assert_eq!(columns().await, 4);

    let v2 = PgTarget::new(db.app.clone(), LedgerV2(Ledger::default()));
    v2.prepare(&store.reader, 5).await.unwrap();
    assert_eq!(columns().await, 5, "the tables of version 2");
    let checkpoint = pg::checkpoint(&db.app, "ledger").await.unwrap().unwrap();
    assert_eq!((checkpoint.version, checkpoint.position), (2, 12));
    assert_eq!(totals(&db.app).await, expected(&ids, 3));
    // Started again, a current model is left alone.
    v2.prepare(&store.reader, 5).await.unwrap();
    assert_eq!(totals(&db.app).await, expected(&ids, 3));
}

#[tokio::test]
async fn a_parked_projection_resumed_after_a_fix_applies_the_event_it_stopped_on() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut ids = fill(&store, "poison", 1, 2).await;
    ids.extend(fill(&store, "ledger", 1, 2).await);
    let projection = poisoned_ledger(&db.app).await;
    let retry = quick_retry(2);
    let parked = catch_up(&db.app, &projection, &store.reader, None, 100, retry)
        .await
        .unwrap();
    assert!(matches!(parked, Applied::Parked(ref p) if p.position == 1));

    projection.poisoned.store(false, Ordering::Relaxed);
    assert!(pg::resume(&db.app, "ledger").await.unwrap());
    assert!(
        !pg::resume(&db.app, "ledger").await.unwrap(),
        "resumed twice"
    );
    let applied = catch_up(&db.app, &projection, &store.reader, None, 100, retry)
        .await
        .unwrap();
    assert_eq!(applied, Applied::Through { position: 4 });
    assert_eq!(totals(&db.app).await, expected(&ids, 2));
}

#[tokio::test]
async fn a_rebuild_swaps_in_a_model_identical_to_the_live_one_and_live_processing_goes_on() {
    let db = TestDb::new().await;
    let store = db.store();
    let ids = fill(&store, "ledger", 30, 7).await;
    let projection = Ledger::default();
    pg::setup(&db.app, &projection).await.unwrap();
    catch_up(
        &db.app,
        &projection,
        &store.reader,
        None,
        13,
        Retry::default(),
    )
    .await
    .unwrap();
    let live = digest(&db.app).await;

    let mut seen = Vec::new();
    let rebuilt = pg::rebuild(&db.app, &projection, &store.reader, None, 50, |at, of| {
        seen.push((at, of));
    })
    .await
    .unwrap();
    assert_eq!(rebuilt.position, 210);
    assert_eq!(rebuilt.events, 210);
    assert_eq!(seen.last(), Some(&(210, 210)));
    assert_eq!(digest(&db.app).await, live);

    // A rebuild to an earlier position leaves the model there; live processing goes on from
    // that position with no gap and no duplicate.
    let rebuilt = pg::rebuild(
        &db.app,
        &projection,
        &store.reader,
        Some(100),
        64,
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(rebuilt.position, 100);
    assert_eq!(
        pg::checkpoint(&db.app, "ledger")
            .await
            .unwrap()
            .unwrap()
            .position,
        100
    );
    catch_up(
        &db.app,
        &projection,
        &store.reader,
        None,
        1000,
        Retry::default(),
    )
    .await
    .unwrap();
    assert_eq!(digest(&db.app).await, live);
    assert_eq!(totals(&db.app).await, expected(&ids, 7));
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rm_ledger%' AND nspname <> 'rm_ledger'",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(leftovers, 0, "a shadow schema was left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_follows_the_relay_heals_a_lost_stream_from_the_log_and_reads_its_own_writes() {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let store = db.store();
    let mut ids = fill(&store, "ledger", 5, 4).await;
    let (relay, relay_stats) = spawn_relay(&db, bus.client.clone(), bus.relay_config());
    // The runner needs the stream; the relay creates it.
    for _ in 0..200 {
        if relay_stats.acked_position() == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let runner = PgRunner::new(
        db.app.clone(),
        bus.client.clone(),
        Ledger::default(),
        runner_config(&bus, Duration::from_millis(200)),
    );
    let runner_stats = runner.stats();
    let runner = tokio::spawn(runner.run(std::future::pending()));
    assert!(
        wait_for_position(&db.app, "ledger", 20, Duration::from_secs(30))
            .await
            .unwrap()
    );

    ids.extend(fill(&store, "ledger", 10, 4).await);
    assert!(
        wait_for_position(&db.app, "ledger", 60, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(runner_stats.delivered() > 0, "nothing came through the bus");

    // The stream is lost; the relay refills it and the runner's consumer is gone with it: the
    // runner still reaches every new event, from the log.
    bus.jetstream.delete_stream(&bus.stream).await.unwrap();
    ids.extend(fill(&store, "ledger", 5, 4).await);
    assert!(
        wait_for_position(&db.app, "ledger", 80, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert_eq!(totals(&db.app).await, expected(&ids, 4));
    assert!(
        !wait_for_position(&db.app, "ledger", 81, Duration::from_millis(50))
            .await
            .unwrap()
    );
    runner.abort();
    relay.abort();
}
