//! Signed checkpoints: the checkpointer signs the head with the tenant heads tree, every N
//! events or T seconds, once per position however many processes sign, writes a witness
//! first, and old checkpoints stay verifiable after a key rotation. Nothing of the private
//! key reaches the database.

use std::sync::Arc;
use std::time::Duration;

use eventstore::audit::checkpoint::CheckpointItem;
use eventstore::audit::merkle::{self, ChainHead};
use eventstore::audit::{Checkpoint, Checkpointer, CheckpointerConfig, SigningKey, store};
use eventstore::{Digest32, LogReader};
use sqlx::Row as _;
use tests::{TestDb, TestStore};
use uuid::Uuid;

use crate::append;

/// Appends `rounds` × 3 events over two tenants and the platform chain.
async fn seed(store: &TestStore, tenants: [Option<Uuid>; 3], first_round: usize, rounds: usize) {
    for round in first_round..first_round + rounds {
        for (i, tenant) in tenants.iter().enumerate() {
            append(
                &store.repository,
                &format!("ledger-{i}"),
                round + 1,
                1,
                *tenant,
            )
            .await
            .unwrap();
        }
    }
}

fn checkpointer(db: &TestDb, key: &Arc<SigningKey>, config: CheckpointerConfig) -> Checkpointer {
    Checkpointer::new(db.app.clone(), key.clone(), config)
}

/// The tenant heads tree of `position`, recomputed from the whole log read in order.
async fn heads_root_by_replay(reader: &LogReader, position: i64) -> Digest32 {
    use futures::TryStreamExt as _;
    let mut heads = std::collections::BTreeMap::new();
    let events: Vec<_> = reader.read_range(1, position).try_collect().await.unwrap();
    for event in events {
        heads.insert(
            event.tenant_id,
            ChainHead {
                tenant_id: event.tenant_id,
                position: event.global_position,
                hash: event.hash,
            },
        );
    }
    let leaves: Vec<_> = heads.values().map(ChainHead::leaf_hash).collect();
    merkle::root(&leaves)
}

#[tokio::test]
async fn a_checkpoint_signs_the_head_and_every_chains_head() {
    let db = TestDb::new().await;
    let store = db.store();
    let tenants = [Some(Uuid::now_v7()), Some(Uuid::now_v7()), None];
    let key = Arc::new(SigningKey::generate().unwrap().0);
    let mut signer = checkpointer(&db, &key, CheckpointerConfig::default());

    assert_eq!(
        signer.checkpoint_now().await.unwrap(),
        None,
        "an empty log has nothing to sign"
    );
    seed(&store, tenants, 0, 4).await;
    let first = signer
        .checkpoint_now()
        .await
        .unwrap()
        .expect("a checkpoint");
    let head = store.reader.head().await.unwrap();
    assert_eq!(
        (first.position, first.head_hash),
        (head.position, head.hash)
    );
    assert!(first.verifies_under(key.public()));
    assert_eq!(
        first.tenants_root,
        heads_root_by_replay(&store.reader, 12).await
    );
    assert_eq!(
        signer.checkpoint_now().await.unwrap(),
        None,
        "a signed head is not signed again"
    );

    // The second checkpoint folds only the new events into the heads it kept.
    seed(&store, [tenants[0], tenants[0], tenants[0]], 4, 2).await;
    let second = signer
        .checkpoint_now()
        .await
        .unwrap()
        .expect("a checkpoint");
    assert_eq!(second.position, 18);
    assert_eq!(
        second.tenants_root,
        heads_root_by_replay(&store.reader, 18).await
    );

    // A fresh signer (another process) computes the same tree from the table.
    let heads = store::chain_heads_at(&db.app, 18).await.unwrap();
    assert_eq!(heads.len(), 3);
    assert_eq!(
        heads[0].tenant_id, None,
        "the platform chain is the first leaf"
    );
    let leaves: Vec<_> = heads.iter().map(ChainHead::leaf_hash).collect();
    assert_eq!(merkle::root(&leaves), second.tenants_root);

    let stored = store::checkpoints_between(&db.app, 1, 100).await.unwrap();
    assert_eq!(stored, vec![first, second]);
    assert_eq!(
        store::public_keys(&db.app).await.unwrap(),
        vec![key.public().clone()]
    );
}

#[tokio::test]
async fn concurrent_signers_sign_each_position_once() {
    let db = TestDb::new().await;
    let store = db.store();
    seed(&store, [Some(Uuid::now_v7()), None, None], 0, 3).await;
    let key = Arc::new(SigningKey::generate().unwrap().0);
    let mut signers: Vec<_> = (0..4)
        .map(|_| checkpointer(&db, &key, CheckpointerConfig::default()))
        .collect();
    let made = futures::future::join_all(signers.iter_mut().map(|s| s.checkpoint_now())).await;
    let signed = made
        .into_iter()
        .map(|outcome| outcome.unwrap())
        .filter(Option::is_some)
        .count();
    assert_eq!(
        signed, 1,
        "one signer signs, the others find the head signed"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_checkpoints")
        .fetch_one(&db.admin)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn the_running_checkpointer_signs_every_n_events_and_after_the_interval() {
    let db = TestDb::new().await;
    let store = db.store();
    let key = Arc::new(SigningKey::generate().unwrap().0);
    let witness = std::env::temp_dir().join(format!("witness-{}.ndjson", Uuid::new_v4()));
    let config = CheckpointerConfig {
        every: 5,
        interval: Duration::from_secs(3600),
        poll: Duration::from_millis(20),
        witness: Some(witness.clone()),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(checkpointer(&db, &key, config).run(async {
        let _ = stopped.await;
    }));

    // Four events are not enough for a checkpoint every five.
    seed(&store, [None, None, None], 0, 1).await;
    append(&store.repository, "ledger-x", 1, 1, None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_checkpoints")
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert_eq!(none, 0, "signed before `every` events");

    append(&store.repository, "ledger-x", 2, 1, None)
        .await
        .unwrap();
    let signed = wait_for_checkpoint(&db, 5).await;
    assert_eq!(signed.position, 5);
    let _ = stop.send(());
    task.await.unwrap();

    // The witness holds the same checkpoint, as its export item.
    let text = std::fs::read_to_string(&witness).unwrap();
    let lines: Vec<CheckpointItem> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines, vec![signed.to_item()]);
    std::fs::remove_file(&witness).unwrap();

    // With a short interval, one more event is signed without waiting for five.
    let config = CheckpointerConfig {
        every: 1_000,
        interval: Duration::from_millis(100),
        poll: Duration::from_millis(20),
        witness: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(checkpointer(&db, &key, config).run(async {
        let _ = stopped.await;
    }));
    append(&store.repository, "ledger-x", 3, 1, None)
        .await
        .unwrap();
    assert_eq!(wait_for_checkpoint(&db, 6).await.position, 6);
    let _ = stop.send(());
    task.await.unwrap();
}

async fn wait_for_checkpoint(db: &TestDb, position: i64) -> Checkpoint {
    for _ in 0..500 {
        if let Some(found) = store::checkpoint_at_or_before(&db.app, i64::MAX)
            .await
            .unwrap()
            .filter(|found| found.position >= position)
        {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no checkpoint at {position} within 5 s");
}

#[tokio::test]
async fn after_a_rotation_old_checkpoints_verify_under_their_own_key() {
    let db = TestDb::new().await;
    let store = db.store();
    seed(&store, [None, None, None], 0, 1).await;
    let old = Arc::new(SigningKey::generate().unwrap().0);
    let first = checkpointer(&db, &old, CheckpointerConfig::default())
        .checkpoint_now()
        .await
        .unwrap()
        .unwrap();
    seed(&store, [None, None, None], 1, 1).await;
    let new = Arc::new(SigningKey::generate().unwrap().0);
    let second = checkpointer(&db, &new, CheckpointerConfig::default())
        .checkpoint_now()
        .await
        .unwrap()
        .unwrap();

    let keys = store::public_keys(&db.app).await.unwrap();
    assert_eq!(keys.len(), 2);
    for checkpoint in [first, second] {
        let key = keys.iter().find(|key| key.kid == checkpoint.kid).unwrap();
        assert!(checkpoint.verifies_under(key));
        let other = keys.iter().find(|key| key.kid != checkpoint.kid).unwrap();
        assert!(!checkpoint.verifies_under(other));
    }
}

#[tokio::test]
async fn checkpoints_cannot_be_changed_or_removed_and_the_database_holds_no_private_key() {
    let db = TestDb::new().await;
    let store = db.store();
    seed(&store, [None, None, None], 0, 1).await;
    let (key, pem) = SigningKey::generate().unwrap();
    checkpointer(&db, &Arc::new(key), CheckpointerConfig::default())
        .checkpoint_now()
        .await
        .unwrap()
        .unwrap();
    for statement in [
        "UPDATE audit_checkpoints SET position = position + 1",
        "DELETE FROM audit_checkpoints",
        "DELETE FROM audit_keys",
        "TRUNCATE audit_checkpoints",
    ] {
        let err = sqlx::query(statement).execute(&db.admin).await.unwrap_err();
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
        let err = sqlx::query(statement).execute(&db.app).await.unwrap_err();
        assert!(
            !err.to_string().is_empty(),
            "{statement} by the application role"
        );
    }

    // The key's secret half: the 32-byte seed, the OCTET STRING inside the PKCS#8
    // privateKey OCTET STRING (04 22 04 20 <seed>).
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let at = der
        .windows(4)
        .position(|window| window == [0x04, 0x22, 0x04, 0x20])
        .unwrap();
    let seed = &der[at + 4..at + 36];
    let seed_hex = hex::encode(seed);
    let rows = sqlx::query(
        "SELECT encode(public_key, 'hex') AS k FROM audit_keys
          UNION ALL SELECT encode(signature, 'hex') FROM audit_checkpoints",
    )
    .fetch_all(&db.admin)
    .await
    .unwrap();
    for row in rows {
        let text: String = row.try_get("k").unwrap();
        assert!(
            !text.contains(&seed_hex),
            "the private key is in the database"
        );
    }
}
