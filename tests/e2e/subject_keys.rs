//! Subjects' data keys: made once, stored wrapped, destroyed for good, and never stored in
//! a form the database could read.

use commands::privacy::{self, MasterKey, Opened, PrivacyError, SubjectKeys};
use domain::personal::SubjectId;
use eventstore::PgSubjectKeys;
use tests::TestDb;
use uuid::Uuid;

fn master() -> MasterKey {
    MasterKey::from_bytes([42; 32])
}

#[tokio::test]
async fn a_subject_gets_one_key_which_seals_and_opens_their_data() {
    let db = TestDb::new().await;
    let keys = PgSubjectKeys::new(db.app.clone(), master().key_wrapping_key());
    let subject = SubjectId::from_uuid(Uuid::now_v7());
    assert!(keys.find(subject).await.unwrap().is_none());
    let (a, b) = tokio::join!(keys.key_for(subject), keys.key_for(subject));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "two first uses made two keys");
    assert_eq!(keys.find(subject).await.unwrap(), Some(a.clone()));

    let sealed = privacy::seal(&a, subject, "email", "ada@example.org").unwrap();
    let stored: Vec<u8> = sqlx::query_scalar("SELECT wrapped_key FROM subject_keys")
        .fetch_one(&db.admin)
        .await
        .unwrap();
    assert!(
        !stored.windows(32).any(|w| w == a.as_bytes()),
        "the key is stored in the clear"
    );
    let key = keys.find(subject).await.unwrap();
    assert_eq!(
        privacy::open(key.as_ref(), &sealed, "email").unwrap(),
        Opened::Plain("ada@example.org".into())
    );
}

#[tokio::test]
async fn a_forgotten_subjects_data_stays_sealed_and_no_new_key_is_made() {
    let db = TestDb::new().await;
    let keys = PgSubjectKeys::new(db.app.clone(), master().key_wrapping_key());
    let subject = SubjectId::from_uuid(Uuid::now_v7());
    let key = keys.key_for(subject).await.unwrap();
    let sealed = privacy::seal(&key, subject, "name", "Ada Lovelace").unwrap();

    assert!(keys.forget(subject).await.unwrap());
    assert!(
        !keys.forget(subject).await.unwrap(),
        "a second forget destroyed something"
    );
    assert!(keys.find(subject).await.unwrap().is_none());
    let lost = keys.find(subject).await.unwrap();
    assert_eq!(
        privacy::open(lost.as_ref(), &sealed, "name").unwrap(),
        Opened::Forgotten
    );
    match keys.key_for(subject).await {
        Err(PrivacyError::Forgotten(who)) => assert_eq!(who, subject),
        other => panic!("a forgotten subject got a key: {other:?}"),
    }

    // A subject forgotten before they ever had a key can never get one either.
    let never = SubjectId::from_uuid(Uuid::now_v7());
    assert!(!keys.forget(never).await.unwrap());
    assert!(matches!(
        keys.key_for(never).await,
        Err(PrivacyError::Forgotten(_))
    ));
}

#[tokio::test]
async fn a_destroyed_key_cannot_be_restored_or_deleted_even_by_the_owner() {
    let db = TestDb::new().await;
    let keys = PgSubjectKeys::new(db.app.clone(), master().key_wrapping_key());
    let subject = SubjectId::from_uuid(Uuid::now_v7());
    keys.key_for(subject).await.unwrap();
    keys.forget(subject).await.unwrap();
    for statement in [
        "UPDATE subject_keys SET wrapped_key = '\\x00', destroyed_at = NULL",
        "DELETE FROM subject_keys",
    ] {
        let err = sqlx::query(statement).execute(&db.admin).await.unwrap_err();
        assert_eq!(
            err.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("42501"),
            "{statement}: {err}"
        );
    }
    // The application role cannot delete either, or replace a live key.
    let other = SubjectId::from_uuid(Uuid::now_v7());
    keys.key_for(other).await.unwrap();
    let err = sqlx::query("UPDATE subject_keys SET wrapped_key = '\\x00' WHERE subject_id = $1")
        .bind(other.as_uuid())
        .execute(&db.app)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("42501")
    );
}

#[tokio::test]
async fn a_key_store_with_another_master_key_cannot_open_the_keys() {
    let db = TestDb::new().await;
    let keys = PgSubjectKeys::new(db.app.clone(), master().key_wrapping_key());
    let subject = SubjectId::from_uuid(Uuid::now_v7());
    keys.key_for(subject).await.unwrap();
    let wrong = PgSubjectKeys::new(
        db.app.clone(),
        MasterKey::from_bytes([7; 32]).key_wrapping_key(),
    );
    let err = wrong.find(subject).await.unwrap_err();
    assert!(err.to_string().contains("master key"), "{err}");
}
