//! Identity commands through the real event store: a tenant with its owner, registration
//! races, idempotent retries, logins with lockout, refresh-token rotation and reuse, and
//! permission checks. No personal data or secret reaches the events table in plaintext.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use commands::bus::Outcome;
use commands::identity::{Clock, Identity, IdentityError, LoginOutcome, Registered};
use commands::privacy::MasterKey;
use commands::privacy::{self, Opened, SubjectKeys};
use commands::security::password::{Argon2id, PasswordHasher};
use commands::{ClientIp, CommandMetadata};
use domain::ActorKind;
use domain::personal::PersonalData;
use eventstore::{EventRepository, PgSubjectKeys};
use tests::TestDb;
use uuid::Uuid;

use crate::events_in_log;

/// A clock the test moves by hand.
#[derive(Debug)]
pub(crate) struct TestClock(Mutex<DateTime<Utc>>);

impl TestClock {
    pub(crate) fn advance(&self, by: Duration) {
        if let Ok(mut now) = self.0.lock() {
            *now += by;
        }
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.lock().map(|now| *now).unwrap_or_else(|_| Utc::now())
    }
}

pub(crate) const OWNER_PASSWORD: &str = "correct horse battery staple";

pub(crate) struct Fixture {
    pub(crate) identity: Identity<EventRepository, PgSubjectKeys>,
    pub(crate) clock: Arc<TestClock>,
}

pub(crate) fn fixture(db: &TestDb) -> Fixture {
    fixture_with(
        db,
        &MasterKey::from_bytes([9; 32]),
        Arc::new(Argon2id::owasp()),
    )
}

/// The identity service over `db`'s event store, with `master` and `hasher`, on a clock
/// the test moves; call it inside the runtime, which runs the store's tasks.
pub(crate) fn fixture_with(
    db: &TestDb,
    master: &MasterKey,
    hasher: Arc<dyn PasswordHasher>,
) -> Fixture {
    let store = db.store();
    let clock = Arc::new(TestClock(Mutex::new(Utc::now())));
    let identity = Identity::new(
        store.repository.clone(),
        PgSubjectKeys::new(db.app.clone(), master.key_wrapping_key()),
        hasher,
        master,
        clock.clone(),
    );
    Fixture { identity, clock }
}

pub(crate) fn anonymous() -> CommandMetadata {
    CommandMetadata::new("anonymous", ActorKind::Anonymous, None)
}

pub(crate) fn as_user(id: &impl ToString) -> CommandMetadata {
    CommandMetadata::new(id.to_string(), ActorKind::User, None)
}

pub(crate) async fn count(db: &TestDb, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(&db.app)
        .await
        .unwrap()
}

pub(crate) async fn new_tenant(f: &Fixture) -> (String, String) {
    let (outcome, position) = f
        .identity
        .create_tenant(
            &anonymous(),
            "Acme",
            "free",
            "Ada@Example.org",
            "Ada Lovelace",
            OWNER_PASSWORD,
        )
        .await
        .unwrap();
    assert!(position.is_some());
    let Outcome::Done(created) = outcome else {
        panic!("a new tenant was replayed");
    };
    assert!(created.verification_token.is_some());
    (created.tenant_id.to_string(), created.owner_id.to_string())
}

/// Ada, the owner of [`new_tenant`], logs in with her password.
async fn ada_logs_in(f: &Fixture, tenant: &str) -> LoginOutcome {
    let (login, _) = f
        .identity
        .login(&anonymous(), tenant, "ada@example.org", OWNER_PASSWORD)
        .await
        .unwrap();
    login
}

/// Ada, MFA on, logs in with `code`: a TOTP code or a recovery code.
async fn ada_logs_in_with(
    f: &Fixture,
    tenant: &str,
    code: &str,
) -> Result<(LoginOutcome, Option<i64>), IdentityError> {
    f.identity
        .login_with_code(
            &anonymous(),
            tenant,
            "ada@example.org",
            OWNER_PASSWORD,
            Some(code),
        )
        .await
}

/// Registers a new user of `tenant`; a replay fails the test.
pub(crate) async fn register(
    f: &Fixture,
    tenant: &str,
    email: &str,
    name: &str,
    password: &str,
) -> Registered {
    let (registered, _) = f
        .identity
        .register(&anonymous(), tenant, email, name, password)
        .await
        .unwrap();
    let Outcome::Done(registered) = registered else {
        panic!("replayed")
    };
    registered
}

/// Registers Grace Hopper in `tenant`.
pub(crate) async fn register_grace(f: &Fixture, tenant: &str) -> Registered {
    let password = "a long and unusual passphrase";
    register(f, tenant, "grace@example.org", "Grace Hopper", password).await
}

/// Registers Linus in `tenant`.
pub(crate) async fn register_linus(f: &Fixture, tenant: &str) -> Registered {
    let password = "another long passphrase here";
    register(f, tenant, "linus@example.org", "Linus T", password).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_starts_with_its_owner_who_can_log_in_and_rotate_tokens() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, owner) = new_tenant(&f).await;
    let login = ada_logs_in(&f, &tenant).await;
    assert_eq!(login.user_id.to_string(), owner);
    let session = login.session_id.to_string();

    let (first, _) = f
        .identity
        .refresh(&anonymous(), &session, &login.refresh_token)
        .await
        .unwrap();
    let (second, _) = f
        .identity
        .refresh(&anonymous(), &session, &first.refresh_token)
        .await
        .unwrap();
    assert_ne!(first.refresh_token, second.refresh_token);

    // The first token was already rotated: presenting it again is theft.
    match f
        .identity
        .refresh(&anonymous(), &session, &first.refresh_token)
        .await
    {
        Err(IdentityError::Unauthenticated {
            reason: "refresh_token_reused",
            ..
        }) => {}
        other => panic!("expected reuse detection, got {other:?}"),
    }
    assert_eq!(count(&db, "RefreshTokenReused").await, 1);
    assert_eq!(
        count(&db, "SessionRevoked").await,
        1,
        "the revocation was not recorded"
    );
    // The whole family is revoked: even the newest token is refused now.
    match f
        .identity
        .refresh(&anonymous(), &session, &second.refresh_token)
        .await
    {
        Err(IdentityError::Unauthenticated {
            reason: "session_ended",
            ..
        }) => {}
        other => panic!("expected a revoked session, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_in_their_aggregates_tenant_chain_and_a_command_naming_another_tenant_writes_nothing()
 {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, _) = new_tenant(&f).await;
    let login = ada_logs_in(&f, &tenant).await;
    let session = login.session_id.to_string();
    let before = events_in_log(&db).await;

    // A refresh whose caller claims another tenant touches a session of this one.
    let elsewhere = CommandMetadata::new("anonymous", ActorKind::Anonymous, Some(Uuid::now_v7()));
    match f
        .identity
        .refresh(&elsewhere, &session, &login.refresh_token)
        .await
    {
        Err(IdentityError::BadInput { message, .. }) => {
            assert!(message.contains("belongs to tenant"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let after = events_in_log(&db).await;
    assert_eq!(before, after, "a refused command wrote events");

    // Named by nobody, the refresh is recorded in the session's tenant chain.
    let (_, position) = f
        .identity
        .refresh(&anonymous(), &session, &login.refresh_token)
        .await
        .unwrap();
    let tenant_of_refresh: Option<Uuid> =
        sqlx::query_scalar("SELECT tenant_id FROM events WHERE global_position = $1")
            .bind(position.unwrap())
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(tenant_of_refresh.map(|t| t.to_string()), Some(tenant));
    let platform_level: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id IS NULL")
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(
        platform_level, 0,
        "an identity event was recorded outside every tenant"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_concurrent_registrations_of_one_address_exactly_one_wins() {
    let db = TestDb::new().await;
    let f = Arc::new(fixture(&db));
    let (tenant, _) = new_tenant(&f).await;
    let mut racers = Vec::new();
    for i in 0..2 {
        let (f, tenant) = (f.clone(), tenant.clone());
        racers.push(tokio::spawn(async move {
            f.identity
                .register(
                    &anonymous(),
                    &tenant,
                    "grace@example.org",
                    &format!("Grace {i}"),
                    "a long and unusual passphrase",
                )
                .await
        }));
    }
    let mut winners = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(_) => winners += 1,
            Err(IdentityError::Refused {
                reason: "email_taken",
                ..
            }) => {}
            Err(other) => panic!("unexpected failure: {other:?}"),
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(
        count(&db, "UserRegistered").await,
        2,
        "the owner and one new user"
    );
    // Case does not make a new address.
    match f
        .identity
        .register(
            &anonymous(),
            &tenant,
            "GRACE@example.org",
            "Grace",
            "a long and unusual passphrase",
        )
        .await
    {
        Err(IdentityError::Refused {
            reason: "email_taken",
            ..
        }) => {}
        other => panic!("expected email_taken, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_registration_retry_appends_no_new_events() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, _) = new_tenant(&f).await;
    let mut metadata = anonymous();
    metadata.idempotency_key = Some("signup-7".into());
    // The same registration, with the same key, twice.
    let sign_up = || {
        f.identity.register(
            &metadata,
            &tenant,
            "grace@example.org",
            "Grace Hopper",
            "a long and unusual passphrase",
        )
    };
    let (first, position) = sign_up().await.unwrap();
    let Outcome::Done(registered) = first else {
        panic!("the first registration was a replay")
    };
    let events = events_in_log(&db).await;
    let (again, replayed_position) = sign_up().await.unwrap();
    match again {
        Outcome::Replayed(replayed) => assert_eq!(replayed.user_id, registered.user_id),
        Outcome::Done(_) => panic!("the retry ran again"),
    }
    assert_eq!(replayed_position, position);
    let after = events_in_log(&db).await;
    assert_eq!(after, events, "the retry appended events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_passwords_lock_the_account_until_the_lock_expires() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, _) = new_tenant(&f).await;
    for _ in 0..5 {
        match f
            .identity
            .login(
                &anonymous(),
                &tenant,
                "ada@example.org",
                "not the password at all",
            )
            .await
        {
            Err(IdentityError::Unauthenticated {
                reason: "invalid_credentials",
                ..
            }) => {}
            other => panic!("expected a failure, got {other:?}"),
        }
    }
    assert_eq!(count(&db, "LoginFailed").await, 5);
    assert_eq!(count(&db, "AccountLocked").await, 1);
    match f
        .identity
        .login(&anonymous(), &tenant, "ada@example.org", OWNER_PASSWORD)
        .await
    {
        Err(IdentityError::Unauthenticated {
            reason: "account_locked",
            ..
        }) => {}
        other => panic!("a locked account logged in: {other:?}"),
    }
    f.clock.advance(Duration::minutes(6));
    ada_logs_in(&f, &tenant).await;
    // An unknown address fails the same way, and records nothing.
    let before = events_in_log(&db).await;
    match f
        .identity
        .login(&anonymous(), &tenant, "nobody@example.org", OWNER_PASSWORD)
        .await
    {
        Err(IdentityError::Unauthenticated {
            reason: "invalid_credentials",
            ..
        }) => {}
        other => panic!("expected a failure, got {other:?}"),
    }
    let after = events_in_log(&db).await;
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_actor_may_not_issue_is_denied_and_appends_nothing() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, owner) = new_tenant(&f).await;
    let grace = register_grace(&f, &tenant).await;
    let before = events_in_log(&db).await;
    match f
        .identity
        .rename_tenant(&as_user(&grace.user_id), &tenant, "Grace Inc")
        .await
    {
        Err(IdentityError::Forbidden(permission)) => {
            assert_eq!(permission.as_str(), "tenants:update")
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    let after = events_in_log(&db).await;
    assert_eq!(before, after, "a denied command wrote events");
    f.identity
        .rename_tenant(&as_user(&owner), &tenant, "Acme Worldwide")
        .await
        .unwrap();
    assert_eq!(count(&db, "TenantRenamed").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, _) = new_tenant(&f).await;
    for (email, name, password, field) in [
        (
            "not-an-email",
            "Grace",
            "a long and unusual passphrase",
            "email",
        ),
        (
            "grace@example.org",
            "",
            "a long and unusual passphrase",
            "name",
        ),
        ("grace@example.org", "Grace", "short", "password"),
        (
            "grace@example.org",
            "Grace",
            "grace@example.org",
            "password",
        ),
    ] {
        match f
            .identity
            .register(&anonymous(), &tenant, email, name, password)
            .await
        {
            Err(IdentityError::BadInput { field: named, .. }) => assert_eq!(named, field),
            other => panic!("{email}/{name}/{password}: expected bad input, got {other:?}"),
        }
    }
    match f
        .identity
        .register(
            &anonymous(),
            "nope",
            "grace@example.org",
            "Grace",
            "a long and unusual passphrase",
        )
        .await
    {
        Err(IdentityError::BadInput {
            field: "tenantId", ..
        }) => {}
        other => panic!("expected bad input, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_personal_data_or_secret_is_stored_in_plaintext() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, _) = new_tenant(&f).await;
    let (registered, _) = f
        .identity
        .register(
            &anonymous(),
            &tenant,
            "grace.hopper@navy.example",
            "Grace Brewster Hopper",
            "cobol compilers forever",
        )
        .await
        .unwrap();
    let Outcome::Done(grace) = registered else {
        panic!("replayed")
    };
    let (login, _) = f
        .identity
        .login(
            &anonymous(),
            &tenant,
            "grace.hopper@navy.example",
            "cobol compilers forever",
        )
        .await
        .unwrap();
    let log: Vec<String> = sqlx::query_scalar("SELECT payload::text || metadata::text FROM events")
        .fetch_all(&db.app)
        .await
        .unwrap();
    let log = log.join("\n").to_lowercase();
    for secret in [
        "ada@example.org",
        "ada lovelace",
        "grace.hopper",
        "grace brewster",
        "cobol compilers",
        OWNER_PASSWORD,
        login.refresh_token.as_str(),
        "203.0.113.77",
        grace.verification_token.as_deref().unwrap_or("missing"),
    ] {
        assert!(
            !log.contains(&secret.to_lowercase()),
            "{secret:?} is in the events table"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_ip_is_recorded_sealed_under_the_key_of_the_person_concerned() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, owner) = new_tenant(&f).await;
    let mut metadata = anonymous();
    metadata.client_ip = Some(ClientIp::Plain("198.51.100.9".parse().unwrap()));
    f.identity
        .login(&metadata, &tenant, "ada@example.org", OWNER_PASSWORD)
        .await
        .unwrap();
    let stored: String = sqlx::query_scalar(
        "SELECT metadata->>'client_ip' FROM events WHERE event_type = 'SessionOpened'",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    let sealed: PersonalData = serde_json::from_str(&stored).unwrap();
    assert_eq!(sealed.subject().to_string(), owner);
    let keys = PgSubjectKeys::new(
        db.app.clone(),
        MasterKey::from_bytes([9; 32]).key_wrapping_key(),
    );
    let key = keys.find(sealed.subject()).await.unwrap();
    assert_eq!(
        privacy::open(key.as_ref(), &sealed, "client_ip").unwrap(),
        Opened::Plain("198.51.100.9".into())
    );
}

fn code_at(f: &Fixture, secret: &str, offset_steps: i64) -> String {
    use commands::security::totp;
    let secret = totp::TotpSecret::from_base32(secret).unwrap();
    let now = u64::try_from(f.clock.now().timestamp()).unwrap();
    let step = totp::step_at(now).checked_add_signed(offset_steps).unwrap();
    format!("{:06}", totp::code_at_step(&secret, step))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_totp_enabled_a_login_needs_a_fresh_code_or_an_unused_recovery_code() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, owner) = new_tenant(&f).await;
    let me = as_user(&owner);
    let enrollment = f
        .identity
        .start_totp_enrollment(&me, "Platform", "ada@example.org")
        .await
        .unwrap();
    assert!(enrollment.otpauth_uri.starts_with("otpauth://totp/"));
    match f.identity.confirm_totp(&me, "000000").await {
        Err(IdentityError::Unauthenticated {
            reason: "invalid_code",
            ..
        }) => {}
        other => panic!("a wrong code confirmed MFA: {other:?}"),
    }
    let recovery = f
        .identity
        .confirm_totp(&me, &code_at(&f, &enrollment.secret, 0))
        .await
        .unwrap();
    assert_eq!(recovery.len(), 10);

    match f
        .identity
        .login(&anonymous(), &tenant, "ada@example.org", OWNER_PASSWORD)
        .await
    {
        Err(IdentityError::Unauthenticated {
            reason: "mfa_required",
            ..
        }) => {}
        other => panic!("a login without a second factor passed: {other:?}"),
    }
    // The confirming code's step is spent; the next step's code works, once.
    f.clock.advance(Duration::seconds(30));
    let code = code_at(&f, &enrollment.secret, 0);
    let (login, _) = ada_logs_in_with(&f, &tenant, &code).await.unwrap();
    assert_eq!(login.user_id.to_string(), owner);
    match ada_logs_in_with(&f, &tenant, &code).await {
        Err(IdentityError::Unauthenticated {
            reason: "code_already_used",
            ..
        }) => {}
        other => panic!("a code was accepted twice: {other:?}"),
    }
    // A recovery code works once.
    ada_logs_in_with(&f, &tenant, &recovery[0]).await.unwrap();
    assert!(
        ada_logs_in_with(&f, &tenant, &recovery[0]).await.is_err(),
        "a recovery code worked twice"
    );
    // Disabling MFA needs a fresh code.
    f.clock.advance(Duration::seconds(30));
    f.identity
        .disable_mfa(&me, &code_at(&f, &enrollment.secret, 0))
        .await
        .unwrap();
    ada_logs_in(&f, &tenant).await;
    assert_eq!(count(&db, "TotpCodeUsed").await, 1);
    assert_eq!(count(&db, "RecoveryCodeUsed").await, 1);
    assert_eq!(count(&db, "MfaDisabled").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_is_shown_once_stored_hashed_and_scoped_within_its_creator() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, owner) = new_tenant(&f).await;
    let (created, _) = f
        .identity
        .create_api_key(
            &as_user(&owner),
            &tenant,
            "ci deploys",
            &["resources:provision", "resources:read"],
            None,
        )
        .await
        .unwrap();
    let parsed = commands::security::api_key::ApiKeySecret::parse(&created.key).unwrap();
    let stored: String = sqlx::query_scalar(
        "SELECT payload->'ApiKeyCreated'->>'hash' FROM events WHERE event_type = 'ApiKeyCreated'",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(stored, parsed.hash().to_string());
    let log: Vec<String> = sqlx::query_scalar("SELECT payload::text FROM events")
        .fetch_all(&db.app)
        .await
        .unwrap();
    assert!(
        !log.join("").contains(&created.key),
        "the key is in the log"
    );

    // A user without roles cannot create keys at all.
    let grace = register_grace(&f, &tenant).await;
    match f
        .identity
        .create_api_key(
            &as_user(&grace.user_id),
            &tenant,
            "mine",
            &["resources:read"],
            None,
        )
        .await
    {
        Err(IdentityError::Forbidden(permission)) => {
            assert_eq!(permission.as_str(), "api_keys:create")
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    match f
        .identity
        .create_api_key(&as_user(&owner), &tenant, "bad", &["resources:fly"], None)
        .await
    {
        Err(IdentityError::BadInput {
            field: "scopes", ..
        }) => {}
        other => panic!("expected bad input, got {other:?}"),
    }
    f.identity
        .revoke_api_key(&as_user(&owner), &tenant, &created.key_id.to_string())
        .await
        .unwrap();
    match f
        .identity
        .revoke_api_key(&as_user(&owner), &tenant, &created.key_id.to_string())
        .await
    {
        Err(IdentityError::Refused { reason, .. }) => assert_eq!(reason, "already_revoked"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_logs_out_one_session_or_revokes_them_all() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, owner) = new_tenant(&f).await;
    let login = ada_logs_in(&f, &tenant).await;
    let session = login.session_id.to_string();
    // Someone else cannot end it.
    match f
        .identity
        .logout(&as_user(&uuid::Uuid::now_v7()), &session)
        .await
    {
        Err(IdentityError::Refused {
            reason: "session_not_found",
            ..
        }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    f.identity.logout(&as_user(&owner), &session).await.unwrap();
    match f
        .identity
        .refresh(&anonymous(), &session, &login.refresh_token)
        .await
    {
        Err(IdentityError::Unauthenticated {
            reason: "session_ended",
            ..
        }) => {}
        other => panic!("a logged-out session refreshed: {other:?}"),
    }
    f.identity
        .revoke_all_sessions(&as_user(&owner))
        .await
        .unwrap();
    assert_eq!(count(&db, "AllSessionsRevoked").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invited_person_accepts_and_holds_exactly_the_roles_they_were_given() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, owner) = new_tenant(&f).await;
    let (invited, _) = f
        .identity
        .invite(&as_user(&owner), &tenant, "linus@example.org", &["admin"])
        .await
        .unwrap();
    let user = invited.user_id.to_string();
    // The address is taken from the moment of the invitation.
    match f
        .identity
        .register(
            &anonymous(),
            &tenant,
            "linus@example.org",
            "Impostor",
            "a long and unusual passphrase",
        )
        .await
    {
        Err(IdentityError::Refused {
            reason: "email_taken",
            ..
        }) => {}
        other => panic!("expected email_taken, got {other:?}"),
    }
    match f
        .identity
        .accept_invitation(
            &anonymous(),
            &user,
            "not-the-token",
            "Linus",
            "a long and unusual passphrase",
        )
        .await
    {
        Err(IdentityError::Unauthenticated { .. }) => {}
        other => panic!("a wrong token was accepted: {other:?}"),
    }
    f.identity
        .accept_invitation(
            &anonymous(),
            &user,
            &invited.invitation_token,
            "Linus",
            "a long and unusual passphrase",
        )
        .await
        .unwrap();
    f.identity
        .login(
            &anonymous(),
            &tenant,
            "linus@example.org",
            "a long and unusual passphrase",
        )
        .await
        .unwrap();
    // An admin may rename the tenant, but cannot make anyone an owner or close the tenant.
    let admin = as_user(&invited.user_id);
    f.identity
        .rename_tenant(&admin, &tenant, "Acme by Linus")
        .await
        .unwrap();
    match f
        .identity
        .assign_role(&admin, &tenant, &format!("user:{user}"), "owner")
        .await
    {
        Err(IdentityError::Refused {
            reason: "escalation",
            ..
        }) => {}
        other => panic!("an admin granted the owner role: {other:?}"),
    }
    match f.identity.close_tenant(&admin, &tenant, "because").await {
        Err(IdentityError::Forbidden(permission)) => {
            assert_eq!(permission.as_str(), "tenants:close")
        }
        other => panic!("an admin closed the tenant: {other:?}"),
    }
    // The only owner cannot be demoted, even by themself.
    match f
        .identity
        .unassign_role(&as_user(&owner), &tenant, &format!("user:{owner}"), "owner")
        .await
    {
        Err(IdentityError::Refused {
            reason: "last_owner",
            ..
        }) => {}
        other => panic!("the last owner was demoted: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_tenant_takes_no_registrations_until_it_is_reactivated() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, owner) = new_tenant(&f).await;
    f.identity
        .suspend_tenant(&as_user(&owner), &tenant, "unpaid invoices")
        .await
        .unwrap();
    // The same registration, refused while the tenant is suspended and taken after.
    let anon = anonymous();
    let sign_up = || {
        f.identity.register(
            &anon,
            &tenant,
            "grace@example.org",
            "Grace",
            "a long and unusual passphrase",
        )
    };
    match sign_up().await {
        Err(IdentityError::Refused {
            reason: "tenant_inactive",
            ..
        }) => {}
        other => panic!("a suspended tenant took a registration: {other:?}"),
    }
    f.identity
        .reactivate_tenant(&as_user(&owner), &tenant)
        .await
        .unwrap();
    sign_up().await.unwrap();
    f.identity
        .close_tenant(&as_user(&owner), &tenant, "moving on")
        .await
        .unwrap();
    match f
        .identity
        .rename_tenant(&as_user(&owner), &tenant, "Zombie")
        .await
    {
        Err(IdentityError::Refused {
            reason: "closed", ..
        }) => {}
        other => panic!("a closed tenant was renamed: {other:?}"),
    }
    assert_eq!(count(&db, "TenantClosed").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_password_ends_every_earlier_session() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, owner) = new_tenant(&f).await;
    let login = ada_logs_in(&f, &tenant).await;
    match f
        .identity
        .change_password(
            &as_user(&owner),
            "not the password at all",
            "an entirely new passphrase",
        )
        .await
    {
        Err(IdentityError::Unauthenticated {
            reason: "invalid_credentials",
            ..
        }) => {}
        other => panic!("a wrong current password was accepted: {other:?}"),
    }
    match f
        .identity
        .change_password(&as_user(&owner), OWNER_PASSWORD, "ada@example.org")
        .await
    {
        Err(IdentityError::BadInput {
            field: "newPassword",
            ..
        }) => {}
        other => panic!("the email was accepted as a password: {other:?}"),
    }
    f.clock.advance(Duration::seconds(1));
    f.identity
        .change_password(
            &as_user(&owner),
            OWNER_PASSWORD,
            "an entirely new passphrase",
        )
        .await
        .unwrap();
    match f
        .identity
        .refresh(
            &anonymous(),
            &login.session_id.to_string(),
            &login.refresh_token,
        )
        .await
    {
        Err(IdentityError::Unauthenticated {
            reason: "session_ended",
            ..
        }) => {}
        other => panic!("a session survived the password change: {other:?}"),
    }
    assert_eq!(count(&db, "SessionRevoked").await, 1);
    assert!(
        f.identity
            .login(&anonymous(), &tenant, "ada@example.org", OWNER_PASSWORD)
            .await
            .is_err()
    );
    f.identity
        .login(
            &anonymous(),
            &tenant,
            "ada@example.org",
            "an entirely new passphrase",
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_is_verified_with_its_token_and_a_deactivated_user_cannot_log_in() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, owner) = new_tenant(&f).await;
    let grace = register_grace(&f, &tenant).await;
    let user = grace.user_id.to_string();
    assert!(
        f.identity
            .verify_email(&anonymous(), &user, "wrong-token")
            .await
            .is_err()
    );
    f.identity
        .verify_email(
            &anonymous(),
            &user,
            grace.verification_token.as_deref().unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(count(&db, "EmailVerified").await, 1);

    match f
        .identity
        .deactivate_user(&as_user(&owner), &tenant, &owner)
        .await
    {
        Err(IdentityError::Refused {
            reason: "last_owner",
            ..
        }) => {}
        other => panic!("the last owner was deactivated: {other:?}"),
    }
    f.identity
        .deactivate_user(&as_user(&owner), &tenant, &user)
        .await
        .unwrap();
    match f
        .identity
        .login(
            &anonymous(),
            &tenant,
            "grace@example.org",
            "a long and unusual passphrase",
        )
        .await
    {
        Err(IdentityError::Unauthenticated {
            reason: "invalid_credentials",
            ..
        }) => {}
        other => panic!("a deactivated user logged in: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_email_moves_the_claim_and_is_unverified_until_its_token_comes_back() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, owner) = new_tenant(&f).await;
    let ada = as_user(&owner);
    let grace = register_grace(&f, &tenant).await;
    let grace = as_user(&grace.user_id);

    // Refusals first: none of them writes anything.
    let before = events_in_log(&db).await;
    let cases: [(&CommandMetadata, &str, &str, &str); 4] = [
        (
            &ada,
            "not my password",
            "ada@new.example",
            "invalid_credentials",
        ),
        (&ada, OWNER_PASSWORD, "ADA@example.org", "same_email"),
        (
            &grace,
            "a long and unusual passphrase",
            "Ada@Example.org",
            "email_taken",
        ),
        (&ada, OWNER_PASSWORD, "not an address", "newEmail"),
    ];
    for (actor, password, email, expected) in cases {
        match f.identity.change_email(actor, password, email).await {
            Err(IdentityError::Unauthenticated { reason, .. })
            | Err(IdentityError::Refused { reason, .. }) => assert_eq!(reason, expected),
            Err(IdentityError::BadInput { field, .. }) => assert_eq!(field, expected),
            other => panic!("expected {expected}, got {other:?}"),
        }
    }
    let after = events_in_log(&db).await;
    assert_eq!(after, before, "a refused email change wrote events");

    let (token, position) = f
        .identity
        .change_email(&ada, OWNER_PASSWORD, " Ada.King@Example.org ")
        .await
        .unwrap();
    assert!(position.is_some());
    assert_eq!(count(&db, "EmailChanged").await, 1);
    assert_eq!(count(&db, "EmailReleased").await, 1);
    let log: Vec<String> = sqlx::query_scalar("SELECT payload::text || metadata::text FROM events")
        .fetch_all(&db.app)
        .await
        .unwrap();
    assert!(
        !log.iter()
            .any(|row| row.to_lowercase().contains("ada.king@example.org")),
        "the new address is in the log"
    );

    // The old address no longer logs in; the new one does.
    assert!(
        f.identity
            .login(&anonymous(), &tenant, "ada@example.org", OWNER_PASSWORD)
            .await
            .is_err()
    );
    let (login, _) = f
        .identity
        .login(
            &anonymous(),
            &tenant,
            "ada.king@example.org",
            OWNER_PASSWORD,
        )
        .await
        .unwrap();
    assert_eq!(login.user_id.to_string(), owner);

    // The old address is free again, and the new one is verified with its token.
    f.identity
        .register(
            &anonymous(),
            &tenant,
            "ada@example.org",
            "Another Ada",
            "yet another long passphrase",
        )
        .await
        .unwrap();
    f.identity
        .verify_email(&anonymous(), &owner, &token)
        .await
        .unwrap();
    assert_eq!(count(&db, "EmailVerified").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_user_becomes_a_member_only_of_their_own_tenant_and_within_the_granters_rights()
 {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, owner) = new_tenant(&f).await;
    let (other_tenant, _) = new_tenant(&f).await;
    let grace = format!("user:{}", register_grace(&f, &tenant).await.user_id);
    let stranger = format!("user:{}", register_grace(&f, &other_tenant).await.user_id);
    let ada = as_user(&owner);

    match f
        .identity
        .add_member(&ada, &tenant, &stranger, &["viewer"])
        .await
    {
        Err(IdentityError::Refused { reason, .. }) => assert_eq!(reason, "principal_not_found"),
        other => panic!("a user of another tenant was added: {other:?}"),
    }
    match f.identity.add_member(&ada, &tenant, &grace, &[]).await {
        Err(IdentityError::BadInput { field, .. }) => assert_eq!(field, "roles"),
        other => panic!("expected bad input, got {other:?}"),
    }
    f.identity
        .add_member(&ada, &tenant, &grace, &["admin"])
        .await
        .unwrap();
    assert_eq!(count(&db, "MemberAdded").await, 1);
    match f
        .identity
        .add_member(&ada, &tenant, &grace, &["viewer"])
        .await
    {
        Err(IdentityError::Refused { reason, .. }) => assert_eq!(reason, "already_member"),
        other => panic!("expected already_member, got {other:?}"),
    }
    // An admin is not an owner, and cannot make anyone one.
    let grace_id = grace.trim_start_matches("user:").to_owned();
    let linus = register_linus(&f, &tenant).await;
    match f
        .identity
        .add_member(
            &as_user(&grace_id),
            &tenant,
            &format!("user:{}", linus.user_id),
            &["owner"],
        )
        .await
    {
        Err(IdentityError::Refused { reason, .. }) => assert_eq!(reason, "escalation"),
        other => panic!("an admin made an owner: {other:?}"),
    }
    assert_eq!(count(&db, "MemberAdded").await, 1);
}
