//! The identity read model (`projections::identity`) built from real identity flows through
//! the event store: its tables hold exactly what the flows did, a redelivered log changes
//! nothing, a rebuild from zero equals the model built live in small batches, no secret or
//! plaintext personal data reaches it, and a poison event parks it at its position.
//!
//! Expectations are written from what each test did (and the role table of
//! docs/permissions.md), never by folding the events again.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use commands::CommandMetadata;
use commands::bus::Outcome;
use commands::identity::IdentityError;
use commands::privacy::{self, MasterKey, Opened, SubjectKeys};
use commands::security::totp;
use cqrs_es::Aggregate;
use cqrs_es::persist::SerializedEvent;
use domain::identity::api_key::ApiKey;
use domain::identity::email_claim::EmailClaim;
use domain::identity::rbac::{Permission, PermissionSet, RoleName};
use domain::identity::service_account::ServiceAccount;
use domain::identity::session::{Session, SessionCommand};
use domain::identity::tenant::{Tenant, TenantCommand};
use domain::identity::user::User;
use domain::identity::values::{Email, TenantId};
use domain::personal::{PersonalData, SubjectId};
use eventstore::{EventRepository, LogReader, PgSubjectKeys, RecordedEvent, platform_cqrs};
use futures::TryStreamExt;
use projections::identity::{AGGREGATE_TYPES, IdentityModel};
use projections::{Applied, PgProjection, Retry, Setup};
use serde_json::{Value, json};
use tests::TestDb;
use uuid::Uuid;

use crate::identity::{Fixture, OWNER_PASSWORD, anonymous, as_user, fixture};
use crate::quick_retry;

/// Every permission of the catalogue (docs/permissions.md), in sorted order.
const ALL: [&str; 31] = [
    "api_keys:create",
    "api_keys:read",
    "api_keys:revoke",
    "audit:export",
    "audit:read",
    "billing:manage",
    "billing:read",
    "events:subscribe",
    "invoices:read",
    "privacy:forget",
    "resources:deprovision",
    "resources:provision",
    "resources:read",
    "roles:assign",
    "roles:manage",
    "roles:read",
    "service_accounts:manage",
    "service_accounts:read",
    "sessions:read",
    "sessions:revoke",
    "tenants:close",
    "tenants:manage_plan",
    "tenants:read",
    "tenants:suspend",
    "tenants:update",
    "usage:read",
    "usage:record",
    "users:deactivate",
    "users:invite",
    "users:read",
    "users:update",
];

/// What an admin lacks (docs/permissions.md).
const NOT_ADMIN: [&str; 5] = [
    "billing:manage",
    "privacy:forget",
    "tenants:close",
    "tenants:manage_plan",
    "tenants:suspend",
];
const MEMBER: [&str; 6] = [
    "events:subscribe",
    "resources:read",
    "roles:read",
    "tenants:read",
    "usage:read",
    "users:read",
];
const VIEWER: [&str; 4] = ["resources:read", "tenants:read", "usage:read", "users:read"];
const BILLING_ADMIN: [&str; 6] = [
    "billing:manage",
    "billing:read",
    "invoices:read",
    "tenants:manage_plan",
    "tenants:read",
    "usage:read",
];
/// The custom role of the flows: one permission an admin lacks, two it has.
const SUPPORT_LEAD: [&str; 3] = ["billing:manage", "sessions:read", "users:read"];

/// The model's tables with their keys, for digests.
const TABLES: [(&str, &str); 8] = [
    ("api_keys", "key_id"),
    ("custom_roles", "tenant_id, name"),
    ("effective_permissions", "tenant_id, principal"),
    ("memberships", "tenant_id, principal"),
    ("service_accounts", "account_id"),
    ("sessions", "session_id"),
    ("tenants", "tenant_id"),
    ("users", "user_id"),
];

/// The names, sorted and once each.
pub(crate) fn strings(items: &[&str]) -> Vec<String> {
    let set: BTreeSet<String> = items.iter().map(|s| (*s).to_owned()).collect();
    set.into_iter().collect()
}

fn admin() -> Vec<String> {
    ALL.iter()
        .filter(|p| !NOT_ADMIN.contains(p))
        .map(|p| (*p).to_owned())
        .collect()
}

/// A time as PostgreSQL keeps it: whole microseconds.
fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn us_opt(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(us)
}

/// A `timestamptz` column as whole microseconds since the epoch, named after the column.
fn micros(column: &str) -> String {
    format!("(extract(epoch FROM {column}) * 1000000)::bigint AS {column}")
}

/// The columns of a user the flows decide.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, sqlx::FromRow)]
struct UserView {
    user_id: Uuid,
    tenant_id: Uuid,
    status: String,
    email_verified: bool,
    mfa_enabled: bool,
    recovery_codes_left: i32,
    failed_logins: i32,
    lockouts: i32,
    locked_until: Option<i64>,
    invited_by: Option<Uuid>,
    named: bool,
    sessions_valid_after: Option<i64>,
    password_changed_at: Option<i64>,
    activated_at: Option<i64>,
    deactivated_at: Option<i64>,
}

pub(crate) fn now(f: &Fixture) -> DateTime<Utc> {
    use commands::identity::Clock;
    f.clock.now()
}

/// Moves the clock a second on, so that every step has a time of its own.
pub(crate) fn tick(f: &Fixture) -> DateTime<Utc> {
    f.clock.advance(Duration::seconds(1));
    now(f)
}

/// The TOTP code of `secret` at the fixture's time.
pub(crate) fn totp_code(f: &Fixture, secret: &str) -> String {
    let secret = totp::TotpSecret::from_base32(secret).unwrap();
    let step = totp::step_at(u64::try_from(now(f).timestamp()).unwrap());
    format!("{:06}", totp::code_at_step(&secret, step))
}

/// A user of the flows, with what the test knows about them.
#[derive(Debug, Clone)]
pub(crate) struct Person {
    pub(crate) id: String,
    pub(crate) email: String,
    pub(crate) name: String,
    pub(crate) password: String,
}

impl Person {
    pub(crate) fn principal(&self) -> String {
        format!("user:{}", self.id)
    }
}

/// What the flows did, as the test recorded it.
#[derive(Debug, Default)]
pub(crate) struct World {
    pub(crate) acme: String,
    pub(crate) globex: String,
    pub(crate) initech: String,
    pub(crate) people: BTreeMap<&'static str, Person>,
    /// When each named step happened.
    pub(crate) times: BTreeMap<&'static str, DateTime<Utc>>,
    pub(crate) sessions: BTreeMap<&'static str, String>,
    pub(crate) keys: BTreeMap<&'static str, (String, String)>,
    pub(crate) accounts: BTreeMap<&'static str, String>,
    pub(crate) secrets: BTreeMap<&'static str, Uuid>,
    /// Every secret and token the flows were shown, in plaintext.
    pub(crate) plaintext_secrets: Vec<String>,
}

impl World {
    pub(crate) fn person(&self, name: &str) -> &Person {
        &self.people[name]
    }
    pub(crate) fn at(&self, step: &str) -> i64 {
        us(self.times[step])
    }
}

pub(crate) async fn create_tenant(
    f: &Fixture,
    name: &str,
    email: &str,
    person: &str,
    password: &str,
) -> (String, Person, String) {
    let (outcome, _) = f
        .identity
        .create_tenant(&anonymous(), name, "free", email, person, password)
        .await
        .unwrap();
    let Outcome::Done(created) = outcome else {
        panic!("replayed")
    };
    (
        created.tenant_id.to_string(),
        Person {
            id: created.owner_id.to_string(),
            email: email.to_lowercase(),
            name: person.to_owned(),
            password: password.to_owned(),
        },
        created.verification_token.unwrap(),
    )
}

/// Acme, created by Ada with the owner's password; returns its id, Ada, and her email
/// verification token.
pub(crate) async fn create_acme(f: &Fixture) -> (String, Person, String) {
    create_tenant(f, "Acme", "ada@example.org", "Ada Lovelace", OWNER_PASSWORD).await
}

/// Globex, created by Hank; returns its id, Hank, and his email verification token.
pub(crate) async fn create_globex(f: &Fixture) -> (String, Person, String) {
    create_tenant(
        f,
        "Globex",
        "hank@example.org",
        "Hank Scorpio",
        "Hank has a long passphrase",
    )
    .await
}

/// Turns MFA on for `actor`, whose address is `email`, and moves the clock to the next
/// TOTP step (the confirming code's step is spent). Returns the TOTP secret and the
/// recovery codes.
pub(crate) async fn turn_mfa_on(
    f: &Fixture,
    actor: &CommandMetadata,
    email: &str,
) -> (String, Vec<String>) {
    let enrollment = f
        .identity
        .start_totp_enrollment(actor, "Platform", email)
        .await
        .unwrap();
    let recovery = f
        .identity
        .confirm_totp(actor, &totp_code(f, &enrollment.secret))
        .await
        .unwrap();
    f.clock.advance(Duration::seconds(30));
    (enrollment.secret, recovery)
}

async fn register(f: &Fixture, tenant: &str, email: &str, name: &str) -> (Person, String) {
    let password = format!("{name} has a long passphrase");
    let registered = crate::identity::register(f, tenant, email, name, &password).await;
    (
        Person {
            id: registered.user_id.to_string(),
            email: email.to_owned(),
            name: name.to_owned(),
            password,
        },
        registered.verification_token.unwrap(),
    )
}

/// Runs the identity flows of three tenants, recording what they did.
pub(crate) async fn run_flows(f: &Fixture) -> World {
    let mut w = World::default();
    let id = &f.identity;

    // Acme: created, verified, renamed, moved to another plan.
    w.times.insert("acme created", now(f));
    let (acme, ada, ada_token) =
        create_tenant(f, "Acme", "Ada@Example.org", "Ada Lovelace", OWNER_PASSWORD).await;
    let owner = as_user(&ada.id);
    id.verify_email(&anonymous(), &ada.id, &ada_token)
        .await
        .unwrap();
    tick(f);
    id.rename_tenant(&owner, &acme, "Acme Ltd").await.unwrap();
    id.change_plan(&owner, &acme, "team").await.unwrap();
    w.plaintext_secrets.push(ada_token);

    // Grace registers, verifies, becomes a viewer, then an admin with a custom role.
    w.times.insert("grace registered", tick(f));
    let (grace, grace_token) = register(f, &acme, "grace@example.org", "Grace Hopper").await;
    id.verify_email(&anonymous(), &grace.id, &grace_token)
        .await
        .unwrap();
    w.plaintext_secrets.push(grace_token);
    w.times.insert("grace added", tick(f));
    id.add_member(&owner, &acme, &grace.principal(), &["viewer"])
        .await
        .unwrap();
    w.times.insert("support-lead defined", tick(f));
    id.define_role(&owner, &acme, "support-lead", &SUPPORT_LEAD)
        .await
        .unwrap();
    for role in ["support-lead", "admin"] {
        id.assign_role(&owner, &acme, &grace.principal(), role)
            .await
            .unwrap();
    }
    id.unassign_role(&owner, &acme, &grace.principal(), "viewer")
        .await
        .unwrap();

    // Linus is invited as a member and accepts; a second invitee never answers.
    w.times.insert("linus invited", tick(f));
    let (invited, _) = id
        .invite(&owner, &acme, "linus@example.org", &["member"])
        .await
        .unwrap();
    w.plaintext_secrets.push(invited.invitation_token.clone());
    let linus = Person {
        id: invited.user_id.to_string(),
        email: "linus@example.org".into(),
        name: "Linus Torvalds".into(),
        password: "Linus has a long passphrase".into(),
    };
    w.times.insert("linus accepted", tick(f));
    id.accept_invitation(
        &anonymous(),
        &linus.id,
        &invited.invitation_token,
        &linus.name,
        &linus.password,
    )
    .await
    .unwrap();
    w.times.insert("pending invited", tick(f));
    let (pending, _) = id
        .invite(&owner, &acme, "pending@example.org", &["viewer"])
        .await
        .unwrap();
    w.plaintext_secrets.push(pending.invitation_token.clone());
    let pending = Person {
        id: pending.user_id.to_string(),
        email: "pending@example.org".into(),
        name: String::new(),
        password: String::new(),
    };

    // Mallory registers and is deactivated, never a member.
    tick(f);
    let (mallory, token) = register(f, &acme, "mallory@example.org", "Mallory Mal").await;
    w.plaintext_secrets.push(token);
    w.times.insert("mallory deactivated", tick(f));
    id.deactivate_user(&owner, &acme, &mallory.id)
        .await
        .unwrap();

    // Ada's first session: rotated twice, then an old token comes back.
    w.times.insert("s1 opened", tick(f));
    let (s1, _) = id
        .login(&anonymous(), &acme, &ada.email, &ada.password)
        .await
        .unwrap();
    let s1_id = s1.session_id.to_string();
    tick(f);
    let (r1, _) = id
        .refresh(&anonymous(), &s1_id, &s1.refresh_token)
        .await
        .unwrap();
    w.times.insert("s1 refreshed", tick(f));
    let (r2, _) = id
        .refresh(&anonymous(), &s1_id, &r1.refresh_token)
        .await
        .unwrap();
    w.times.insert("s1 reused", tick(f));
    assert!(matches!(
        id.refresh(&anonymous(), &s1_id, &r1.refresh_token).await,
        Err(IdentityError::Unauthenticated {
            reason: "refresh_token_reused",
            ..
        })
    ));
    w.plaintext_secrets
        .extend([s1.refresh_token, r1.refresh_token, r2.refresh_token]);

    // Ada's second session: logged out.
    w.times.insert("s2 opened", tick(f));
    let (s2, _) = id
        .login(&anonymous(), &acme, &ada.email, &ada.password)
        .await
        .unwrap();
    w.times.insert("s2 ended", tick(f));
    id.logout(&owner, &s2.session_id.to_string()).await.unwrap();
    w.plaintext_secrets.push(s2.refresh_token);

    // Grace: a session refreshed once, then "sign out everywhere", then a new session; the
    // old one is revoked when it next tries to refresh. Two wrong passwords at the end.
    let me = as_user(&grace.id);
    w.times.insert("s3 opened", tick(f));
    let (s3, _) = id
        .login(&anonymous(), &acme, &grace.email, &grace.password)
        .await
        .unwrap();
    let s3_id = s3.session_id.to_string();
    w.times.insert("s3 refreshed", tick(f));
    let (s3_next, _) = id
        .refresh(&anonymous(), &s3_id, &s3.refresh_token)
        .await
        .unwrap();
    w.times.insert("grace signed out everywhere", tick(f));
    id.revoke_all_sessions(&me).await.unwrap();
    w.times.insert("s4 opened", tick(f));
    let (s4, _) = id
        .login(&anonymous(), &acme, &grace.email, &grace.password)
        .await
        .unwrap();
    w.times.insert("s3 revoked", tick(f));
    assert!(matches!(
        id.refresh(&anonymous(), &s3_id, &s3_next.refresh_token)
            .await,
        Err(IdentityError::Unauthenticated {
            reason: "session_ended",
            ..
        })
    ));
    for _ in 0..2 {
        tick(f);
        assert!(
            id.login(&anonymous(), &acme, &grace.email, "not her password at all")
                .await
                .is_err()
        );
    }
    w.plaintext_secrets.extend([
        s3.refresh_token,
        s3_next.refresh_token,
        s4.refresh_token.clone(),
    ]);

    // Linus: five wrong passwords lock the account.
    for _ in 0..5 {
        w.times.insert("linus locked", tick(f));
        assert!(
            id.login(&anonymous(), &acme, &linus.email, "not his password either")
                .await
                .is_err()
        );
    }

    // Ada turns MFA on and signs in with a recovery code.
    let (secret, recovery) = turn_mfa_on(f, &owner, &ada.email).await;
    w.times.insert("s5 opened", now(f));
    let (s5, _) = id
        .login_with_code(
            &anonymous(),
            &acme,
            &ada.email,
            &ada.password,
            Some(&recovery[0]),
        )
        .await
        .unwrap();
    w.plaintext_secrets.push(secret);
    w.plaintext_secrets.extend(recovery);
    w.plaintext_secrets.push(s5.refresh_token);

    // Ada changes her address: the new one is unverified.
    tick(f);
    let (token, _) = id
        .change_email(&owner, &ada.password, " Ada.King@Example.org ")
        .await
        .unwrap();
    w.plaintext_secrets.push(token);
    let ada = Person {
        email: "ada.king@example.org".into(),
        ..ada
    };

    // API keys: one with an expiry, one revoked, one of Grace's.
    w.times.insert("k1 created", tick(f));
    let expiry = now(f) + Duration::days(30);
    w.times.insert("k1 expires", expiry);
    let (k1, _) = id
        .create_api_key(
            &owner,
            &acme,
            "ci deploys",
            &["resources:read", "resources:provision"],
            Some(expiry),
        )
        .await
        .unwrap();
    w.times.insert("k2 created", tick(f));
    let (k2, _) = id
        .create_api_key(&owner, &acme, "old", &["users:read"], None)
        .await
        .unwrap();
    w.times.insert("k2 revoked", tick(f));
    id.revoke_api_key(&owner, &acme, &k2.key_id.to_string())
        .await
        .unwrap();
    w.times.insert("k3 created", tick(f));
    let (k3, _) = id
        .create_api_key(&me, &acme, "grace's", &["sessions:read"], None)
        .await
        .unwrap();
    for (name, key) in [("k1", k1), ("k2", k2), ("k3", k3)] {
        w.plaintext_secrets.push(key.key);
        w.keys
            .insert(name, (key.key_id.to_string(), key.display_prefix));
    }

    // Service accounts: one rotated and disabled, one renamed and removed from the tenant.
    w.times.insert("sa1 created", tick(f));
    let (sa1, _) = id
        .create_service_account(&owner, &acme, " billing-sync ", &["billing-admin"])
        .await
        .unwrap();
    let sa1 = sa1.to_string();
    for name in ["s1", "s2"] {
        tick(f);
        let (issued, _) = id.issue_client_secret(&owner, &acme, &sa1).await.unwrap();
        w.secrets.insert(name, issued.secret_id);
        w.plaintext_secrets.push(issued.client_secret);
    }
    tick(f);
    id.revoke_client_secret(&owner, &acme, &sa1, &w.secrets["s1"].to_string())
        .await
        .unwrap();
    id.disable_service_account(&owner, &acme, &sa1)
        .await
        .unwrap();
    w.times.insert("sa2 created", tick(f));
    let (sa2, _) = id
        .create_service_account(&owner, &acme, "deployer", &["operator"])
        .await
        .unwrap();
    let sa2 = sa2.to_string();
    id.rename_service_account(&owner, &acme, &sa2, "deployer-2")
        .await
        .unwrap();
    let (issued, _) = id.issue_client_secret(&owner, &acme, &sa2).await.unwrap();
    w.secrets.insert("s3", issued.secret_id);
    w.plaintext_secrets.push(issued.client_secret);
    id.remove_member(&owner, &acme, &format!("service_account:{sa2}"))
        .await
        .unwrap();
    w.accounts.insert("sa1", sa1);
    w.accounts.insert("sa2", sa2);

    // Globex: its owner changes the password, then the tenant is suspended.
    w.times.insert("globex created", tick(f));
    let (globex, hank, token) = create_globex(f).await;
    w.plaintext_secrets.push(token);
    w.times.insert("hank changed password", tick(f));
    id.change_password(
        &as_user(&hank.id),
        &hank.password,
        "Hank has a new passphrase",
    )
    .await
    .unwrap();
    w.times.insert("globex suspended", tick(f));
    id.suspend_tenant(&as_user(&hank.id), &globex, "unpaid invoices")
        .await
        .unwrap();

    // Initech: suspended, reactivated, closed.
    w.times.insert("initech created", tick(f));
    let (initech, bill, token) = create_tenant(
        f,
        "Initech",
        "bill@example.org",
        "Bill Lumbergh",
        "Bill has a long passphrase",
    )
    .await;
    w.plaintext_secrets.push(token);
    let boss = as_user(&bill.id);
    tick(f);
    id.suspend_tenant(&boss, &initech, "audit").await.unwrap();
    tick(f);
    id.reactivate_tenant(&boss, &initech).await.unwrap();
    w.times.insert("initech closed", tick(f));
    id.close_tenant(&boss, &initech, "moving on").await.unwrap();

    w.sessions.insert("s1", s1_id);
    w.sessions.insert("s2", s2.session_id.to_string());
    w.sessions.insert("s3", s3_id);
    w.sessions.insert("s4", s4.session_id.to_string());
    w.sessions.insert("s5", s5.session_id.to_string());
    for (name, person) in [
        ("ada", ada),
        ("grace", grace),
        ("linus", linus),
        ("pending", pending),
        ("mallory", mallory),
        ("hank", hank),
        ("bill", bill),
    ] {
        w.plaintext_secrets.push(person.password.clone());
        w.people.insert(name, person);
    }
    w.plaintext_secrets.retain(|secret| !secret.is_empty());
    w.acme = acme;
    w.globex = globex;
    w.initech = initech;
    w
}

/// Sets the model up and catches it up with the whole log, `page` events at a time.
pub(crate) async fn build(db: &TestDb, page: i64) -> i64 {
    assert_eq!(
        projections::pg::setup(&db.app, &IdentityModel)
            .await
            .unwrap(),
        Setup::Created
    );
    let head = crate::head(db).await;
    assert_eq!(
        catch_up(db, page).await,
        Applied::Through { position: head }
    );
    head
}

/// Catches the model up with the log, `page` events at a time.
async fn catch_up(db: &TestDb, page: i64) -> Applied {
    let reader = LogReader::new(db.app.clone());
    projections::catch_up(
        &db.app,
        &IdentityModel,
        &reader,
        None,
        page,
        Retry::default(),
    )
    .await
    .unwrap()
}

/// Redefines the custom role `name` of `tenant` as `permissions`, for `actor`, who holds
/// every permission. The identity service has no command for it yet: the tenant aggregate
/// decides it through cqrs-es over the same log.
pub(crate) async fn redefine_role(
    repository: &EventRepository,
    tenant: &str,
    name: &RoleName,
    permissions: &[Permission],
    actor: &CommandMetadata,
    now: DateTime<Utc>,
) {
    platform_cqrs::<Tenant>(repository.clone(), vec![], ())
        .execute_with_metadata(
            tenant,
            TenantCommand::RedefineRole {
                name: name.clone(),
                permissions: permissions.iter().copied().collect(),
                granted_by: PermissionSet::all(),
                now,
            },
            actor.to_map(),
        )
        .await
        .unwrap();
}

/// Deletes the custom role `name` of `tenant`, for `actor`, who holds every permission;
/// through the tenant aggregate, as [`redefine_role`].
pub(crate) async fn delete_role(
    repository: &EventRepository,
    tenant: &str,
    name: RoleName,
    actor: &CommandMetadata,
    now: DateTime<Utc>,
) {
    platform_cqrs::<Tenant>(repository.clone(), vec![], ())
        .execute_with_metadata(
            tenant,
            TenantCommand::DeleteRole {
                name,
                granted_by: PermissionSet::all(),
                now,
            },
            actor.to_map(),
        )
        .await
        .unwrap();
}

/// Expires a session at `now`. The service has no expiry sweep yet: the session aggregate
/// records it through cqrs-es over the same log.
pub(crate) async fn expire_session(
    repository: &EventRepository,
    session: &str,
    now: DateTime<Utc>,
) {
    platform_cqrs::<Session>(repository.clone(), vec![], ())
        .execute(session, SessionCommand::Expire { now })
        .await
        .unwrap();
}

/// Per table of `schema`, a schema of the identity model: its row count and the MD5 of all
/// its rows in key order.
pub(crate) async fn digests(db: &TestDb, schema: &str) -> BTreeMap<&'static str, (i64, String)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1
          ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&db.admin)
    .await
    .unwrap();
    let known: Vec<&str> = TABLES.iter().map(|(table, _)| *table).collect();
    assert_eq!(
        tables, known,
        "the digests must cover every table of {schema}"
    );
    let mut out = BTreeMap::new();
    for (table, key) in TABLES {
        let digest: (i64, Option<String>) = sqlx::query_as(&format!(
            "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY {key}))
               FROM \"{schema}\".{table} t"
        ))
        .fetch_one(&db.admin)
        .await
        .unwrap();
        out.insert(table, (digest.0, digest.1.unwrap_or_default()));
    }
    out
}

pub(crate) async fn all_events(db: &TestDb) -> Vec<RecordedEvent> {
    let reader = LogReader::new(db.app.clone());
    let head = reader.head().await.unwrap().position;
    reader.read_range(1, head).try_collect().await.unwrap()
}

/// The position of the last event of one aggregate, from the log.
async fn last_of(db: &TestDb, aggregate_type: &str, id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT max(global_position) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(aggregate_type)
    .bind(id)
    .fetch_one(&db.app)
    .await
    .unwrap()
}

pub(crate) fn uuid(text: &str) -> Uuid {
    text.parse().unwrap()
}

#[test]
fn the_model_reads_the_aggregate_types_the_domain_writes() {
    assert_eq!(
        AGGREGATE_TYPES,
        [
            Tenant::TYPE,
            User::TYPE,
            Session::TYPE,
            ApiKey::TYPE,
            ServiceAccount::TYPE
        ]
    );
    assert!(!AGGREGATE_TYPES.contains(&EmailClaim::TYPE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_tables_hold_exactly_what_the_flows_did() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let w = run_flows(&f).await;
    build(&db, 500).await;
    let (acme, globex, initech) = (uuid(&w.acme), uuid(&w.globex), uuid(&w.initech));
    let (ada, grace, linus, pending, mallory, hank, bill) = (
        w.person("ada"),
        w.person("grace"),
        w.person("linus"),
        w.person("pending"),
        w.person("mallory"),
        w.person("hank"),
        w.person("bill"),
    );

    // Tenants.
    type TenantRow = (
        Uuid,
        String,
        String,
        String,
        Option<String>,
        DateTime<Utc>,
        i64,
    );
    let tenants: Vec<TenantRow> = sqlx::query_as(
        "SELECT tenant_id, name, plan, status, status_reason, created_at, last_position
           FROM rm_identity.tenants ORDER BY created_at",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    let tenants: Vec<_> = tenants
        .into_iter()
        .map(|(id, name, plan, status, reason, created, last)| {
            (id, name, plan, status, reason, us(created), last)
        })
        .collect();
    assert_eq!(
        tenants,
        vec![
            (
                acme,
                "Acme Ltd".into(),
                "team".into(),
                "active".into(),
                None,
                w.at("acme created"),
                last_of(&db, "Tenant", &w.acme).await
            ),
            (
                globex,
                "Globex".into(),
                "free".into(),
                "suspended".into(),
                Some("unpaid invoices".into()),
                w.at("globex created"),
                last_of(&db, "Tenant", &w.globex).await
            ),
            (
                initech,
                "Initech".into(),
                "free".into(),
                "closed".into(),
                Some("moving on".into()),
                w.at("initech created"),
                last_of(&db, "Tenant", &w.initech).await
            ),
        ]
    );

    // Memberships, with roles sorted; the removed service account and the deactivated user
    // (never a member) are absent.
    let (sa1, sa2) = (&w.accounts["sa1"], &w.accounts["sa2"]);
    let memberships: BTreeSet<(Uuid, String, String, Vec<String>)> = sqlx::query_as(
        "SELECT tenant_id, principal, principal_kind, roles FROM rm_identity.memberships",
    )
    .fetch_all(&db.app)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let sa1_principal = format!("service_account:{sa1}");
    let expected: BTreeSet<(Uuid, String, String, Vec<String>)> = [
        (acme, ada.principal(), "user", strings(&["owner"])),
        (
            acme,
            grace.principal(),
            "user",
            strings(&["support-lead", "admin"]),
        ),
        (acme, linus.principal(), "user", strings(&["member"])),
        (acme, pending.principal(), "user", strings(&["viewer"])),
        (
            acme,
            sa1_principal.clone(),
            "service_account",
            strings(&["billing-admin"]),
        ),
        (globex, hank.principal(), "user", strings(&["owner"])),
        (initech, bill.principal(), "user", strings(&["owner"])),
    ]
    .into_iter()
    .map(|(tenant, principal, kind, roles)| (tenant, principal, kind.to_owned(), roles))
    .collect();
    assert_eq!(memberships, expected);
    let added: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT added_at FROM rm_identity.memberships WHERE principal = $1")
            .bind(grace.principal())
            .fetch_all(&db.app)
            .await
            .unwrap();
    assert_eq!(
        added.into_iter().map(us).collect::<Vec<_>>(),
        [w.at("grace added")]
    );

    // Custom roles.
    let roles: Vec<(Uuid, String, Vec<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT tenant_id, name, permissions, defined_at FROM rm_identity.custom_roles",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(
        roles
            .into_iter()
            .map(|(t, n, p, at)| (t, n, p, us(at)))
            .collect::<Vec<_>>(),
        [(
            acme,
            "support-lead".to_owned(),
            strings(&SUPPORT_LEAD),
            w.at("support-lead defined")
        )]
    );

    // Effective permissions: the union of each member's roles, one row per member.
    let effective: BTreeSet<(Uuid, String, Vec<String>)> = sqlx::query_as(
        "SELECT tenant_id, principal, permissions FROM rm_identity.effective_permissions",
    )
    .fetch_all(&db.app)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let grace_permissions = {
        let mut set: BTreeSet<String> = admin().into_iter().collect();
        set.extend(strings(&SUPPORT_LEAD));
        set.into_iter().collect::<Vec<_>>()
    };
    let expected: BTreeSet<(Uuid, String, Vec<String>)> = [
        (acme, ada.principal(), strings(&ALL)),
        (acme, grace.principal(), grace_permissions),
        (acme, linus.principal(), strings(&MEMBER)),
        (acme, pending.principal(), strings(&VIEWER)),
        (acme, sa1_principal.clone(), strings(&BILLING_ADMIN)),
        (globex, hank.principal(), strings(&ALL)),
        (initech, bill.principal(), strings(&ALL)),
    ]
    .into_iter()
    .collect();
    assert_eq!(effective, expected);

    // Users: status, verification, MFA and login state.
    let users: BTreeSet<UserView> = sqlx::query_as(&format!(
        "SELECT user_id, tenant_id, status, email_verified, mfa_enabled, recovery_codes_left,
                failed_logins, lockouts, {}, invited_by, name_sealed IS NOT NULL AS named,
                {}, {}, {}, {}
           FROM rm_identity.users",
        micros("locked_until"),
        micros("sessions_valid_after"),
        micros("password_changed_at"),
        micros("activated_at"),
        micros("deactivated_at"),
    ))
    .fetch_all(&db.app)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let ada_id = uuid(&ada.id);
    let fresh = |user: &Person, tenant: Uuid, created: &str| UserView {
        user_id: uuid(&user.id),
        tenant_id: tenant,
        status: "active".into(),
        email_verified: false,
        mfa_enabled: false,
        recovery_codes_left: 0,
        failed_logins: 0,
        lockouts: 0,
        locked_until: None,
        invited_by: None,
        named: true,
        sessions_valid_after: None,
        password_changed_at: None,
        activated_at: Some(w.at(created)),
        deactivated_at: None,
    };
    let expected: BTreeSet<UserView> = [
        // Her new address is unverified; MFA on, one recovery code spent.
        UserView {
            mfa_enabled: true,
            recovery_codes_left: 9,
            ..fresh(ada, acme, "acme created")
        },
        // Verified; two failures since her last login; signed out everywhere.
        UserView {
            email_verified: true,
            failed_logins: 2,
            sessions_valid_after: Some(w.at("grace signed out everywhere")),
            ..fresh(grace, acme, "grace registered")
        },
        // Accepting proved his address; locked once, for five minutes.
        UserView {
            email_verified: true,
            lockouts: 1,
            locked_until: Some(us(w.times["linus locked"] + Duration::minutes(5))),
            invited_by: Some(ada_id),
            ..fresh(linus, acme, "linus accepted")
        },
        UserView {
            status: "invited".into(),
            invited_by: Some(ada_id),
            named: false,
            activated_at: None,
            ..fresh(pending, acme, "pending invited")
        },
        UserView {
            status: "deactivated".into(),
            activated_at: Some(us(w.times["mallory deactivated"] - Duration::seconds(1))),
            deactivated_at: Some(w.at("mallory deactivated")),
            ..fresh(mallory, acme, "mallory deactivated")
        },
        UserView {
            sessions_valid_after: Some(w.at("hank changed password")),
            password_changed_at: Some(w.at("hank changed password")),
            ..fresh(hank, globex, "globex created")
        },
        fresh(bill, initech, "initech created"),
    ]
    .into_iter()
    .collect();
    assert_eq!(users, expected);
    let invitation: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT invitation_expires_at FROM rm_identity.users WHERE user_id = $1",
    )
    .bind(uuid(&pending.id))
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(
        us_opt(invitation),
        Some(us(w.times["pending invited"] + Duration::days(7)))
    );
    let last_logins: BTreeMap<Uuid, Option<DateTime<Utc>>> =
        sqlx::query_as::<_, (Uuid, Option<DateTime<Utc>>)>(
            "SELECT user_id, last_login_at FROM rm_identity.users WHERE tenant_id = $1",
        )
        .bind(acme)
        .fetch_all(&db.app)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(us_opt(last_logins[&ada_id]), Some(w.at("s5 opened")));
    assert_eq!(
        us_opt(last_logins[&uuid(&grace.id)]),
        Some(w.at("s4 opened"))
    );
    assert_eq!(last_logins[&uuid(&linus.id)], None);

    // The email index is the blind index of each current address, and the sealed fields
    // are the current ones (the test opens them; the model never does).
    let master = MasterKey::from_bytes([9; 32]);
    let blind = master.blind_index_key();
    let keys = PgSubjectKeys::new(db.app.clone(), master.key_wrapping_key());
    let sealed: Vec<(Uuid, Uuid, String, String, Option<String>)> = sqlx::query_as(
        "SELECT user_id, tenant_id, email_index, email_sealed, name_sealed FROM rm_identity.users",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(sealed.len(), w.people.len());
    for (user, tenant, index, email, name) in sealed {
        let person = w.people.values().find(|p| uuid(&p.id) == user).unwrap();
        let tenant_id: TenantId = tenant.to_string().parse().unwrap();
        let address = Email::parse(&person.email).unwrap();
        assert_eq!(index, blind.email(tenant_id, &address).as_str());
        let key = keys.find(SubjectId::from_uuid(user)).await.unwrap();
        let email: PersonalData = serde_json::from_str(&email).unwrap();
        assert_eq!(
            privacy::open(key.as_ref(), &email, "email").unwrap(),
            Opened::Plain(person.email.clone())
        );
        match name {
            Some(name) => {
                let name: PersonalData = serde_json::from_str(&name).unwrap();
                assert_eq!(
                    privacy::open(key.as_ref(), &name, "name").unwrap(),
                    Opened::Plain(person.name.clone())
                );
            }
            None => assert_eq!(user, uuid(&pending.id)),
        }
    }

    // Sessions.
    type SessionRow = (
        Uuid,
        Uuid,
        Uuid,
        String,
        Option<String>,
        bool,
        i64,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let sessions: Vec<SessionRow> = sqlx::query_as(
        "SELECT session_id, user_id, tenant_id, status, revoke_reason, mfa, generation,
                opened_at, last_refreshed_at, reuse_detected_at, ended_at
           FROM rm_identity.sessions",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    type SessionView = (
        Uuid,
        Uuid,
        Uuid,
        String,
        Option<String>,
        bool,
        i64,
        i64,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    let sessions: BTreeSet<SessionView> = sessions
        .into_iter()
        .map(|s| {
            (
                s.0,
                s.1,
                s.2,
                s.3,
                s.4,
                s.5,
                s.6,
                us(s.7),
                us_opt(s.8),
                us_opt(s.9),
                us_opt(s.10),
            )
        })
        .collect();
    let session = |name: &str| uuid(&w.sessions[name]);
    let grace_id = uuid(&grace.id);
    let expected: BTreeSet<SessionView> = [
        // Rotated twice, then a rotated token came back: revoked for reuse.
        (
            session("s1"),
            ada_id,
            "revoked",
            Some("token_reuse"),
            false,
            3,
            w.at("s1 opened"),
            Some(w.at("s1 refreshed")),
            Some(w.at("s1 reused")),
            Some(w.at("s1 reused")),
        ),
        (
            session("s2"),
            ada_id,
            "ended",
            None,
            false,
            1,
            w.at("s2 opened"),
            None,
            None,
            Some(w.at("s2 ended")),
        ),
        // Revoked when it next tried to refresh after "sign out everywhere".
        (
            session("s3"),
            grace_id,
            "revoked",
            Some("all_sessions_revoked"),
            false,
            2,
            w.at("s3 opened"),
            Some(w.at("s3 refreshed")),
            None,
            Some(w.at("s3 revoked")),
        ),
        (
            session("s4"),
            grace_id,
            "active",
            None,
            false,
            1,
            w.at("s4 opened"),
            None,
            None,
            None,
        ),
        (
            session("s5"),
            ada_id,
            "active",
            None,
            true,
            1,
            w.at("s5 opened"),
            None,
            None,
            None,
        ),
    ]
    .into_iter()
    .map(|s| {
        (
            s.0,
            s.1,
            acme,
            s.2.to_owned(),
            s.3.map(str::to_owned),
            s.4,
            s.5,
            s.6,
            s.7,
            s.8,
            s.9,
        )
    })
    .collect();
    assert_eq!(sessions, expected);

    // API keys.
    type KeyRow = (
        Uuid,
        Uuid,
        String,
        String,
        String,
        Vec<String>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        DateTime<Utc>,
    );
    let keys: Vec<KeyRow> = sqlx::query_as(
        "SELECT key_id, tenant_id, owner, name, display_prefix, scopes, expires_at, revoked_at,
                created_at
           FROM rm_identity.api_keys",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    type KeyView = (
        Uuid,
        Uuid,
        String,
        String,
        String,
        Vec<String>,
        Option<i64>,
        Option<i64>,
        i64,
    );
    let keys: BTreeSet<KeyView> = keys
        .into_iter()
        .map(|k| {
            (
                k.0,
                k.1,
                k.2,
                k.3,
                k.4,
                k.5,
                us_opt(k.6),
                us_opt(k.7),
                us(k.8),
            )
        })
        .collect();
    let key = |name: &str| {
        let (id, prefix) = &w.keys[name];
        (uuid(id), prefix.clone())
    };
    let expected: BTreeSet<KeyView> = [
        (
            "k1",
            ada.principal(),
            "ci deploys",
            strings(&["resources:read", "resources:provision"]),
            Some(w.at("k1 expires")),
            None,
        ),
        (
            "k2",
            ada.principal(),
            "old",
            strings(&["users:read"]),
            None,
            Some(w.at("k2 revoked")),
        ),
        (
            "k3",
            grace.principal(),
            "grace's",
            strings(&["sessions:read"]),
            None,
            None,
        ),
    ]
    .into_iter()
    .map(|(name, owner, label, scopes, expires, revoked)| {
        let (id, prefix) = key(name);
        let created = w.at(match name {
            "k1" => "k1 created",
            "k2" => "k2 created",
            _ => "k3 created",
        });
        (
            id,
            acme,
            owner,
            label.to_owned(),
            prefix,
            scopes,
            expires,
            revoked,
            created,
        )
    })
    .collect();
    assert_eq!(keys, expected);

    // Service accounts.
    type AccountView = (Uuid, Uuid, String, bool, String, Vec<Uuid>, i64);
    let accounts: BTreeSet<AccountView> = sqlx::query_as(&format!(
        "SELECT account_id, tenant_id, name, enabled, created_by, active_secret_ids, {}
           FROM rm_identity.service_accounts",
        micros("created_at")
    ))
    .fetch_all(&db.app)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let expected: BTreeSet<_> = [
        (
            uuid(sa1),
            acme,
            "billing-sync".to_owned(),
            false,
            ada.principal(),
            vec![w.secrets["s2"]],
            w.at("sa1 created"),
        ),
        (
            uuid(sa2),
            acme,
            "deployer-2".to_owned(),
            true,
            ada.principal(),
            vec![w.secrets["s3"]],
            w.at("sa2 created"),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(accounts, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redefining_and_deleting_a_custom_role_recomputes_its_holders_permissions() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (acme, ada, _) = create_acme(&f).await;
    let owner = as_user(&ada.id);
    let (grace, _) = register(&f, &acme, "grace@example.org", "Grace Hopper").await;
    f.identity
        .define_role(&owner, &acme, "finance", &["billing:read", "invoices:read"])
        .await
        .unwrap();
    f.identity
        .add_member(&owner, &acme, &grace.principal(), &["finance"])
        .await
        .unwrap();
    build(&db, 500).await;
    let permissions_of_grace = || async {
        sqlx::query_scalar::<_, Vec<String>>(
            "SELECT permissions FROM rm_identity.effective_permissions WHERE principal = $1",
        )
        .bind(grace.principal())
        .fetch_one(&db.app)
        .await
        .unwrap()
    };
    assert_eq!(
        permissions_of_grace().await,
        strings(&["billing:read", "invoices:read"])
    );

    // Redefined through the tenant aggregate.
    let store = db.store();
    let finance = RoleName::parse("finance").unwrap();
    redefine_role(
        &store.repository,
        &acme,
        &finance,
        &[Permission::BillingRead, Permission::UsageRead],
        &owner,
        now(&f),
    )
    .await;
    catch_up(&db, 500).await;
    assert_eq!(
        permissions_of_grace().await,
        strings(&["billing:read", "usage:read"])
    );
    let role: (Vec<String>, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT permissions, redefined_at FROM rm_identity.custom_roles WHERE name = 'finance'",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(role.0, strings(&["billing:read", "usage:read"]));
    assert_eq!(us_opt(role.1), Some(us(now(&f))));

    // Swapped for a built-in role, then deleted.
    f.identity
        .assign_role(&owner, &acme, &grace.principal(), "viewer")
        .await
        .unwrap();
    f.identity
        .unassign_role(&owner, &acme, &grace.principal(), "finance")
        .await
        .unwrap();
    delete_role(&store.repository, &acme, finance, &owner, now(&f)).await;
    catch_up(&db, 500).await;
    assert_eq!(permissions_of_grace().await, strings(&VIEWER));
    let roles: Vec<String> =
        sqlx::query_scalar("SELECT roles FROM rm_identity.memberships WHERE principal = $1")
            .bind(grace.principal())
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(roles, ["viewer"]);
    let roles: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_identity.custom_roles")
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert_eq!(roles, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_the_same_events_again_changes_nothing() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    run_flows(&f).await;
    let head = build(&db, 500).await;
    let before = digests(&db, "rm_identity").await;
    assert!(before.values().all(|(rows, _)| *rows > 0), "{before:?}");
    let events = all_events(&db).await;

    // Redelivered through the runner: passed over by the checkpoint.
    let applied = projections::pg::apply_batch(&db.app, &IdentityModel, &events)
        .await
        .unwrap();
    assert_eq!(applied, Applied::Through { position: head });
    assert_eq!(digests(&db, "rm_identity").await, before);

    // Redelivered past the checkpoint, straight into the model, whole and in overlapping
    // halves: every aggregate's rows pass over events they already hold.
    let wanted: Vec<&RecordedEvent> = events.iter().filter(|e| IdentityModel.wants(e)).collect();
    let half = wanted.len() / 2;
    for batch in [&wanted[..], &wanted[half..], &wanted[..half + 3]] {
        let mut tx = db.app.begin().await.unwrap();
        sqlx::query("SET LOCAL search_path TO rm_identity, public")
            .execute(&mut *tx)
            .await
            .unwrap();
        IdentityModel.apply(&mut tx, batch).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(digests(&db, "rm_identity").await, before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_from_zero_equals_the_model_built_live_in_small_batches() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    run_flows(&f).await;
    let head = build(&db, 3).await;
    let live = digests(&db, "rm_identity").await;
    assert!(live.values().all(|(rows, _)| *rows > 0), "{live:?}");

    let reader = LogReader::new(db.app.clone());
    let mut pages = 0;
    let rebuilt = projections::pg::rebuild(&db.app, &IdentityModel, &reader, None, 50, |_, _| {
        pages += 1;
    })
    .await
    .unwrap();
    assert_eq!(rebuilt.position, head);
    assert!(pages > 1, "the rebuild read the log in one page");
    assert_eq!(digests(&db, "rm_identity").await, live);
    let checkpoint = projections::pg::checkpoint(&db.app, "identity")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (checkpoint.version, checkpoint.position),
        (IdentityModel.version(), head)
    );
}

/// Every string value under the keys that hold secrets or their hashes, in every payload.
fn secret_values(value: &Value, under_secret: bool, out: &mut Vec<String>) {
    const SECRET_KEYS: [&str; 8] = [
        "password",
        "hash",
        "refresh",
        "token",
        "invitation",
        "recovery_codes",
        "code",
        "secret",
    ];
    match value {
        Value::String(text) if under_secret => out.push(text.clone()),
        Value::Array(items) => {
            for item in items {
                secret_values(item, under_secret, out);
            }
        }
        Value::Object(members) => {
            for (key, member) in members {
                secret_values(
                    member,
                    under_secret || SECRET_KEYS.contains(&key.as_str()),
                    out,
                );
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_row_of_the_model_holds_a_secret_or_plaintext_personal_data() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let w = run_flows(&f).await;
    build(&db, 500).await;

    let rows: Vec<String> = {
        let mut rows = Vec::new();
        for (table, _) in TABLES {
            let text: Vec<String> =
                sqlx::query_scalar(&format!("SELECT t::text FROM rm_identity.{table} t"))
                    .fetch_all(&db.app)
                    .await
                    .unwrap();
            rows.extend(text);
        }
        rows
    };
    // 3 tenants, 7 memberships and as many effective permissions, 1 custom role, 7 users,
    // 5 sessions, 3 API keys, 2 service accounts.
    assert_eq!(rows.len(), 35);
    let lowercase: Vec<String> = rows.iter().map(|row| row.to_lowercase()).collect();

    // The log does hold password hashes and token hashes; the model holds none of them.
    let mut hashes = Vec::new();
    for event in all_events(&db).await {
        secret_values(&event.payload, false, &mut hashes);
    }
    assert!(hashes.iter().any(|h| h.starts_with("$argon2id$")));
    assert!(
        hashes.len() > 30,
        "only {} secret values in the log",
        hashes.len()
    );
    for row in &rows {
        assert!(!row.contains("$argon2id$"), "a password hash: {row}");
        for hash in &hashes {
            assert!(!row.contains(hash.as_str()), "a secret of the log: {row}");
        }
    }
    // Nor anything the flows were shown once, nor any address, name or password typed.
    let mut plaintexts = w.plaintext_secrets.clone();
    for person in w.people.values() {
        plaintexts.extend([
            person.email.clone(),
            person.password.clone(),
            person.name.clone(),
        ]);
    }
    plaintexts.push("ada@example.org".to_owned());
    plaintexts.retain(|plaintext| !plaintext.is_empty());
    for plaintext in plaintexts {
        let needle = plaintext.to_lowercase();
        assert!(
            !lowercase.iter().any(|row| row.contains(&needle)),
            "`{plaintext}` is in the model"
        );
    }
    // No column is even named for a secret (times and counts about them are fine).
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'rm_identity'",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert!(columns.len() > 60, "{columns:?}");
    for column in &columns {
        assert!(
            ![
                "password", "hash", "token", "refresh", "secret", "code", "codes"
            ]
            .iter()
            .any(|noun| column == noun || column.ends_with(&format!("_{noun}"))),
            "column `{column}`"
        );
    }
}

/// Appends one event with a payload of the test's choosing to an aggregate.
pub(crate) async fn append_raw(
    db: &TestDb,
    aggregate_type: &str,
    aggregate_id: &str,
    event_type: &str,
    payload: Value,
) -> i64 {
    let store = db.store();
    let sequence: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(sequence), 0) + 1 FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_one(&db.app)
    .await
    .unwrap();
    let event = SerializedEvent::new(
        aggregate_id.to_owned(),
        usize::try_from(sequence).unwrap(),
        aggregate_type.to_owned(),
        event_type.to_owned(),
        "1".to_owned(),
        payload,
        json!({"actor_id": "test", "actor_kind": "system"}),
    );
    store
        .repository
        .append(&[event], None)
        .await
        .unwrap()
        .unwrap()
        .last_position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_does_not_decode_parks_the_model_at_its_position() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (acme, ada, _) = create_acme(&f).await;
    let unknown = append_raw(
        &db,
        "Tenant",
        &acme,
        "TenantExploded",
        json!({"TenantExploded": {"at": "2026-01-01T00:00:00Z"}}),
    )
    .await;
    let misshapen = append_raw(
        &db,
        "Tenant",
        &acme,
        "TenantRenamed",
        json!({"TenantRenamed": {"name": 42, "renamed_at": "2026-01-01T00:00:00Z"}}),
    )
    .await;
    let orphan = append_raw(
        &db,
        "User",
        &Uuid::now_v7().to_string(),
        "EmailVerified",
        json!({"EmailVerified": {"verified_at": "2026-01-01T00:00:00Z"}}),
    )
    .await;

    // Each one fails on its own, naming its position.
    projections::pg::setup(&db.app, &IdentityModel)
        .await
        .unwrap();
    let events = all_events(&db).await;
    for (position, problem) in [
        (unknown, "does not decode"),
        (misshapen, "does not decode"),
        (orphan, "no user with this id was created"),
    ] {
        let event = events
            .iter()
            .find(|e| e.global_position == position)
            .unwrap();
        let mut tx = db.app.begin().await.unwrap();
        sqlx::query("SET LOCAL search_path TO rm_identity, public")
            .execute(&mut *tx)
            .await
            .unwrap();
        let err = IdentityModel.apply(&mut tx, &[event]).await.unwrap_err();
        assert_eq!(err.position, Some(position), "{err}");
        assert!(err.message.contains(problem), "{err}");
        tx.rollback().await.unwrap();
    }

    // The runner applies what comes before the first one, then parks there.
    let reader = LogReader::new(db.app.clone());
    let retry = quick_retry(2);
    let applied = projections::catch_up(&db.app, &IdentityModel, &reader, None, 500, retry)
        .await
        .unwrap();
    let Applied::Parked(parked) = applied else {
        panic!("not parked: {applied:?}")
    };
    assert_eq!(parked.position, unknown);
    assert!(
        parked.error.contains("unknown variant `TenantExploded`"),
        "{}",
        parked.error
    );
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT principal FROM rm_identity.memberships WHERE 'owner' = ANY(roles)",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(owners, [ada.principal()]);
    let checkpoint = projections::pg::checkpoint(&db.app, "identity")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint.position, unknown - 1);

    // Skipping it, by name, moves on to the next poison event.
    projections::pg::skip(&db.app, "identity", unknown, "test")
        .await
        .unwrap();
    let applied = projections::catch_up(&db.app, &IdentityModel, &reader, None, 500, retry)
        .await
        .unwrap();
    assert!(
        matches!(&applied, Applied::Parked(parked) if parked.position == misshapen),
        "{applied:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_turned_off_an_account_switched_back_on_and_an_expired_session_show_as_such() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (acme, ada, _) = create_acme(&f).await;
    let owner = as_user(&ada.id);

    // MFA on, a login with a TOTP code, MFA off with a fresh code.
    let (secret, _) = turn_mfa_on(&f, &owner, &ada.email).await;
    let opened = now(&f);
    let (login, _) = f
        .identity
        .login_with_code(
            &anonymous(),
            &acme,
            &ada.email,
            &ada.password,
            Some(&totp_code(&f, &secret)),
        )
        .await
        .unwrap();
    f.clock.advance(Duration::seconds(30));
    f.identity
        .disable_mfa(&owner, &totp_code(&f, &secret))
        .await
        .unwrap();

    // A service account switched off and on again.
    let (account, _) = f
        .identity
        .create_service_account(&owner, &acme, "robot", &["viewer"])
        .await
        .unwrap();
    let account = account.to_string();
    f.identity
        .disable_service_account(&owner, &acme, &account)
        .await
        .unwrap();
    f.identity
        .enable_service_account(&owner, &acme, &account)
        .await
        .unwrap();

    // The session lives out its lifetime.
    let store = db.store();
    let expired = opened + Duration::days(30) + Duration::seconds(1);
    expire_session(&store.repository, &login.session_id.to_string(), expired).await;

    build(&db, 500).await;
    let user: (bool, i32, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT mfa_enabled, recovery_codes_left, last_login_at FROM rm_identity.users",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(
        (user.0, user.1, us_opt(user.2)),
        (false, 0, Some(us(opened)))
    );
    let enabled: bool = sqlx::query_scalar("SELECT enabled FROM rm_identity.service_accounts")
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert!(enabled);
    let session: (String, Option<String>, bool, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT status, revoke_reason, mfa, ended_at FROM rm_identity.sessions")
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(
        (session.0.as_str(), session.1, session.2, us_opt(session.3)),
        ("expired", None, true, Some(us(expired)))
    );
}
