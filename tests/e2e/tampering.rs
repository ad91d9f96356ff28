//! Tampering: acting as a superuser with the immutability trigger disabled, alter the log;
//! verification names the exact first bad position and why. The application role cannot
//! alter the log at all.

use eventstore::FaultReason;
use sqlx::PgPool;
use tests::{TestDb, TestStore};
use uuid::Uuid;

use crate::append;

/// A log of 30 events over five aggregates and three chains (two tenants and the platform).
async fn seeded() -> (TestDb, TestStore) {
    let db = TestDb::new().await;
    let store = db.store();
    let tenants = [Some(Uuid::now_v7()), Some(Uuid::now_v7()), None];
    let mut next_sequence = [1_usize; 5];
    for round in 0..10 {
        for aggregate in [round % 5, (round + 2) % 5] {
            let count = 1 + (round + aggregate) % 2;
            append(
                &store.repository,
                &format!("ledger-{aggregate}"),
                next_sequence[aggregate],
                count,
                tenants[aggregate % 3],
            )
            .await
            .unwrap();
            next_sequence[aggregate] += count;
        }
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.admin)
        .await
        .unwrap();
    assert_eq!(total, 30);
    let report = store.reader.verify(1, None).await.unwrap();
    assert!(report.is_intact(), "{:?}", report.fault);
    (db, store)
}

/// Runs `statements` as the superuser with the immutability triggers disabled.
async fn as_superuser_without_triggers(admin: &PgPool, statements: &[&str]) {
    let mut tx = admin.begin().await.unwrap();
    sqlx::query("ALTER TABLE events DISABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    for statement in statements {
        sqlx::query(statement).execute(&mut *tx).await.unwrap();
    }
    sqlx::query("ALTER TABLE events ENABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn an_edited_byte_of_a_payload_is_named_by_position() {
    let (db, store) = seeded().await;
    // Change one byte of the stored payload text of event 12: the first letter of its
    // `entry` string.
    as_superuser_without_triggers(
        &db.admin,
        &[r#"UPDATE events
                SET payload = overlay(payload::text placing 'X'
                                      from strpos(payload::text, '"ledger-') + 1 for 1)::json
              WHERE global_position = 12"#],
    )
    .await;
    let edited: String =
        sqlx::query_scalar("SELECT payload->>'entry' FROM events WHERE global_position = 12")
            .fetch_one(&db.admin)
            .await
            .unwrap();
    assert!(edited.starts_with("Xedger-"), "{edited}");
    let report = store.reader.verify(1, None).await.unwrap();
    let fault = report.fault.expect("the edit is detected");
    assert_eq!(fault.position, 12);
    assert!(
        matches!(fault.reason, FaultReason::HashMismatch { .. }),
        "{fault}"
    );
    assert!(
        fault
            .to_string()
            .starts_with("position 12: content altered"),
        "{fault}"
    );
    assert_eq!(report.verified, 11);

    // A range that ends before the edit still verifies; one that starts after it too.
    assert!(store.reader.verify(1, Some(11)).await.unwrap().is_intact());
    assert!(store.reader.verify(13, None).await.unwrap().is_intact());
}

#[tokio::test]
async fn an_edited_record_time_or_tenant_is_detected_too() {
    let (db, store) = seeded().await;
    as_superuser_without_triggers(
        &db.admin,
        &[
            "UPDATE events SET recorded_at = recorded_at + interval '1 microsecond'
            WHERE global_position = 7",
        ],
    )
    .await;
    let fault = store.reader.verify(1, None).await.unwrap().fault.unwrap();
    assert_eq!(fault.position, 7);
    assert!(
        matches!(fault.reason, FaultReason::HashMismatch { .. }),
        "{fault}"
    );

    let (db, store) = seeded().await;
    as_superuser_without_triggers(
        &db.admin,
        &["UPDATE events SET tenant_id = NULL WHERE global_position = 3 AND tenant_id IS NOT NULL"],
    )
    .await;
    let moved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE global_position = 3 AND tenant_id IS NULL",
    )
    .fetch_one(&db.admin)
    .await
    .unwrap();
    assert_eq!(moved, 1, "event 3 belongs to a tenant in the seeded log");
    let fault = store.reader.verify(1, None).await.unwrap().fault.unwrap();
    assert_eq!(fault.position, 3);
}

#[tokio::test]
async fn a_deleted_event_in_the_middle_is_named_by_position() {
    let (db, store) = seeded().await;
    as_superuser_without_triggers(
        &db.admin,
        &["DELETE FROM events WHERE global_position = 15"],
    )
    .await;
    let report = store.reader.verify(1, None).await.unwrap();
    let fault = report.fault.expect("the deletion is detected");
    assert_eq!(fault.position, 15);
    assert_eq!(
        fault.reason,
        FaultReason::Missing {
            next_present: Some(16)
        }
    );
    assert_eq!(
        fault.to_string(),
        "position 15: event missing (the next event present is at 16)"
    );
}

#[tokio::test]
async fn a_deleted_tail_is_named_by_position() {
    let (db, store) = seeded().await;
    as_superuser_without_triggers(
        &db.admin,
        &["DELETE FROM events WHERE global_position >= 29"],
    )
    .await;
    let fault = store.reader.verify(1, None).await.unwrap().fault.unwrap();
    assert_eq!(fault.position, 29);
    assert_eq!(fault.reason, FaultReason::Missing { next_present: None });
}

#[tokio::test]
async fn two_swapped_events_are_named_by_the_first_position() {
    let (db, store) = seeded().await;
    as_superuser_without_triggers(
        &db.admin,
        &[
            "UPDATE events SET global_position = 1000000 WHERE global_position = 10",
            "UPDATE events SET global_position = 10 WHERE global_position = 20",
            "UPDATE events SET global_position = 20 WHERE global_position = 1000000",
        ],
    )
    .await;
    let fault = store.reader.verify(1, None).await.unwrap().fault.unwrap();
    assert_eq!(fault.position, 10);
    assert!(
        matches!(fault.reason, FaultReason::PrevHashMismatch { .. }),
        "{fault}"
    );
}

#[tokio::test]
async fn a_moved_log_head_is_detected() {
    let (db, store) = seeded().await;
    sqlx::query("UPDATE log_head SET hash = decode(repeat('11', 32), 'hex')")
        .execute(&db.admin)
        .await
        .unwrap();
    let fault = store.reader.verify(1, None).await.unwrap().fault.unwrap();
    assert_eq!(fault.position, 30);
    assert!(
        matches!(fault.reason, FaultReason::HeadMismatch { .. }),
        "{fault}"
    );
}

#[tokio::test]
async fn a_head_moved_back_over_existing_events_is_detected() {
    let (db, store) = seeded().await;
    sqlx::query(
        "UPDATE log_head SET position = 25, hash = (SELECT hash FROM events WHERE global_position = 25)",
    )
    .execute(&db.admin)
    .await
    .unwrap();
    let fault = store.reader.verify(1, None).await.unwrap().fault.unwrap();
    assert_eq!(fault.position, 26);
    assert_eq!(
        fault.reason,
        FaultReason::BeyondHead {
            head_position: 25,
            last_position: 30
        }
    );
}

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|db| db.code())
        .map(|code| code.into_owned())
}

#[tokio::test]
async fn the_application_role_cannot_change_or_remove_events() {
    let (db, store) = seeded().await;
    for statement in [
        "UPDATE events SET payload = '{}' WHERE global_position = 1",
        "DELETE FROM events WHERE global_position = 1",
        "TRUNCATE events",
        "ALTER TABLE events DISABLE TRIGGER USER",
        "DROP TRIGGER events_reject_update_delete ON events",
    ] {
        let err = sqlx::query(statement).execute(&db.app).await.unwrap_err();
        assert_eq!(
            sqlstate(&err).as_deref(),
            Some("42501"),
            "{statement}: {err}"
        );
    }
    // Even the owner is refused while the triggers are on.
    for statement in [
        "UPDATE events SET payload = '{}' WHERE global_position = 1",
        "DELETE FROM events WHERE global_position = 1",
        "TRUNCATE events",
    ] {
        let err = sqlx::query(statement).execute(&db.admin).await.unwrap_err();
        assert!(
            err.to_string().contains("the event log is append-only"),
            "{statement}: {err}"
        );
    }
    assert!(store.reader.verify(1, None).await.unwrap().is_intact());
}
