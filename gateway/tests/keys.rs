//! The access-token keyring against a real PostgreSQL: the first key, processes that start
//! together, rotation with its overlap, the JWKS, and what the table holds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chrono::{DateTime, SubsecRound as _, Utc};
use commands::identity::Clock;
use commands::privacy::{MasterKey, open_secret};
use domain::identity::credentials::SealedSecret;
use gateway::auth::jwt::{AccessGrant, TokenError, TokenPolicy};
use gateway::auth::keys::{self, ACTIVATION_DELAY, KeyError, KeyState, Keyring, MIN_OVERLAP};
use serde_json::Value;
use tests::TestDb;
use uuid::Uuid;

/// A clock that moves only when told.
#[derive(Debug)]
struct TestClock(Mutex<DateTime<Utc>>);

impl TestClock {
    fn starting_now() -> Arc<Self> {
        Arc::new(Self(Mutex::new(Utc::now().trunc_subsecs(0))))
    }

    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += chrono::Duration::from_std(by).unwrap();
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

fn master() -> MasterKey {
    MasterKey::from_bytes([42; 32])
}

fn policy() -> TokenPolicy {
    TokenPolicy::new("https://platform.test", "platform-api").unwrap()
}

fn grant() -> AccessGrant {
    AccessGrant::user(Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), false)
}

async fn keyring(db: &TestDb, clock: &Arc<TestClock>) -> Keyring {
    Keyring::load_with_clock(&db.app, &master(), policy(), clock.clone())
        .await
        .unwrap()
}

async fn stored_kids(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar("SELECT kid FROM signing_keys ORDER BY activated_at")
        .fetch_all(&db.admin)
        .await
        .unwrap()
}

fn jwks_kids(keyring: &Keyring) -> Vec<String> {
    keyring.jwks()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_first_load_makes_one_signing_key() {
    let db = TestDb::new().await;
    let clock = TestClock::starting_now();
    let keyring = keyring(&db, &clock).await;

    let kids = stored_kids(&db).await;
    assert_eq!(kids.len(), 1);
    assert_eq!(keyring.signing_kid(), Some(kids[0].clone()));

    let again = self::keyring(&db, &clock).await;
    assert_eq!(stored_kids(&db).await, kids, "a second load makes no key");
    let issued = again.sign(&grant()).unwrap();
    assert_eq!(issued.kid, kids[0]);
    assert_eq!(keyring.verify(&issued.token), Ok(issued.claims));
}

#[tokio::test]
async fn processes_that_start_together_make_only_one_key() {
    let db = TestDb::new().await;
    let clock = TestClock::starting_now();
    let loads = (0..8).map(|_| {
        let (pool, clock) = (db.app.clone(), clock.clone());
        tokio::spawn(async move {
            Keyring::load_with_clock(&pool, &master(), policy(), clock)
                .await
                .unwrap()
        })
    });
    let keyrings: Vec<Keyring> = futures::future::join_all(loads)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let kids = stored_kids(&db).await;
    assert_eq!(kids.len(), 1);
    for keyring in &keyrings {
        assert_eq!(keyring.signing_kid(), Some(kids[0].clone()));
    }
    let token = keyrings[0].sign(&grant()).unwrap().token;
    assert!(keyrings[7].verify(&token).is_ok());
}

#[tokio::test]
async fn a_rotation_is_published_before_it_signs_and_the_old_key_verifies_through_its_overlap() {
    let db = TestDb::new().await;
    let clock = TestClock::starting_now();
    let this = keyring(&db, &clock).await;
    let other = keyring(&db, &clock).await;
    let old_kid = this.signing_kid().unwrap();
    let old_token = this.sign(&grant()).unwrap();

    let rotation = keys::rotate_at(&db.app, &master(), MIN_OVERLAP, clock.now())
        .await
        .unwrap();
    assert_eq!(rotation.retired.len(), 1);
    assert_eq!(rotation.retired[0].kid, old_kid);
    assert_eq!(
        rotation.activates_at,
        clock.now() + chrono::Duration::from_std(ACTIVATION_DELAY).unwrap()
    );
    this.refresh().await.unwrap();

    // Published: both keys verify and are in the JWKS, and the old key still signs.
    assert_eq!(
        jwks_kids(&this),
        vec![rotation.kid.clone(), old_kid.clone()]
    );
    assert_eq!(this.signing_kid(), Some(old_kid.clone()));
    assert_eq!(this.verify(&old_token.token), Ok(old_token.claims.clone()));

    // Activated: the new key signs, on this process's clock; a process that has not
    // refreshed yet does not know it, and one that has verifies its tokens.
    clock.advance(ACTIVATION_DELAY);
    let new_token = this.sign(&grant()).unwrap();
    assert_eq!(new_token.kid, rotation.kid);
    assert_eq!(
        other.verify(&new_token.token),
        Err(TokenError::UnknownKey(rotation.kid.clone()))
    );
    other.refresh().await.unwrap();
    assert!(other.verify(&new_token.token).is_ok());
    assert_eq!(other.signing_kid(), Some(rotation.kid.clone()));

    // Within the overlap, the old key's token still verifies (it was signed at the start,
    // so let it be young enough: move the clock to just before it expires).
    clock.advance(Duration::from_secs(14 * 60));
    assert_eq!(this.verify(&old_token.token), Ok(old_token.claims.clone()));
    assert_eq!(jwks_kids(&this).len(), 2);

    // After the overlap, the old key verifies nothing and leaves the JWKS.
    clock.advance(MIN_OVERLAP);
    assert_eq!(
        this.verify(&old_token.token),
        Err(TokenError::UnknownKey(old_kid.clone()))
    );
    assert_eq!(jwks_kids(&this), vec![rotation.kid.clone()]);
    this.refresh().await.unwrap();
    assert_eq!(jwks_kids(&this), vec![rotation.kid.clone()]);
    assert!(this.verify(&this.sign(&grant()).unwrap().token).is_ok());
}

#[tokio::test]
async fn the_jwks_gives_every_verifying_key_as_an_ed25519_jwk() {
    let db = TestDb::new().await;
    let clock = TestClock::starting_now();
    let keyring = keyring(&db, &clock).await;
    keys::rotate_at(&db.app, &master(), MIN_OVERLAP, clock.now())
        .await
        .unwrap();
    keyring.refresh().await.unwrap();

    let jwks = keyring.jwks();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    for key in keys {
        let mut fields: Vec<&str> = key
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(fields, ["alg", "crv", "kid", "kty", "use", "x"]);
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert_eq!(key["alg"], "EdDSA");
        assert_eq!(key["use"], "sig");
        let kid = key["kid"].as_str().unwrap();
        let x = URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap();
        let stored: Vec<u8> =
            sqlx::query_scalar("SELECT public_key FROM signing_keys WHERE kid = $1")
                .bind(kid)
                .fetch_one(&db.admin)
                .await
                .unwrap();
        assert_eq!(x, stored);
    }
}

#[tokio::test]
async fn a_private_key_is_stored_only_sealed() {
    let db = TestDb::new().await;
    let clock = TestClock::starting_now();
    keyring(&db, &clock).await;
    let (kid, public_key, sealed): (String, Vec<u8>, String) =
        sqlx::query_as("SELECT kid, public_key, private_key_sealed FROM signing_keys")
            .fetch_one(&db.admin)
            .await
            .unwrap();

    // What the sealed text opens to: the PKCS#8 document, whose 32-byte seed follows a
    // 16-byte prefix (RFC 8410).
    let sealed_secret = SealedSecret::from_sealed(sealed.clone());
    let secrets = master().secrets_key();
    let document =
        open_secret(&secrets, &format!("jwt signing key:{kid}"), &sealed_secret).unwrap();
    assert_eq!(&document[5..16], hex("300506032b657004220420").as_slice());
    let seed = &document[16..48];

    let stored = sealed.as_bytes();
    for secret in [seed, document.as_slice()] {
        assert!(!contains(stored, secret), "the raw private key is stored");
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(secret);
            assert!(
                !sealed.contains(&encoded),
                "the private key is stored in base64"
            );
        }
        assert!(
            !sealed.contains(&hex_string(secret)),
            "the private key is stored in hex"
        );
    }
    assert_eq!(public_key.len(), 32);
    assert!(!contains(stored, &public_key));

    let other_master = MasterKey::from_bytes([43; 32]).secrets_key();
    assert!(
        open_secret(
            &other_master,
            &format!("jwt signing key:{kid}"),
            &sealed_secret
        )
        .is_err()
    );
}

#[tokio::test]
async fn a_keyring_does_not_load_with_another_master_key() {
    let db = TestDb::new().await;
    let clock = TestClock::starting_now();
    keyring(&db, &clock).await;
    let refused = Keyring::load_with_clock(
        &db.app,
        &MasterKey::from_bytes([1; 32]),
        policy(),
        clock.clone(),
    )
    .await
    .unwrap_err();
    assert!(matches!(refused, KeyError::Unseal { .. }), "{refused:?}");
}

#[tokio::test]
async fn a_rotation_refuses_an_overlap_shorter_than_a_token_can_live() {
    let db = TestDb::new().await;
    let clock = TestClock::starting_now();
    keyring(&db, &clock).await;
    let refused = keys::rotate_at(
        &db.app,
        &master(),
        MIN_OVERLAP - Duration::from_secs(1),
        clock.now(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(refused, KeyError::OverlapOutOfRange { .. }),
        "{refused:?}"
    );
    assert_eq!(stored_kids(&db).await.len(), 1);
}

#[tokio::test]
async fn a_rotation_with_no_key_signing_activates_at_once() {
    let db = TestDb::new().await;
    let clock = TestClock::starting_now();
    let rotation = keys::rotate_at(&db.app, &master(), MIN_OVERLAP, clock.now())
        .await
        .unwrap();
    assert_eq!(rotation.activates_at, clock.now());
    assert!(rotation.retired.is_empty());
    let keyring = keyring(&db, &clock).await;
    assert_eq!(keyring.signing_kid(), Some(rotation.kid));
    assert_eq!(stored_kids(&db).await.len(), 1);
}

#[tokio::test]
async fn a_retired_key_loses_its_private_half_at_the_next_rotation() {
    let db = TestDb::new().await;
    let clock = TestClock::starting_now();
    let keyring = keyring(&db, &clock).await;
    let first = keyring.signing_kid().unwrap();
    keys::rotate_at(&db.app, &master(), MIN_OVERLAP, clock.now())
        .await
        .unwrap();
    clock.advance(ACTIVATION_DELAY);
    keys::rotate_at(&db.app, &master(), MIN_OVERLAP, clock.now())
        .await
        .unwrap();
    let private: Option<String> =
        sqlx::query_scalar("SELECT private_key_sealed FROM signing_keys WHERE kid = $1")
            .bind(&first)
            .fetch_one(&db.admin)
            .await
            .unwrap();
    assert_eq!(private, None);
    // It still verifies its tokens during its overlap.
    keyring.refresh().await.unwrap();
    assert!(jwks_kids(&keyring).contains(&first));
}

#[tokio::test]
async fn the_list_shows_each_key_in_its_state() {
    let db = TestDb::new().await;
    let clock = TestClock::starting_now();
    let keyring = keyring(&db, &clock).await;
    let first = keyring.signing_kid().unwrap();
    let rotation = keys::rotate(&db.app, &master(), keys::DEFAULT_OVERLAP)
        .await
        .unwrap();
    let listed = keys::list(&db.app).await.unwrap();
    let states: Vec<(String, KeyState)> = listed
        .iter()
        .map(|key| (key.kid.clone(), key.state))
        .collect();
    assert_eq!(
        states,
        [
            (rotation.kid.clone(), KeyState::Pending),
            (first, KeyState::Active)
        ]
    );
    assert!(listed.iter().all(|key| key.has_private_key));
    assert!(
        rotation
            .to_string()
            .starts_with(&format!("key {} signs from ", rotation.kid))
    );
}

#[tokio::test]
async fn the_application_role_cannot_delete_or_alter_a_key() {
    let db = TestDb::new().await;
    let clock = TestClock::starting_now();
    let kid = keyring(&db, &clock).await.signing_kid().unwrap();
    for statement in [
        "DELETE FROM signing_keys WHERE kid = $1",
        "UPDATE signing_keys SET public_key = '\\x00' WHERE kid = $1",
        "UPDATE signing_keys SET kid = 'forged' WHERE kid = $1",
        "UPDATE signing_keys SET activated_at = now() WHERE kid = $1",
    ] {
        let refused = sqlx::query(statement).bind(&kid).execute(&db.app).await;
        let code = refused
            .unwrap_err()
            .as_database_error()
            .and_then(|err| err.code().map(|code| code.into_owned()));
        assert_eq!(code.as_deref(), Some("42501"), "{statement}");
    }
}

#[tokio::test]
async fn the_table_refuses_keys_this_gateway_would_not_make() {
    let db = TestDb::new().await;
    for (kid, algorithm, public_key) in [
        ("../etc", "EdDSA", vec![0u8; 32]),
        ("ok", "HS256", vec![0u8; 32]),
        ("ok", "EdDSA", vec![0u8; 31]),
    ] {
        let refused = sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, public_key, private_key_sealed, activated_at)
             VALUES ($1, $2, $3, 'sealed', now())",
        )
        .bind(kid)
        .bind(algorithm)
        .bind(public_key)
        .execute(&db.app)
        .await;
        let code = refused
            .unwrap_err()
            .as_database_error()
            .and_then(|err| err.code().map(|code| code.into_owned()));
        assert_eq!(code.as_deref(), Some("23514"), "{kid} {algorithm}");
    }
}

#[tokio::test]
async fn a_kid_with_sql_in_it_is_refused_before_the_keyring_looks() {
    let db = TestDb::new().await;
    let clock = TestClock::starting_now();
    let keyring = keyring(&db, &clock).await;
    let token = keyring.sign(&grant()).unwrap().token;
    let payload = token.split('.').nth(1).unwrap();
    let header = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&serde_json::json!({
            "alg": "EdDSA", "typ": "at+jwt", "kid": "' OR 1=1 --"
        }))
        .unwrap(),
    );
    let forged = format!("{header}.{payload}.{}", token.split('.').nth(2).unwrap());
    assert_eq!(keyring.verify(&forged), Err(TokenError::BadKeyId));
    let value: Value = keyring.jwks();
    assert_eq!(value["keys"].as_array().unwrap().len(), 1);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
