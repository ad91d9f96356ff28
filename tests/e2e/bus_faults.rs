//! The bus end to end and under faults, through the real PostgreSQL and NATS JetStream:
//! identity commands, the event store, the relay and the projection runner together.
//! Every identity event travels from its command into the read models; relays killed again
//! and again under load, and a stream purged and deleted under load, leave the stream whole
//! and the read model exact; and a downstream consumer written against the `.proto` files
//! alone checks every envelope and header it receives.
//!
//! Read models are checked against what each test did (the tenants it created, the members
//! it added, the keys it revoked, the sessions it ended), never by folding the stream
//! again, which may hold duplicates; and against the same model rebuilt from the log.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use commands::bus::Outcome;
use commands::identity::{Identity, IdentityError};
use domain::identity::api_key::ApiKeyEvent;
use domain::identity::rbac::{Permission, RoleName};
use domain::identity::service_account::ServiceAccountEvent;
use domain::identity::session::SessionEvent;
use domain::identity::tenant::TenantEvent;
use domain::identity::user::UserEvent;
use eventstore::{
    EventRepository, LogReader, PgSubjectKeys, RecordedEvent, RelayConfig, RelayStats,
};
use futures::{StreamExt as _, TryStreamExt as _};
use projections::identity::{AGGREGATE_TYPES, IdentityModel};
use projections::pg::{ApplyError, PgProjection};
use projections::runner::consumer_name;
use projections::{PgRunner, RunnerStats, wait_for_position};
use serde::de::DeserializeOwned;
use sqlx::PgConnection;
use tests::{TestBus, TestDb};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::identity::{Fixture, OWNER_PASSWORD, anonymous, as_user, fixture, register};
use crate::identity_models::{
    create_acme, create_globex, delete_role, digests, expire_session, now, redefine_role, strings,
    tick, totp_code, turn_mfa_on, uuid,
};
use crate::{assert_relayed, head, rows, runner_config, until};

type Service = Identity<EventRepository, PgSubjectKeys>;

/// Starts a relay on a task of its own, over a NATS connection of its own: aborting the
/// task kills the relay and its connections, as `kill -9` kills its process.
async fn spawn_relay(db: &TestDb, config: RelayConfig) -> (JoinHandle<()>, Arc<RelayStats>) {
    let nats = async_nats::connect(tests::nats_url()).await.unwrap();
    crate::spawn_relay(db, nats, config)
}

/// Starts a relay as [`spawn_relay`] does, and waits until it has created the test's
/// stream.
async fn spawn_relay_with_stream(
    db: &TestDb,
    bus: &TestBus,
    config: RelayConfig,
) -> (JoinHandle<()>, Arc<RelayStats>) {
    let relay = spawn_relay(db, config).await;
    until("the relay created the stream", async || {
        bus.jetstream.get_stream(&bus.stream).await.is_ok()
    })
    .await;
    relay
}

/// Starts a runner of the identity model on a task of its own.
fn spawn_runner(db: &TestDb, bus: &TestBus, idle: Duration) -> (JoinHandle<()>, Arc<RunnerStats>) {
    let runner = PgRunner::new(
        db.app.clone(),
        bus.client.clone(),
        IdentityModel,
        runner_config(bus, idle),
    );
    let stats = runner.stats();
    (tokio::spawn(runner.run(std::future::pending())), stats)
}

/// Whether the runner's durable consumer exists on the test's stream.
async fn runner_follows(bus: &TestBus) -> bool {
    let name = consumer_name(&runner_config(bus, Duration::ZERO), IdentityModel.name());
    match bus.jetstream.get_stream(&bus.stream).await {
        Ok(stream) => stream.consumer_info(&name).await.is_ok(),
        Err(_) => false,
    }
}

/// The messages the test's stream holds; 0 when it does not exist.
async fn messages_in(bus: &TestBus) -> u64 {
    match bus.jetstream.get_stream(&bus.stream).await {
        Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
        Err(_) => 0,
    }
}

/// The position the relays' checkpoint is at; 0 before the first.
async fn relay_checkpoint(db: &TestDb) -> i64 {
    eventstore::relay::checkpoint(&db.app, "relay")
        .await
        .unwrap()
}

/// Waits until the identity model's checkpoint is at `position`, and checks that it is
/// not parked.
async fn wait_for_model(db: &TestDb, stats: &RunnerStats, position: i64) {
    assert!(
        wait_for_position(&db.app, "identity", position, Duration::from_secs(90))
            .await
            .unwrap(),
        "the runner did not reach position {position} (it is at {})",
        stats.position()
    );
    let checkpoint = projections::pg::checkpoint(&db.app, "identity")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint.position, position);
    assert_eq!(checkpoint.parked, None, "the model parked");
}

// ---------------------------------------------------------------------------------------
// What the identity model must hold, from what a test did.

/// The rows of the identity model that a workload decides, as the test recorded them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Rows {
    /// Tenant, name, status.
    tenants: BTreeSet<(Uuid, String, String)>,
    /// Tenant, principal, roles in name order.
    memberships: BTreeSet<(Uuid, String, Vec<String>)>,
    /// User, tenant, status.
    users: BTreeSet<(Uuid, Uuid, String)>,
    /// Key, tenant, whether it is revoked.
    api_keys: BTreeSet<(Uuid, Uuid, bool)>,
    /// Session, user, status.
    sessions: BTreeSet<(Uuid, Uuid, String)>,
}

impl Rows {
    fn extend(&mut self, other: Rows) {
        self.tenants.extend(other.tenants);
        self.memberships.extend(other.memberships);
        self.users.extend(other.users);
        self.api_keys.extend(other.api_keys);
        self.sessions.extend(other.sessions);
    }

    /// The same rows as the identity model holds them.
    async fn of_model(db: &TestDb) -> Rows {
        Rows {
            tenants: rows(
                &db.app,
                "SELECT tenant_id, name, status FROM rm_identity.tenants",
            )
            .await,
            memberships: rows(
                &db.app,
                "SELECT tenant_id, principal, roles FROM rm_identity.memberships",
            )
            .await,
            users: rows(
                &db.app,
                "SELECT user_id, tenant_id, status FROM rm_identity.users",
            )
            .await,
            api_keys: rows(
                &db.app,
                "SELECT key_id, tenant_id, revoked_at IS NOT NULL FROM rm_identity.api_keys",
            )
            .await,
            sessions: rows(
                &db.app,
                "SELECT session_id, user_id, status FROM rm_identity.sessions",
            )
            .await,
        }
    }

    /// Asserts that the model holds exactly these rows, table by table.
    async fn assert_model(&self, db: &TestDb) {
        let model = Rows::of_model(db).await;
        assert_eq!(model.tenants, self.tenants, "tenants");
        assert_eq!(model.memberships, self.memberships, "memberships");
        assert_eq!(model.users, self.users, "users");
        assert_eq!(model.api_keys, self.api_keys, "API keys");
        assert_eq!(model.sessions, self.sessions, "sessions");
    }
}

/// One tenant's life, as its people would live it: the tenant created (and renamed, for an
/// even `i`); three users who register, one made an admin, one a member, one added and
/// removed again; three API keys, the second revoked; an owner's session signed out of and
/// one left open; a member's session revoked when a rotated refresh token comes back;
/// then, for `i % 3` = 1 or 2, the tenant suspended or closed. Returns the rows it leaves.
async fn tenant_life(identity: Service, i: usize) -> Rows {
    let anon = anonymous();
    let mut rows = Rows::default();
    let mut name = format!("Tenant {i}");
    let owner_email = format!("owner{i}@example.org");
    let (outcome, _) = identity
        .create_tenant(
            &anon,
            &name,
            "free",
            &owner_email,
            "Olive Owner",
            OWNER_PASSWORD,
        )
        .await
        .unwrap();
    let Outcome::Done(created) = outcome else {
        panic!("a new tenant was replayed")
    };
    let tenant = created.tenant_id.to_string();
    let owner_id = created.owner_id.to_string();
    let owner = as_user(&owner_id);
    rows.memberships.insert((
        uuid(&tenant),
        format!("user:{owner_id}"),
        strings(&["owner"]),
    ));
    rows.users
        .insert((uuid(&owner_id), uuid(&tenant), "active".into()));
    if i.is_multiple_of(2) {
        name = format!("Tenant {i} Ltd");
        identity
            .rename_tenant(&owner, &tenant, &name)
            .await
            .unwrap();
    }

    let mut members = Vec::new();
    for j in 0..3 {
        let email = format!("user{j}.of{i}@example.org");
        let password = format!("user {j} of tenant {i} has a long passphrase");
        let (outcome, _) = identity
            .register(&anon, &tenant, &email, "Una User", &password)
            .await
            .unwrap();
        let Outcome::Done(registered) = outcome else {
            panic!("a new user was replayed")
        };
        let user = registered.user_id.to_string();
        let principal = format!("user:{user}");
        rows.users
            .insert((uuid(&user), uuid(&tenant), "active".into()));
        match j {
            0 => {
                identity
                    .add_member(&owner, &tenant, &principal, &["viewer"])
                    .await
                    .unwrap();
                identity
                    .assign_role(&owner, &tenant, &principal, "admin")
                    .await
                    .unwrap();
                rows.memberships
                    .insert((uuid(&tenant), principal, strings(&["admin", "viewer"])));
            }
            1 => {
                identity
                    .add_member(&owner, &tenant, &principal, &["member"])
                    .await
                    .unwrap();
                rows.memberships
                    .insert((uuid(&tenant), principal, strings(&["member"])));
            }
            _ => {
                identity
                    .add_member(&owner, &tenant, &principal, &["member"])
                    .await
                    .unwrap();
                identity
                    .remove_member(&owner, &tenant, &principal)
                    .await
                    .unwrap();
            }
        }
        members.push((user, email, password));
    }

    for k in 0..3 {
        let (key, _) = identity
            .create_api_key(
                &owner,
                &tenant,
                &format!("key {k}"),
                &["resources:read"],
                None,
            )
            .await
            .unwrap();
        let key_id = key.key_id.to_string();
        if k == 1 {
            identity
                .revoke_api_key(&owner, &tenant, &key_id)
                .await
                .unwrap();
        }
        rows.api_keys.insert((uuid(&key_id), uuid(&tenant), k == 1));
    }

    let (signed_out, _) = identity
        .login(&anon, &tenant, &owner_email, OWNER_PASSWORD)
        .await
        .unwrap();
    let signed_out = signed_out.session_id.to_string();
    identity.logout(&owner, &signed_out).await.unwrap();
    let (open, _) = identity
        .login(&anon, &tenant, &owner_email, OWNER_PASSWORD)
        .await
        .unwrap();
    let (user, email, password) = &members[1];
    let (stolen, _) = identity
        .login(&anon, &tenant, email, password)
        .await
        .unwrap();
    let stolen_id = stolen.session_id.to_string();
    identity
        .refresh(&anon, &stolen_id, &stolen.refresh_token)
        .await
        .unwrap();
    assert!(matches!(
        identity
            .refresh(&anon, &stolen_id, &stolen.refresh_token)
            .await,
        Err(IdentityError::Unauthenticated {
            reason: "refresh_token_reused",
            ..
        })
    ));
    rows.sessions
        .insert((uuid(&signed_out), uuid(&owner_id), "ended".into()));
    rows.sessions.insert((
        uuid(&open.session_id.to_string()),
        uuid(&owner_id),
        "active".into(),
    ));
    rows.sessions
        .insert((uuid(&stolen_id), uuid(user), "revoked".into()));

    let status = match i % 3 {
        1 => {
            identity
                .suspend_tenant(&owner, &tenant, "unpaid invoices")
                .await
                .unwrap();
            "suspended"
        }
        2 => {
            identity
                .close_tenant(&owner, &tenant, "moving on")
                .await
                .unwrap();
            "closed"
        }
        _ => "active",
    };
    rows.tenants
        .insert((uuid(&tenant), name, status.to_owned()));
    rows
}

/// Lives the lives of `tenants` at once, each on a task of its own; returns the rows they
/// leave.
fn spawn_lives(identity: &Service, tenants: Range<usize>) -> JoinHandle<Rows> {
    let lives: Vec<JoinHandle<Rows>> = tenants
        .map(|i| tokio::spawn(tenant_life(identity.clone(), i)))
        .collect();
    tokio::spawn(async move {
        let mut rows = Rows::default();
        for life in lives {
            rows.extend(life.await.unwrap());
        }
        rows
    })
}

// ---------------------------------------------------------------------------------------
// The model the runner built, against the same model rebuilt from the log.

/// The identity model under another name, so that a copy rebuilt from the log stands beside
/// the one the runner built, in schema `rm_identity_from_log`.
struct FromTheLog(IdentityModel);

impl PgProjection for FromTheLog {
    fn name(&self) -> &'static str {
        "identity_from_log"
    }

    fn version(&self) -> i32 {
        self.0.version()
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        self.0.wants(event)
    }

    fn schema_sql(&self) -> &'static str {
        self.0.schema_sql()
    }

    fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send {
        self.0.apply(conn, events)
    }
}

/// Rebuilds the identity model from the log through `head` beside the runner's, and asserts
/// that both hold the same rows. Returns the runner's digests.
async fn assert_equal_to_a_rebuild(
    db: &TestDb,
    head: i64,
) -> BTreeMap<&'static str, (i64, String)> {
    let reader = LogReader::new(db.app.clone());
    let rebuilt = projections::pg::rebuild(
        &db.app,
        &FromTheLog(IdentityModel),
        &reader,
        Some(head),
        64,
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(rebuilt.position, head);
    let live = digests(db, "rm_identity").await;
    assert_eq!(live, digests(db, "rm_identity_from_log").await);
    live
}

// ---------------------------------------------------------------------------------------
// 1. Every identity event, from its command through JetStream into the read models.

/// The names of every variant of a domain event enum, and a match over them with no
/// wildcard: a variant added to the domain does not compile here until it is listed.
macro_rules! every_variant {
    ($names:ident, $name_of:ident, $enum:ident { $($variant:ident),* $(,)? }) => {
        const $names: &[&str] = &[$(stringify!($variant)),*];

        fn $name_of(event: &$enum) -> &'static str {
            match event {
                $($enum::$variant { .. } => stringify!($variant),)*
            }
        }
    };
}

every_variant!(
    TENANT_EVENTS,
    tenant_event,
    TenantEvent {
        TenantCreated,
        TenantRenamed,
        PlanChanged,
        TenantSuspended,
        TenantReactivated,
        TenantClosed,
        MemberAdded,
        MemberRemoved,
        RoleAssigned,
        RoleUnassigned,
        RoleDefined,
        RoleRedefined,
        RoleDeleted,
    }
);
every_variant!(
    USER_EVENTS,
    user_event,
    UserEvent {
        UserRegistered,
        UserInvited,
        InvitationAccepted,
        EmailVerificationIssued,
        EmailVerified,
        EmailChanged,
        PasswordChanged,
        UserDeactivated,
        LoginFailed,
        AccountLocked,
        LoginSucceeded,
        TotpEnrollmentStarted,
        TotpConfirmed,
        TotpCodeUsed,
        RecoveryCodeUsed,
        MfaDisabled,
        AllSessionsRevoked,
        SubjectForgotten,
    }
);
every_variant!(
    SESSION_EVENTS,
    session_event,
    SessionEvent {
        SessionOpened,
        RefreshTokenRotated,
        RefreshTokenReused,
        SessionRevoked,
        SessionEnded,
        SessionExpired,
    }
);
every_variant!(
    API_KEY_EVENTS,
    api_key_event,
    ApiKeyEvent {
        ApiKeyCreated,
        ApiKeyRevoked
    }
);
every_variant!(
    SERVICE_ACCOUNT_EVENTS,
    service_account_event,
    ServiceAccountEvent {
        ServiceAccountCreated,
        ServiceAccountRenamed,
        ServiceAccountDisabled,
        ServiceAccountEnabled,
        ClientSecretIssued,
        ClientSecretRevoked,
    }
);

fn decode<E: DeserializeOwned>(event: &RecordedEvent) -> E {
    serde_json::from_value(event.payload.clone()).unwrap_or_else(|err| {
        panic!(
            "the {} event at position {} does not decode: {err}",
            event.aggregate_type, event.global_position
        )
    })
}

/// Asserts that the log holds every variant of the identity model's event enums, each
/// decoding as the variant its `event_type` names.
async fn assert_every_identity_event_is_in_the_log(db: &TestDb) {
    let every: BTreeMap<&str, &[&str]> = [
        ("Tenant", TENANT_EVENTS),
        ("User", USER_EVENTS),
        ("Session", SESSION_EVENTS),
        ("ApiKey", API_KEY_EVENTS),
        ("ServiceAccount", SERVICE_ACCOUNT_EVENTS),
    ]
    .into_iter()
    .collect();
    let read: BTreeSet<&str> = AGGREGATE_TYPES.into_iter().collect();
    assert_eq!(
        every.keys().copied().collect::<BTreeSet<_>>(),
        read,
        "the aggregates the model reads"
    );
    let events: Vec<RecordedEvent> = LogReader::new(db.app.clone())
        .read_from(1)
        .try_collect()
        .await
        .unwrap();
    let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
    for event in &events {
        let (aggregate, variant) = match event.aggregate_type.as_str() {
            "Tenant" => ("Tenant", tenant_event(&decode(event))),
            "User" => ("User", user_event(&decode(event))),
            "Session" => ("Session", session_event(&decode(event))),
            "ApiKey" => ("ApiKey", api_key_event(&decode(event))),
            "ServiceAccount" => ("ServiceAccount", service_account_event(&decode(event))),
            _ => continue,
        };
        assert_eq!(
            event.event_type, variant,
            "position {}",
            event.global_position
        );
        seen.insert((aggregate, variant));
    }
    let expected: BTreeSet<(&str, &str)> = every
        .iter()
        .flat_map(|(aggregate, variants)| variants.iter().map(|variant| (*aggregate, *variant)))
        .collect();
    let missing: Vec<_> = expected.difference(&seen).collect();
    assert!(missing.is_empty(), "never produced: {missing:?}");
    assert_eq!(seen, expected);
}

/// The ids of what the flows of [`every_identity_flow`] touched.
struct Touched {
    acme: Uuid,
    globex: Uuid,
    ada: Uuid,
    grace: Uuid,
    linus: Uuid,
    mallory: Uuid,
    hank: Uuid,
    robot: Uuid,
    key: Uuid,
    /// Session name to id.
    sessions: BTreeMap<&'static str, Uuid>,
}

/// Runs identity flows that, between them, produce every event of the identity model's
/// aggregates. The role redefinition and deletion and the session's expiry have no command
/// in the identity service yet: their aggregates decide them through cqrs-es over the same
/// log, as the identity model's own tests do.
async fn every_identity_flow(f: &Fixture, db: &TestDb) -> Touched {
    let id = &f.identity;
    let anon = anonymous();
    let store = db.store();
    let mut sessions = BTreeMap::new();

    // Acme: created by Ada, who verifies her address; renamed; on another plan.
    let (acme, ada, token) = create_acme(f).await;
    let ada = ada.id;
    let owner = as_user(&ada);
    id.verify_email(&anon, &ada, &token).await.unwrap();
    tick(f);
    id.rename_tenant(&owner, &acme, "Acme Ltd").await.unwrap();
    id.change_plan(&owner, &acme, "team").await.unwrap();

    // Grace registers, joins as a viewer and becomes an admin instead; she changes her
    // password later.
    tick(f);
    let grace_password = "Grace has a long passphrase";
    let grace = register(
        f,
        &acme,
        "grace@example.org",
        "Grace Hopper",
        grace_password,
    )
    .await
    .user_id
    .to_string();
    let grace_principal = format!("user:{grace}");
    id.add_member(&owner, &acme, &grace_principal, &["viewer"])
        .await
        .unwrap();
    id.assign_role(&owner, &acme, &grace_principal, "admin")
        .await
        .unwrap();
    id.unassign_role(&owner, &acme, &grace_principal, "viewer")
        .await
        .unwrap();

    // Two custom roles: one stays, one is redefined and deleted.
    tick(f);
    id.define_role(
        &owner,
        &acme,
        "support-lead",
        &["sessions:read", "users:read"],
    )
    .await
    .unwrap();
    id.define_role(&owner, &acme, "finance", &["billing:read"])
        .await
        .unwrap();
    let finance = RoleName::parse("finance").unwrap();
    redefine_role(
        &store.repository,
        &acme,
        &finance,
        &[Permission::BillingRead, Permission::UsageRead],
        &owner,
        tick(f),
    )
    .await;
    delete_role(&store.repository, &acme, finance, &owner, tick(f)).await;

    // Linus is invited and accepts; five wrong passwords in a row lock him out.
    tick(f);
    let (invited, _) = id
        .invite(&owner, &acme, "linus@example.org", &["member"])
        .await
        .unwrap();
    let linus = invited.user_id.to_string();
    id.accept_invitation(
        &anon,
        &linus,
        &invited.invitation_token,
        "Linus Torvalds",
        "Linus has a long passphrase",
    )
    .await
    .unwrap();
    for _ in 0..5 {
        tick(f);
        assert!(
            id.login(&anon, &acme, "linus@example.org", "not his password at all")
                .await
                .is_err()
        );
    }

    // Mallory registers, is deactivated, and is then forgotten.
    tick(f);
    let mallory = register(
        f,
        &acme,
        "mallory@example.org",
        "Mallory Mal",
        "Mallory has a long passphrase",
    )
    .await
    .user_id
    .to_string();
    id.deactivate_user(&owner, &acme, &mallory).await.unwrap();
    id.forget_subject(&owner, &acme, &mallory).await.unwrap();

    // Ada's sessions: one rotated twice, then a rotated token comes back; one signed out of.
    tick(f);
    let (login, _) = id
        .login(&anon, &acme, "ada@example.org", OWNER_PASSWORD)
        .await
        .unwrap();
    let reused = login.session_id.to_string();
    tick(f);
    let (first, _) = id
        .refresh(&anon, &reused, &login.refresh_token)
        .await
        .unwrap();
    tick(f);
    id.refresh(&anon, &reused, &first.refresh_token)
        .await
        .unwrap();
    tick(f);
    assert!(matches!(
        id.refresh(&anon, &reused, &first.refresh_token).await,
        Err(IdentityError::Unauthenticated {
            reason: "refresh_token_reused",
            ..
        })
    ));
    sessions.insert("reused", uuid(&reused));
    tick(f);
    let (login, _) = id
        .login(&anon, &acme, "ada@example.org", OWNER_PASSWORD)
        .await
        .unwrap();
    tick(f);
    id.logout(&owner, &login.session_id.to_string())
        .await
        .unwrap();
    sessions.insert("signed out", login.session_id.as_uuid());

    // Grace signs out everywhere: her session is revoked when it next refreshes.
    let me = as_user(&grace);
    tick(f);
    let (login, _) = id
        .login(&anon, &acme, "grace@example.org", grace_password)
        .await
        .unwrap();
    let everywhere = login.session_id.to_string();
    tick(f);
    id.revoke_all_sessions(&me).await.unwrap();
    tick(f);
    assert!(matches!(
        id.refresh(&anon, &everywhere, &login.refresh_token).await,
        Err(IdentityError::Unauthenticated {
            reason: "session_ended",
            ..
        })
    ));
    sessions.insert("signed out everywhere", uuid(&everywhere));
    tick(f);
    id.change_password(&me, grace_password, "Grace has a new passphrase")
        .await
        .unwrap();

    // Ada turns MFA on, signs in with a TOTP code, then with a recovery code, and turns
    // MFA off again.
    tick(f);
    let (secret, recovery) = turn_mfa_on(f, &owner, "ada@example.org").await;
    let opened = now(f);
    let (with_totp, _) = id
        .login_with_code(
            &anon,
            &acme,
            "ada@example.org",
            OWNER_PASSWORD,
            Some(&totp_code(f, &secret)),
        )
        .await
        .unwrap();
    f.clock.advance(chrono::Duration::seconds(30));
    let (with_recovery, _) = id
        .login_with_code(
            &anon,
            &acme,
            "ada@example.org",
            OWNER_PASSWORD,
            Some(&recovery[0]),
        )
        .await
        .unwrap();
    f.clock.advance(chrono::Duration::seconds(30));
    id.disable_mfa(&owner, &totp_code(f, &secret))
        .await
        .unwrap();
    sessions.insert("open", with_recovery.session_id.as_uuid());

    // The TOTP session lives out its lifetime.
    expire_session(
        &store.repository,
        &with_totp.session_id.to_string(),
        opened + chrono::Duration::days(30) + chrono::Duration::seconds(1),
    )
    .await;
    sessions.insert("expired", with_totp.session_id.as_uuid());

    // Ada moves to another address.
    tick(f);
    id.change_email(&owner, OWNER_PASSWORD, "ada.king@example.org")
        .await
        .unwrap();

    // An API key, revoked.
    tick(f);
    let (key, _) = id
        .create_api_key(&owner, &acme, "ci", &["resources:read"], None)
        .await
        .unwrap();
    id.revoke_api_key(&owner, &acme, &key.key_id.to_string())
        .await
        .unwrap();

    // A service account: renamed, a secret issued and revoked, switched off and on again,
    // and removed from the tenant.
    tick(f);
    let (robot, _) = id
        .create_service_account(&owner, &acme, "robot", &["viewer"])
        .await
        .unwrap();
    let robot = robot.to_string();
    id.rename_service_account(&owner, &acme, &robot, "robot-2")
        .await
        .unwrap();
    let (secret, _) = id.issue_client_secret(&owner, &acme, &robot).await.unwrap();
    id.revoke_client_secret(&owner, &acme, &robot, &secret.secret_id.to_string())
        .await
        .unwrap();
    id.disable_service_account(&owner, &acme, &robot)
        .await
        .unwrap();
    id.enable_service_account(&owner, &acme, &robot)
        .await
        .unwrap();
    id.remove_member(&owner, &acme, &format!("service_account:{robot}"))
        .await
        .unwrap();

    // Globex: suspended, reactivated and closed by its owner.
    tick(f);
    let (globex, hank, _) = create_globex(f).await;
    let hank = hank.id;
    let boss = as_user(&hank);
    id.suspend_tenant(&boss, &globex, "audit").await.unwrap();
    tick(f);
    id.reactivate_tenant(&boss, &globex).await.unwrap();
    tick(f);
    id.close_tenant(&boss, &globex, "moving on").await.unwrap();

    Touched {
        acme: uuid(&acme),
        globex: uuid(&globex),
        ada: uuid(&ada),
        grace: uuid(&grace),
        linus: uuid(&linus),
        mallory: uuid(&mallory),
        hank: uuid(&hank),
        robot: uuid(&robot),
        key: key.key_id.as_uuid(),
        sessions,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_identity_event_travels_from_its_command_through_jetstream_into_the_read_models() {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let f = fixture(&db);
    let (relay, relay_stats) = spawn_relay_with_stream(&db, &bus, bus.relay_config()).await;
    // A long idle time: the runner reads the events from the bus, not from the log.
    let (runner, runner_stats) = spawn_runner(&db, &bus, Duration::from_secs(3));
    until("the runner follows the stream", async || {
        runner_follows(&bus).await
    })
    .await;

    let t = every_identity_flow(&f, &db).await;
    let head = head(&db).await;
    assert_relayed(&bus, &relay_stats, head).await;
    wait_for_model(&db, &runner_stats, head).await;
    // Every event comes to the runner through the bus, whichever way it was applied first.
    until("the bus delivered every event to the runner", async || {
        runner_stats.delivered() >= u64::try_from(head).unwrap()
    })
    .await;
    runner.abort();
    relay.abort();
    assert_eq!(runner_stats.rejected(), 0);

    assert_every_identity_event_is_in_the_log(&db).await;

    // What the flows did, as the test knows it.
    let tenants: BTreeSet<(Uuid, String, String, String)> = rows(
        &db.app,
        "SELECT tenant_id, name, plan, status FROM rm_identity.tenants",
    )
    .await;
    assert_eq!(
        tenants,
        [
            (t.acme, "Acme Ltd", "team", "active"),
            (t.globex, "Globex", "free", "closed"),
        ]
        .into_iter()
        .map(|(id, name, plan, status)| (id, name.into(), plan.into(), status.into()))
        .collect()
    );
    let memberships: BTreeSet<(Uuid, String, Vec<String>)> = rows(
        &db.app,
        "SELECT tenant_id, principal, roles FROM rm_identity.memberships",
    )
    .await;
    assert_eq!(
        memberships,
        [
            (t.acme, t.ada, "owner"),
            (t.acme, t.grace, "admin"),
            (t.acme, t.linus, "member"),
            (t.globex, t.hank, "owner"),
        ]
        .into_iter()
        .map(|(tenant, user, role)| (tenant, format!("user:{user}"), strings(&[role])))
        .collect()
    );
    let custom_roles: Vec<(Uuid, String, Vec<String>)> = rows(
        &db.app,
        "SELECT tenant_id, name, permissions FROM rm_identity.custom_roles",
    )
    .await;
    assert_eq!(
        custom_roles,
        [(
            t.acme,
            "support-lead".to_owned(),
            strings(&["sessions:read", "users:read"])
        )]
    );
    let users: BTreeSet<(Uuid, String, bool, bool, i32)> = rows(
        &db.app,
        "SELECT user_id, status, email_verified, mfa_enabled, lockouts FROM rm_identity.users",
    )
    .await;
    assert_eq!(
        users,
        [
            // Her new address is not verified yet; MFA is off again.
            (t.ada, "active", false, false, 0),
            (t.grace, "active", false, false, 0),
            // Accepting the invitation proved his address.
            (t.linus, "active", true, false, 1),
            (t.mallory, "deactivated", false, false, 0),
            (t.hank, "active", false, false, 0),
        ]
        .into_iter()
        .map(|(id, status, verified, mfa, lockouts)| (id, status.into(), verified, mfa, lockouts))
        .collect()
    );
    let sessions: BTreeSet<(Uuid, Uuid, String, Option<String>)> = rows(
        &db.app,
        "SELECT session_id, user_id, status, revoke_reason FROM rm_identity.sessions",
    )
    .await;
    let session = |name: &str| t.sessions[name];
    assert_eq!(
        sessions,
        [
            (session("reused"), t.ada, "revoked", Some("token_reuse")),
            (session("signed out"), t.ada, "ended", None),
            (
                session("signed out everywhere"),
                t.grace,
                "revoked",
                Some("all_sessions_revoked")
            ),
            (session("expired"), t.ada, "expired", None),
            (session("open"), t.ada, "active", None),
        ]
        .into_iter()
        .map(|(id, user, status, reason)| (id, user, status.into(), reason.map(str::to_owned)))
        .collect()
    );
    let keys: Vec<(Uuid, bool)> = rows(
        &db.app,
        "SELECT key_id, revoked_at IS NOT NULL FROM rm_identity.api_keys",
    )
    .await;
    assert_eq!(keys, [(t.key, true)]);
    let accounts: Vec<(Uuid, String, bool, Vec<Uuid>)> = rows(
        &db.app,
        "SELECT account_id, name, enabled, active_secret_ids FROM rm_identity.service_accounts",
    )
    .await;
    assert_eq!(accounts, [(t.robot, "robot-2".to_owned(), true, vec![])]);

    // And every table, column for column, equal to the model rebuilt from the log.
    let live = assert_equal_to_a_rebuild(&db, head).await;
    assert!(live.values().all(|(rows, _)| *rows > 0), "{live:?}");
}

// ---------------------------------------------------------------------------------------
// 2. Relays killed again and again under load.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_killed_again_and_again_under_load_leave_the_stream_whole_and_the_read_model_exact()
{
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let f = fixture(&db);
    let config = RelayConfig {
        max_in_flight: 4,
        page_size: 8,
        ..bus.relay_config()
    };
    // The runner needs the stream; a first relay creates it and is killed at once.
    let (relay, _) = spawn_relay_with_stream(&db, &bus, config.clone()).await;
    relay.abort();
    let _ = relay.await;
    let (runner, runner_stats) = spawn_runner(&db, &bus, Duration::from_millis(500));

    // Each relay is killed once it has published a few events (1 to 40), with more than
    // that to go when it started, so that it dies mid-stream: with acks in flight, before
    // or after moving its checkpoint.
    let lives = spawn_lives(&f.identity, 0..8);
    let (mut kills, mut mid_stream) = (0u64, 0);
    while !lives.is_finished() || kills < 12 {
        let enough = 1 + (kills * 7) % 40;
        until(
            "a backlog builds up, or the commands are done",
            async || {
                lives.is_finished()
                    || self::head(&db).await - relay_checkpoint(&db).await
                        >= i64::try_from(enough).unwrap() + 8
            },
        )
        .await;
        let (relay, stats) = spawn_relay(&db, config.clone()).await;
        for _ in 0..3000 {
            if stats.published() >= enough {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        relay.abort();
        let _ = relay.await;
        if stats.published() > 0 && stats.acked_position() < self::head(&db).await {
            mid_stream += 1;
        }
        kills += 1;
    }
    assert!(
        mid_stream >= 3,
        "only {mid_stream} of {kills} relays died with events left to publish"
    );
    let expected = lives.await.unwrap();
    let head = head(&db).await;
    assert!(head > 200, "only {head} events");

    let (relay, relay_stats) = spawn_relay(&db, config).await;
    until("the last relay published the whole log", async || {
        relay_stats.acked_position() == head
    })
    .await;
    assert_eq!(
        bus.positions(&bus.stream).await,
        (1..=head).collect::<Vec<_>>(),
        "after {kills} kills"
    );
    wait_for_model(&db, &runner_stats, head).await;
    runner.abort();
    relay.abort();
    assert!(runner_stats.delivered() > 0, "nothing came through the bus");

    expected.assert_model(&db).await;
    assert_eq!(expected.tenants.len(), 8);
    assert_equal_to_a_rebuild(&db, head).await;
}

// ---------------------------------------------------------------------------------------
// 3. The stream purged and deleted under load.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_purged_and_deleted_under_load_is_refilled_and_the_read_model_comes_out_exact() {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let f = fixture(&db);
    let (relay, relay_stats) = spawn_relay_with_stream(&db, &bus, bus.relay_config()).await;
    let (runner, runner_stats) = spawn_runner(&db, &bus, Duration::from_millis(500));

    // The stream loses what it holds, then is lost altogether, while commands go on.
    let first = spawn_lives(&f.identity, 0..5);
    until("the relay published 40 events", async || {
        relay_stats.acked_position() >= 40
    })
    .await;
    let purged = bus
        .jetstream
        .get_stream(&bus.stream)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    assert!(purged.purged > 0);
    until("the relay published 100 events", async || {
        relay_stats.acked_position() >= 100
    })
    .await;
    bus.jetstream.delete_stream(&bus.stream).await.unwrap();
    let second = spawn_lives(&f.identity, 5..9);
    until("a new stream holds 40 events", async || {
        messages_in(&bus).await >= 40
    })
    .await;
    bus.jetstream.delete_stream(&bus.stream).await.unwrap();
    let mut expected = first.await.unwrap();
    expected.extend(second.await.unwrap());

    // Commands after the last fault: the relay fills the stream again from the log.
    expected.extend(spawn_lives(&f.identity, 9..10).await.unwrap());
    let head = head(&db).await;
    until("the stream holds the whole log again", async || {
        messages_in(&bus).await >= u64::try_from(head).unwrap()
    })
    .await;
    assert_eq!(
        bus.positions(&bus.stream).await,
        (1..=head).collect::<Vec<_>>()
    );
    wait_for_model(&db, &runner_stats, head).await;
    expected.assert_model(&db).await;

    // And the runner follows the new stream, not only the log.
    until("the runner follows the new stream", async || {
        runner_follows(&bus).await
    })
    .await;
    let delivered = runner_stats.delivered();
    expected.extend(spawn_lives(&f.identity, 10..11).await.unwrap());
    let last = self::head(&db).await;
    wait_for_model(&db, &runner_stats, last).await;
    until(
        "the bus delivered the new events to the runner",
        async || runner_stats.delivered() - delivered >= u64::try_from(last - head).unwrap(),
    )
    .await;
    until("the stream holds the new events", async || {
        messages_in(&bus).await >= u64::try_from(last).unwrap()
    })
    .await;
    runner.abort();
    relay.abort();
    assert_eq!(
        bus.positions(&bus.stream).await,
        (1..=last).collect::<Vec<_>>()
    );
    expected.assert_model(&db).await;
    assert_eq!(expected.tenants.len(), 11);
    assert_equal_to_a_rebuild(&db, last).await;
}

// ---------------------------------------------------------------------------------------
// 4. A downstream consumer written against the `.proto` files alone.

/// A downstream consumer written against the published `.proto` files alone, as a service
/// in another repository would write it: its types are generated from `proto/proto` by this
/// crate's build script, and it decodes and checks with prost, sha2, serde_json, hex and
/// chrono, never with a crate of the platform. It follows docs/events.md: it resumes by
/// global position, passes over duplicates and refuses a gap; it checks each envelope's
/// hash against its canonical bytes, its links to the previous event of the log and of its
/// tenant, that `canonical` says what the envelope says, and that the subject and the
/// headers agree with the envelope.
mod reference_consumer {
    /// The types of `platform.events.v1`, generated from the `.proto` files.
    #[allow(
        missing_docs,
        clippy::all,
        clippy::pedantic,
        clippy::unwrap_used,
        clippy::expect_used,
        rust_2018_idioms
    )]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/platform.events.v1.rs"));
    }

    use std::collections::BTreeMap;

    use anyhow::{Context as _, bail, ensure};
    use async_nats::HeaderMap;
    use prost::Message as _;
    use serde_json::{Value, json};
    use sha2::{Digest as _, Sha256};

    use v1::EventEnvelope;
    use v1::event_envelope::Payload;

    /// One message as it came off the stream.
    #[derive(Debug, Clone)]
    pub struct Delivery {
        pub subject: String,
        pub headers: HeaderMap,
        pub payload: bytes::Bytes,
    }

    /// What the consumer did with a message.
    #[derive(Debug)]
    pub enum Accepted {
        /// The next event: applied, and the checkpoint moved to it.
        Applied(Box<EventEnvelope>),
        /// At or below the checkpoint: passed over.
        Duplicate(u64),
    }

    /// The consumer's state: its checkpoint and the heads of the chains it follows.
    #[derive(Debug)]
    pub struct Consumer {
        prefix: String,
        checkpoint: u64,
        last_hash: Vec<u8>,
        /// Per tenant (`None`: the platform-level events), the hash of its last event.
        tenant_heads: BTreeMap<Option<String>, Vec<u8>>,
    }

    const ZERO: [u8; 32] = [0; 32];

    impl Consumer {
        /// A consumer of the events under the subject prefix `prefix`, from the start.
        pub fn new(prefix: &str) -> Self {
            Self {
                prefix: prefix.to_owned(),
                checkpoint: 0,
                last_hash: ZERO.to_vec(),
                tenant_heads: BTreeMap::new(),
            }
        }

        /// The last global position applied.
        pub fn checkpoint(&self) -> u64 {
            self.checkpoint
        }

        /// Checks one message and applies it if it is the next event.
        pub fn accept(&mut self, delivery: &Delivery) -> anyhow::Result<Accepted> {
            let envelope = EventEnvelope::decode(delivery.payload.as_ref())
                .context("the body is not a platform.events.v1.EventEnvelope")?;
            let position = envelope.global_position;
            ensure!(
                envelope.hash.len() == 32
                    && Sha256::digest(&envelope.canonical).as_slice() == envelope.hash,
                "position {position}: SHA-256 of the canonical bytes is not the hash"
            );
            let time = recorded_at(&envelope)?;
            check_canonical(&envelope, &time)?;
            check_headers(&self.prefix, delivery, &envelope, &time)?;
            check_payload(&envelope)?;
            if position <= self.checkpoint {
                return Ok(Accepted::Duplicate(position));
            }
            ensure!(
                position == self.checkpoint + 1,
                "a gap: position {position} came after {}",
                self.checkpoint
            );
            ensure!(
                envelope.prev_hash == self.last_hash,
                "position {position}: prev_hash is not the hash of position {}",
                self.checkpoint
            );
            let tenant_head = self
                .tenant_heads
                .get(&envelope.tenant_id)
                .map_or(&ZERO[..], Vec::as_slice);
            ensure!(
                envelope.tenant_prev_hash == tenant_head,
                "position {position}: tenant_prev_hash is not the hash of its tenant's previous event"
            );
            self.checkpoint = position;
            self.last_hash.clone_from(&envelope.hash);
            self.tenant_heads
                .insert(envelope.tenant_id.clone(), envelope.hash.clone());
            Ok(Accepted::Applied(Box::new(envelope)))
        }
    }

    /// `recorded_at` as RFC 3339 in UTC with six fractional digits.
    fn recorded_at(envelope: &EventEnvelope) -> anyhow::Result<String> {
        let time = envelope.recorded_at.as_ref().context("no recorded_at")?;
        let time = chrono::DateTime::from_timestamp(time.seconds, u32::try_from(time.nanos)?)
            .context("recorded_at is out of range")?;
        Ok(time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    }

    /// The record in `canonical` says what the envelope says.
    fn check_canonical(envelope: &EventEnvelope, time: &str) -> anyhow::Result<()> {
        let position = envelope.global_position;
        let record: Value = serde_json::from_slice(&envelope.canonical)
            .with_context(|| format!("position {position}: canonical is not JSON"))?;
        let Value::Object(record) = record else {
            bail!("position {position}: canonical is not a JSON object");
        };
        ensure!(
            record.len() == 13,
            "position {position}: canonical has {} members, not 13",
            record.len()
        );
        let expected = [
            ("global_position", json!(envelope.global_position)),
            ("event_id", json!(envelope.event_id)),
            ("aggregate_type", json!(envelope.aggregate_type)),
            ("aggregate_id", json!(envelope.aggregate_id)),
            ("sequence", json!(envelope.sequence)),
            ("event_type", json!(envelope.event_type)),
            ("event_version", json!(envelope.event_version)),
            ("tenant_id", json!(envelope.tenant_id)),
            ("recorded_at", json!(time)),
            ("metadata", json!(envelope.metadata)),
            ("prev_hash", json!(hex::encode(&envelope.prev_hash))),
            (
                "tenant_prev_hash",
                json!(hex::encode(&envelope.tenant_prev_hash)),
            ),
        ];
        for (member, value) in expected {
            ensure!(
                record.get(member) == Some(&value),
                "position {position}: canonical `{member}` is {:?}, the envelope says {value}",
                record.get(member)
            );
        }
        match record.get("payload") {
            Some(Value::Object(payload))
                if payload.len() == 1 && payload.contains_key(&envelope.event_type) => {}
            other => bail!(
                "position {position}: canonical payload {other:?} is not one `{}`",
                envelope.event_type
            ),
        }
        Ok(())
    }

    fn header<'a>(delivery: &'a Delivery, name: &str) -> anyhow::Result<&'a str> {
        delivery
            .headers
            .get(name)
            .map(|value| value.as_str())
            .with_context(|| format!("no {name} header"))
    }

    /// The subject and the CloudEvents and platform headers agree with the envelope.
    fn check_headers(
        prefix: &str,
        delivery: &Delivery,
        envelope: &EventEnvelope,
        time: &str,
    ) -> anyhow::Result<()> {
        let position = envelope.global_position;
        let scope = envelope.tenant_id.as_deref().unwrap_or("platform");
        let source = envelope.tenant_id.as_ref().map_or_else(
            || "/platform".to_owned(),
            |t| format!("/platform/tenants/{t}"),
        );
        let expected = [
            ("ce-specversion", "1.0".to_owned()),
            ("ce-id", envelope.event_id.clone()),
            ("Nats-Msg-Id", envelope.event_id.clone()),
            (
                "ce-type",
                format!(
                    "platform.{}.{}.v{}",
                    envelope.aggregate_type, envelope.event_type, envelope.event_version
                ),
            ),
            ("ce-source", source),
            (
                "ce-subject",
                format!("{}/{}", envelope.aggregate_type, envelope.aggregate_id),
            ),
            ("ce-time", time.to_owned()),
            ("platform-position", position.to_string()),
            ("platform-hash", hex::encode(&envelope.hash)),
            (
                "content-type",
                "application/protobuf; messageType=platform.events.v1.EventEnvelope".to_owned(),
            ),
        ];
        for (name, value) in expected {
            let found = header(delivery, name)?;
            ensure!(
                found == value,
                "position {position}: header {name} is `{found}`, the envelope says `{value}`"
            );
        }
        let subject = format!(
            "{prefix}.events.{scope}.{}.{}",
            envelope.aggregate_type, envelope.event_type
        );
        ensure!(
            delivery.subject == subject,
            "position {position}: subject `{}`, the envelope says `{subject}`",
            delivery.subject
        );
        Ok(())
    }

    /// A typed payload is the case of the event's aggregate, and within it the case its
    /// `event_type` names (prost names each case of a oneof after its message).
    fn check_payload(envelope: &EventEnvelope) -> anyhow::Result<()> {
        let position = envelope.global_position;
        let (aggregate, case) = match &envelope.payload {
            None => return Ok(()),
            Some(Payload::Tenant(e)) => ("Tenant", e.event.as_ref().map(|c| format!("{c:?}"))),
            Some(Payload::User(e)) => ("User", e.event.as_ref().map(|c| format!("{c:?}"))),
            Some(Payload::Session(e)) => ("Session", e.event.as_ref().map(|c| format!("{c:?}"))),
            Some(Payload::ApiKey(e)) => ("ApiKey", e.event.as_ref().map(|c| format!("{c:?}"))),
            Some(Payload::ServiceAccount(e)) => {
                ("ServiceAccount", e.event.as_ref().map(|c| format!("{c:?}")))
            }
            Some(Payload::EmailClaim(e)) => {
                ("EmailClaim", e.event.as_ref().map(|c| format!("{c:?}")))
            }
            Some(Payload::Idempotency(e)) => (
                "IdempotencyRecord",
                e.event.as_ref().map(|c| format!("{c:?}")),
            ),
        };
        ensure!(
            aggregate == envelope.aggregate_type,
            "position {position}: a {aggregate} payload for a {} event",
            envelope.aggregate_type
        );
        let case =
            case.with_context(|| format!("position {position}: an empty {aggregate} payload"))?;
        ensure!(
            case.starts_with(&format!("{}(", envelope.event_type)),
            "position {position}: the payload is not a {}",
            envelope.event_type
        );
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_built_from_the_proto_files_alone_verifies_every_envelope_and_header() {
    use reference_consumer::{Accepted, Consumer, Delivery};

    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let f = fixture(&db);
    let (relay, _) = spawn_relay_with_stream(&db, &bus, bus.relay_config()).await;

    // The consumer subscribes with plain async-nats, and follows the stream live.
    let (target, mut reached) = tokio::sync::watch::channel(u64::MAX);
    let consuming = {
        let stream = bus.jetstream.get_stream(&bus.stream).await.unwrap();
        let prefix = bus.prefix.clone();
        tokio::spawn(async move {
            let mut messages = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: format!("{prefix}.events.>"),
                    ..pull::OrderedConfig::default()
                })
                .await
                .unwrap()
                .messages()
                .await
                .unwrap();
            let mut consumer = Consumer::new(&prefix);
            let (mut deliveries, mut applied, mut duplicates) = (Vec::new(), Vec::new(), 0);
            while consumer.checkpoint() < *reached.borrow_and_update() {
                let message = tokio::select! {
                    changed = reached.changed() => {
                        changed.unwrap();
                        continue;
                    }
                    next = tokio::time::timeout(Duration::from_secs(60), messages.next()) => {
                        next.expect("no message for a minute").unwrap().unwrap()
                    }
                };
                let delivery = Delivery {
                    subject: message.subject.to_string(),
                    headers: message.headers.clone().unwrap_or_default(),
                    payload: message.payload.clone(),
                };
                match consumer.accept(&delivery) {
                    Ok(Accepted::Applied(envelope)) => applied.push(envelope),
                    Ok(Accepted::Duplicate(_)) => duplicates += 1,
                    Err(problem) => panic!("the consumer refused a message: {problem:#}"),
                }
                deliveries.push(delivery);
            }
            (deliveries, applied, duplicates)
        })
    };

    let _ = spawn_lives(&f.identity, 0..3).await.unwrap();
    let head = head(&db).await;
    target.send(u64::try_from(head).unwrap()).unwrap();
    let (deliveries, applied, duplicates) = consuming.await.unwrap();
    relay.abort();

    assert_eq!(duplicates, 0, "the stream holds duplicates");
    assert_eq!(
        applied
            .iter()
            .map(|e| e.global_position)
            .collect::<Vec<_>>(),
        (1..=u64::try_from(head).unwrap()).collect::<Vec<_>>()
    );
    assert!(
        applied.iter().all(|e| e.payload.is_some()),
        "an identity event without its typed payload"
    );
    // The envelopes are the log's rows: the hash and event id of every position.
    let log: Vec<(i64, Uuid, Vec<u8>)> = rows(
        &db.app,
        "SELECT global_position, event_id, hash FROM events ORDER BY 1",
    )
    .await;
    let received: Vec<(i64, Uuid, Vec<u8>)> = applied
        .iter()
        .map(|e| {
            (
                i64::try_from(e.global_position).unwrap(),
                uuid(&e.event_id),
                e.hash.clone(),
            )
        })
        .collect();
    assert_eq!(received, log);
    let aggregates: BTreeSet<&str> = applied.iter().map(|e| e.aggregate_type.as_str()).collect();
    assert!(
        ["Tenant", "User", "Session", "ApiKey", "EmailClaim"]
            .iter()
            .all(|a| aggregates.contains(a)),
        "{aggregates:?}"
    );

    // The checks can fail: a changed byte, a gap, a header of another event.
    let mut tampered = deliveries[4].clone();
    let mut envelope = *applied[4].clone();
    envelope.canonical[10] ^= 1;
    tampered.payload = prost::Message::encode_to_vec(&envelope).into();
    let mut consumer = Consumer::new(&bus.prefix);
    for delivery in &deliveries[..4] {
        consumer.accept(delivery).unwrap();
    }
    let refused = consumer.accept(&tampered).unwrap_err().to_string();
    assert!(refused.contains("not the hash"), "{refused}");
    let refused = consumer.accept(&deliveries[5]).unwrap_err().to_string();
    assert!(refused.contains("a gap"), "{refused}");
    let mut misheaded = deliveries[4].clone();
    misheaded
        .headers
        .insert("ce-id", applied[5].event_id.as_str());
    let refused = consumer.accept(&misheaded).unwrap_err().to_string();
    assert!(refused.contains("header ce-id"), "{refused}");
    assert!(matches!(
        consumer.accept(&deliveries[4]).unwrap(),
        Accepted::Applied(_)
    ));
    assert!(matches!(
        consumer.accept(&deliveries[2]).unwrap(),
        Accepted::Duplicate(3)
    ));
}
