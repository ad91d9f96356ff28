//! The unit of work: a command that decides on several aggregates commits all of their
//! events in one atomic write, is retried on fresh state when an aggregate changed under it,
//! and writes nothing when an aggregate refuses.

use commands::CommandMetadata;
use commands::bus::{self, Command, CommandError, EventLog, Idempotent, Outcome, UnitOfWork};
use domain::ActorKind;
use tests::TestDb;
use tests::example::{Wallet, WalletCommand, WalletError};

use crate::assert_log_invariants;

/// Moves money from one wallet to another: a withdrawal and a deposit, together or not at
/// all.
#[derive(serde::Serialize)]
struct Transfer {
    from: String,
    to: String,
    amount: i64,
}

impl<L: EventLog> Command<L> for Transfer {
    type Output = ();
    type Error = WalletError;

    async fn decide(&self, work: &mut UnitOfWork<'_, L>) -> Result<(), CommandError<WalletError>> {
        let mut from = work.load::<Wallet>(&self.from).await?;
        let mut to = work.load::<Wallet>(&self.to).await?;
        work.handle(
            &mut from,
            WalletCommand::Withdraw {
                amount: self.amount,
            },
            &(),
        )
        .await?;
        work.handle(
            &mut to,
            WalletCommand::Deposit {
                amount: self.amount,
            },
            &(),
        )
        .await?;
        Ok(())
    }
}

impl<L: EventLog> Idempotent<L> for Transfer {
    type Recorded = String;

    fn record((): &()) -> String {
        "transferred".to_owned()
    }
}

/// Opens a wallet with a balance.
struct OpenWith {
    id: String,
    balance: i64,
}

impl<L: EventLog> Command<L> for OpenWith {
    type Output = ();
    type Error = WalletError;

    async fn decide(&self, work: &mut UnitOfWork<'_, L>) -> Result<(), CommandError<WalletError>> {
        let mut wallet = work.load::<Wallet>(&self.id).await?;
        work.handle(
            &mut wallet,
            WalletCommand::Open {
                owner: "test".into(),
            },
            &(),
        )
        .await?;
        work.handle(
            &mut wallet,
            WalletCommand::Deposit {
                amount: self.balance,
            },
            &(),
        )
        .await?;
        Ok(())
    }
}

fn metadata() -> CommandMetadata {
    CommandMetadata::new("test", ActorKind::System, None)
}

async fn balance(db: &TestDb, id: &str) -> i64 {
    let store = db.store();
    let work = UnitOfWork::new(&store.repository, &metadata());
    work.load::<Wallet>(id).await.unwrap().state().balance
}

#[tokio::test]
async fn a_command_on_two_aggregates_commits_both_in_one_write() {
    let db = TestDb::new().await;
    let store = db.store();
    let log = &store.repository;
    for id in ["a", "b"] {
        bus::run(
            log,
            &metadata(),
            &OpenWith {
                id: id.into(),
                balance: 100,
            },
        )
        .await
        .unwrap();
    }
    let transfer = Transfer {
        from: "a".into(),
        to: "b".into(),
        amount: 30,
    };
    let ((), committed) = bus::run(log, &metadata(), &transfer).await.unwrap();
    let committed = committed.unwrap();
    assert_eq!((committed.first_position, committed.last_position), (5, 6));
    assert_eq!(balance(&db, "a").await, 70);
    assert_eq!(balance(&db, "b").await, 130);
    let actors: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT metadata->>'actor_id' FROM events WHERE global_position IN (5, 6)",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(
        actors,
        vec!["test".to_owned()],
        "the metadata did not reach the events"
    );
    assert_eq!(assert_log_invariants(&db.app).await, 6);
}

#[tokio::test]
async fn a_refusal_by_any_aggregate_writes_nothing() {
    let db = TestDb::new().await;
    let store = db.store();
    let log = &store.repository;
    bus::run(
        log,
        &metadata(),
        &OpenWith {
            id: "a".into(),
            balance: 10,
        },
    )
    .await
    .unwrap();
    bus::run(
        log,
        &metadata(),
        &OpenWith {
            id: "b".into(),
            balance: 10,
        },
    )
    .await
    .unwrap();
    let too_much = Transfer {
        from: "a".into(),
        to: "b".into(),
        amount: 11,
    };
    match bus::run(log, &metadata(), &too_much).await {
        Err(CommandError::Refused(WalletError::InsufficientFunds {
            balance: 10,
            requested: 11,
        })) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The deposit into a closed wallet is refused after the withdrawal was decided: the
    // withdrawal is not written either.
    let to_nowhere = Transfer {
        from: "a".into(),
        to: "missing".into(),
        amount: 5,
    };
    match bus::run(log, &metadata(), &to_nowhere).await {
        Err(CommandError::Refused(WalletError::NotOpen)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(balance(&db, "a").await, 10);
    assert_eq!(assert_log_invariants(&db.app).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_shared_aggregates_are_retried_and_conserve_every_unit() {
    let db = TestDb::new().await;
    let stores = [db.store(), db.store()];
    let wallets = ["w0", "w1", "w2", "w3"];
    for id in wallets {
        bus::run(
            &stores[0].repository,
            &metadata(),
            &OpenWith {
                id: id.into(),
                balance: 1_000,
            },
        )
        .await
        .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..40 {
        let repository = stores[i % 2].repository.clone();
        tasks.push(tokio::spawn(async move {
            let transfer = Transfer {
                from: wallets[i % 4].into(),
                to: wallets[(i + 1) % 4].into(),
                amount: 1 + (i as i64 % 7),
            };
            bus::run(&repository, &metadata(), &transfer).await
        }));
    }
    let mut done = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => done += 1,
            // Retries are bounded; under heavy contention a transfer may give up, whole.
            Err(CommandError::Conflict(_)) => {}
            Err(other) => panic!("transfer failed: {other}"),
        }
    }
    assert!(done > 0);
    let mut total = 0;
    for id in wallets {
        total += balance(&db, id).await;
    }
    assert_eq!(total, 4_000, "a transfer was half-written");
    let events = assert_log_invariants(&db.app).await;
    assert_eq!(events, 8 + 2 * done);
    assert!(stores[0].reader.verify(1, None).await.unwrap().is_intact());
}

fn keyed(key: &str) -> CommandMetadata {
    let mut metadata = metadata();
    metadata.idempotency_key = Some(key.to_owned());
    metadata
}

async fn count_events(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.app)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_idempotent_retry_returns_the_first_result_and_appends_nothing() {
    let db = TestDb::new().await;
    let store = db.store();
    let log = &store.repository;
    for id in ["a", "b"] {
        bus::run(
            log,
            &metadata(),
            &OpenWith {
                id: id.into(),
                balance: 100,
            },
        )
        .await
        .unwrap();
    }
    let transfer = Transfer {
        from: "a".into(),
        to: "b".into(),
        amount: 30,
    };
    let (first, committed) = bus::run_idempotent(log, &keyed("k-1"), &transfer)
        .await
        .unwrap();
    assert_eq!(first, Outcome::Done(()));
    let committed = committed.unwrap();
    let events = count_events(&db).await;

    let (again, replayed) = bus::run_idempotent(log, &keyed("k-1"), &transfer)
        .await
        .unwrap();
    assert_eq!(again, Outcome::Replayed("transferred".to_owned()));
    assert_eq!(
        replayed.map(|c| c.last_position),
        Some(committed.last_position),
        "the replay names another last position"
    );
    assert_eq!(count_events(&db).await, events, "the retry appended events");
    assert_eq!(balance(&db, "a").await, 70);

    let other = Transfer {
        from: "a".into(),
        to: "b".into(),
        amount: 31,
    };
    match bus::run_idempotent(log, &keyed("k-1"), &other).await {
        Err(CommandError::BadInput(message)) => {
            assert!(message.contains("different request"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Another actor's key of the same name is their own.
    let mut someone_else = keyed("k-1");
    someone_else.actor_id = "someone-else".into();
    let (fresh, _) = bus::run_idempotent(log, &someone_else, &other)
        .await
        .unwrap();
    assert_eq!(fresh, Outcome::Done(()));
    assert_eq!(balance(&db, "a").await, 39);
    match bus::run_idempotent(log, &keyed(""), &transfer).await {
        Err(CommandError::BadInput(message)) => assert!(message.contains("1 to 255"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_run_the_command_once() {
    let db = TestDb::new().await;
    let stores = [db.store(), db.store()];
    for id in ["a", "b"] {
        bus::run(
            &stores[0].repository,
            &metadata(),
            &OpenWith {
                id: id.into(),
                balance: 100,
            },
        )
        .await
        .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..12 {
        let repository = stores[i % 2].repository.clone();
        tasks.push(tokio::spawn(async move {
            let transfer = Transfer {
                from: "a".into(),
                to: "b".into(),
                amount: 10,
            };
            bus::run_idempotent(&repository, &keyed("same"), &transfer).await
        }));
    }
    let mut done = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            (Outcome::Done(()), _) => done += 1,
            (Outcome::Replayed(_), _) => {}
        }
    }
    assert_eq!(done, 1);
    assert_eq!(balance(&db, "a").await, 90);
    assert_eq!(balance(&db, "b").await, 110);
}

#[tokio::test]
async fn events_whose_metadata_holds_a_plain_client_ip_or_user_agent_are_not_written() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut plain_ip = metadata();
    plain_ip.client_ip = Some(commands::ClientIp::Plain("192.0.2.1".parse().unwrap()));
    let mut plain_agent = metadata();
    plain_agent.user_agent = Some(commands::UserAgent::plain("curl/8.5.0"));
    for plain in [plain_ip, plain_agent] {
        match bus::run(
            &store.repository,
            &plain,
            &OpenWith {
                id: "a".into(),
                balance: 1,
            },
        )
        .await
        {
            Err(CommandError::Infrastructure(message)) => {
                assert!(
                    message.contains("client IP and user agent must be sealed"),
                    "{message}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(count_events(&db).await, 0);
}
