//! cqrs-es compatibility: the example aggregate works through `TestFramework` and through a
//! real `CqrsFramework` over the event store, with snapshots on and off, and with upcasters.

use std::sync::{Arc, Mutex};

use commands::CommandMetadata;
use cqrs_es::persist::{
    PersistedEventRepository, PersistedEventStore, SemanticVersionEventUpcaster, SerializedEvent,
};
use cqrs_es::test::TestFramework;
use cqrs_es::{AggregateError, EventEnvelope, EventStore, Query};
use domain::ActorKind;
use eventstore::{EventRepository, platform_cqrs, platform_snapshot_cqrs};
use serde_json::{Value, json};
use tests::TestDb;
use tests::example::{Wallet, WalletCommand, WalletError, WalletEvent};
use uuid::Uuid;

type WalletFramework = TestFramework<Wallet>;

#[test]
fn a_wallet_accepts_a_deposit_once_open() {
    WalletFramework::with(())
        .given(vec![WalletEvent::Opened {
            owner: "Ada".into(),
        }])
        .when(WalletCommand::Deposit { amount: 500 })
        .then_expect_events(vec![WalletEvent::Deposited {
            amount: 500,
            balance: 500,
        }]);
}

#[test]
fn a_wallet_refuses_a_withdrawal_it_cannot_cover() {
    WalletFramework::with(())
        .given(vec![
            WalletEvent::Opened {
                owner: "Ada".into(),
            },
            WalletEvent::Deposited {
                amount: 300,
                balance: 300,
            },
        ])
        .when(WalletCommand::Withdraw { amount: 301 })
        .then_expect_error(WalletError::InsufficientFunds {
            balance: 300,
            requested: 301,
        });
}

#[test]
fn a_wallet_cannot_be_opened_twice() {
    WalletFramework::with(())
        .given(vec![WalletEvent::Opened {
            owner: "Ada".into(),
        }])
        .when(WalletCommand::Open {
            owner: "Bob".into(),
        })
        .then_expect_error(WalletError::AlreadyOpen);
}

async fn run_commands(cqrs: &eventstore::PlatformCqrs<Wallet>, id: &str, tenant: Uuid) {
    let metadata = CommandMetadata::new("user-1", ActorKind::User, Some(tenant));
    for command in [
        WalletCommand::Open {
            owner: "Ada".into(),
        },
        WalletCommand::Deposit { amount: 1000 },
        WalletCommand::Deposit { amount: 250 },
        WalletCommand::Withdraw { amount: 400 },
        WalletCommand::Deposit { amount: 1 },
    ] {
        cqrs.execute_with_metadata(id, command, metadata.to_map())
            .await
            .unwrap();
    }
    // A refused command appends nothing.
    let err = cqrs
        .execute_with_metadata(
            id,
            WalletCommand::Withdraw { amount: 10_000 },
            metadata.to_map(),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        AggregateError::UserError(WalletError::InsufficientFunds { .. })
    ));
}

fn expected_wallet() -> Wallet {
    Wallet {
        opened: true,
        owner: "Ada".into(),
        balance: 851,
        deposits: 3,
    }
}

#[tokio::test]
async fn a_cqrs_framework_runs_over_the_event_store_without_snapshots() {
    let db = TestDb::new().await;
    let store = db.store();
    let tenant = Uuid::now_v7();
    let cqrs = platform_cqrs::<Wallet>(store.repository.clone(), vec![], ());
    run_commands(&cqrs, "wallet-1", tenant).await;

    let events =
        PersistedEventStore::<EventRepository, Wallet>::new_event_store(store.repository.clone());
    let context = events.load_aggregate("wallet-1").await.unwrap();
    assert_eq!(context.aggregate, expected_wallet());
    assert_eq!(context.current_sequence, 5);

    let rows: Vec<(i64, i64, String, Option<Uuid>, Value)> = sqlx::query_as(
        "SELECT global_position, sequence, event_type, tenant_id, metadata FROM events ORDER BY global_position",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(rows.len(), 5);
    for (i, (position, sequence, _, tenant_id, metadata)) in rows.iter().enumerate() {
        assert_eq!((*position, *sequence), (i as i64 + 1, i as i64 + 1));
        assert_eq!(*tenant_id, Some(tenant));
        let map = serde_json::from_value(metadata.clone()).unwrap();
        let meta = CommandMetadata::from_map(&map).unwrap();
        assert_eq!(
            (meta.actor_id.as_str(), meta.actor_kind),
            ("user-1", ActorKind::User)
        );
        assert_eq!(meta.tenant_id, Some(tenant));
    }
    assert_eq!(rows[0].2, "WalletOpened");
    let snapshots: i64 = sqlx::query_scalar("SELECT count(*) FROM snapshots")
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert_eq!(snapshots, 0);
    assert!(store.reader.verify(1, None).await.unwrap().is_intact());
}

#[tokio::test]
async fn a_cqrs_framework_runs_over_the_event_store_with_snapshots() {
    let db = TestDb::new().await;
    let store = db.store();
    let cqrs = platform_snapshot_cqrs::<Wallet>(store.repository.clone(), vec![], 2, ());
    run_commands(&cqrs, "wallet-1", Uuid::now_v7()).await;

    let (last_sequence, current_snapshot, payload): (i64, i64, Value) = sqlx::query_as(
        "SELECT last_sequence, current_snapshot, payload FROM snapshots
          WHERE aggregate_type = 'Wallet' AND aggregate_id = 'wallet-1'",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!((last_sequence, current_snapshot), (4, 2));
    let snapshot: Wallet = serde_json::from_value(payload).unwrap();
    // The snapshot is the state after exactly four events: each applied once.
    assert_eq!((snapshot.balance, snapshot.deposits), (850, 2));

    // Loading from the snapshot plus the events after it gives the state that replaying
    // every event gives.
    let from_snapshot = PersistedEventStore::<EventRepository, Wallet>::new_snapshot_store(
        store.repository.clone(),
        2,
    );
    let from_events =
        PersistedEventStore::<EventRepository, Wallet>::new_event_store(store.repository.clone());
    let a = from_snapshot.load_aggregate("wallet-1").await.unwrap();
    let b = from_events.load_aggregate("wallet-1").await.unwrap();
    assert_eq!(a.aggregate, expected_wallet());
    assert_eq!(a.aggregate, b.aggregate);
    assert_eq!(a.current_sequence, 5);

    // Aggregate-store mode: a snapshot with every commit.
    let aggregate_store = cqrs_es::CqrsFramework::new(
        PersistedEventStore::<EventRepository, Wallet>::new_aggregate_store(
            store.repository.clone(),
        ),
        vec![],
        (),
    );
    run_commands(&aggregate_store, "wallet-2", Uuid::now_v7()).await;
    let (last, payload): (i64, Value) = sqlx::query_as(
        "SELECT last_sequence, payload FROM snapshots WHERE aggregate_id = 'wallet-2'",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(last, 5);
    assert_eq!(
        serde_json::from_value::<Wallet>(payload).unwrap(),
        expected_wallet()
    );
    assert!(store.reader.verify(1, None).await.unwrap().is_intact());
}

#[tokio::test]
async fn upcasters_read_old_event_versions() {
    let db = TestDb::new().await;
    let store = db.store();
    // An event written by an older version of the wallet, whose owner was called `name`.
    let old = SerializedEvent::new(
        "wallet-old".into(),
        1,
        "Wallet".into(),
        "WalletOpened".into(),
        "0.9".into(),
        json!({"Opened": {"name": "Grace"}}),
        json!({"actor_id": "migration", "actor_kind": "system"}),
    );
    store.repository.append(&[old], None).await.unwrap();

    let upcaster = SemanticVersionEventUpcaster::new(
        "WalletOpened",
        "1",
        Box::new(|payload: Value| {
            let name = payload["Opened"]["name"].clone();
            json!({"Opened": {"owner": name}})
        }),
    );
    let cqrs = cqrs_es::CqrsFramework::new(
        PersistedEventStore::<EventRepository, Wallet>::new_event_store(store.repository.clone())
            .with_upcasters(vec![Box::new(upcaster)]),
        vec![],
        (),
    );
    cqrs.execute("wallet-old", WalletCommand::Deposit { amount: 5 })
        .await
        .unwrap();
    let reader =
        PersistedEventStore::<EventRepository, Wallet>::new_event_store(store.repository.clone())
            .with_upcasters(vec![Box::new(SemanticVersionEventUpcaster::new(
                "WalletOpened",
                "1",
                Box::new(|payload: Value| json!({"Opened": {"owner": payload["Opened"]["name"]}})),
            ))]);
    let wallet = reader.load_aggregate("wallet-old").await.unwrap().aggregate;
    assert_eq!((wallet.owner.as_str(), wallet.balance), ("Grace", 5));
    // The log keeps the event as it was written: upcasting happens on reading.
    let version: String =
        sqlx::query_scalar("SELECT event_version FROM events WHERE global_position = 1")
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(version, "0.9");
}

struct Recorder(Arc<Mutex<Vec<(usize, String)>>>);

#[async_trait::async_trait]
impl Query<Wallet> for Recorder {
    async fn dispatch(&self, aggregate_id: &str, events: &[EventEnvelope<Wallet>]) {
        let mut seen = self.0.lock().unwrap();
        for event in events {
            let actor = event.metadata.get("actor_id").cloned().unwrap_or_default();
            seen.push((event.sequence, format!("{aggregate_id}:{actor}")));
        }
    }
}

#[tokio::test]
async fn queries_and_replay_streams_see_the_committed_events() {
    let db = TestDb::new().await;
    let store = db.store();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let cqrs = platform_cqrs::<Wallet>(
        store.repository.clone(),
        vec![Box::new(Recorder(Arc::clone(&seen)))],
        (),
    );
    run_commands(&cqrs, "wallet-1", Uuid::now_v7()).await;
    run_commands(&cqrs, "wallet-2", Uuid::now_v7()).await;
    assert_eq!(seen.lock().unwrap().len(), 10);
    assert_eq!(seen.lock().unwrap()[0], (1, "wallet-1:user-1".to_owned()));

    let mut stream = store
        .repository
        .stream_events::<Wallet>("wallet-2")
        .await
        .unwrap();
    let mut sequences = Vec::new();
    while let Some(event) = stream.next::<Wallet>(&[]).await {
        sequences.push(event.unwrap().sequence);
    }
    assert_eq!(sequences, vec![1, 2, 3, 4, 5]);

    let mut all = store
        .repository
        .stream_all_events::<Wallet>()
        .await
        .unwrap();
    let mut count = 0;
    while let Some(event) = all.next::<Wallet>(&[]).await {
        event.unwrap();
        count += 1;
    }
    assert_eq!(count, 10);
}
