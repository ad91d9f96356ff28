//! Laws of the identity commands over generated actors and flows, through the real event
//! store: a command never succeeds for an actor that lacks its permission, and no stored
//! row ever holds an email address, a name, a password, a token, a key, a TOTP secret, a
//! recovery code or a client IP in plaintext.
//!
//! Each test has one database and each case a tenant of its own. Passwords are hashed with
//! real Argon2id, at the lowest cost Argon2 allows, so that hundreds of them take moments.

use std::cell::Cell;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::Duration;
use commands::bus::Outcome;
use commands::identity::{Clock, IdentityError};
use commands::privacy::MasterKey;
use commands::security::totp;
use commands::{ClientIp, CommandMetadata};
use domain::ActorKind;
use domain::identity::rbac::{BuiltinRole, Permission, PermissionSet};
use proptest::prelude::*;
use proptest::sample::{Index, subsequence};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tests::TestDb;
use tokio::runtime::Runtime;
use uuid::Uuid;

use crate::identity::{Fixture, fixture_with};

/// The identity service over `db`'s event store, hashing with [`CheapArgon2id`]; call it
/// inside the runtime, which runs the store's tasks.
fn fixture(db: &TestDb) -> Fixture {
    fixture_with(
        db,
        &MasterKey::from_bytes([7; 32]),
        Arc::new(tests::passwords::CheapArgon2id::new()),
    )
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `property` for `cases` generated inputs, each on `runtime`, shrinking a failure to
/// a minimal input and panicking with it.
fn check<S, F>(runtime: &Runtime, cases: u32, strategy: &S, property: impl Fn(S::Value) -> F)
where
    S: Strategy,
    F: Future<Output = Result<(), TestCaseError>>,
{
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        // Each step of shrinking reruns a case against the database: bound the search.
        max_shrink_time: 30_000,
        ..Config::with_cases(cases)
    });
    if let Err(failure) = runner.run(strategy, |value| runtime.block_on(property(value))) {
        panic!("{failure}");
    }
}

fn anonymous(ip: Option<IpAddr>) -> CommandMetadata {
    let mut metadata = CommandMetadata::new("anonymous", ActorKind::Anonymous, None);
    metadata.client_ip = ip.map(ClientIp::Plain);
    metadata
}

fn as_user(user: &str, tenant: &str, ip: Option<IpAddr>) -> CommandMetadata {
    let mut metadata = CommandMetadata::new(user, ActorKind::User, tenant.parse().ok());
    metadata.client_ip = ip.map(ClientIp::Plain);
    metadata
}

async fn events(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.admin)
        .await
        .unwrap()
}

/// Creates a tenant; returns its id and its owner's id and email verification token.
async fn create_tenant(
    f: &Fixture,
    metadata: &CommandMetadata,
    email: &str,
    name: &str,
    password: &str,
) -> (String, String, String) {
    let (outcome, _) = f
        .identity
        .create_tenant(metadata, "Tenant", "free", email, name, password)
        .await
        .unwrap();
    let Outcome::Done(created) = outcome else {
        panic!("a new tenant was replayed");
    };
    (
        created.tenant_id.to_string(),
        created.owner_id.to_string(),
        created.verification_token.unwrap(),
    )
}

// --- An actor never succeeds at a command whose permission it lacks ------------------------

const PASSWORD: &str = "a long and unusual passphrase";
/// The name of the custom role a generated actor may hold.
const CUSTOM_ROLE: &str = "custom";

/// Who issues the command under test, in the case's tenant.
#[derive(Debug, Clone)]
enum Actor {
    /// Invited with the first of its roles and given the others by the owner. It may have
    /// accepted the invitation, and it may have been removed from the tenant since.
    Member {
        builtin: Vec<BuiltinRole>,
        /// The permissions of the custom role it holds, if it holds one.
        custom: Option<Vec<Permission>>,
        accepted: bool,
        removed: bool,
    },
    /// Registered in the tenant and never given a role.
    Registered,
    /// The owner of another tenant.
    Stranger,
}

impl Actor {
    /// The names of the roles it was given.
    fn roles(&self) -> Vec<&'static str> {
        match self {
            Self::Member {
                builtin, custom, ..
            } => builtin
                .iter()
                .map(|role| role.as_str())
                .chain(custom.as_ref().map(|_| CUSTOM_ROLE))
                .collect(),
            Self::Registered | Self::Stranger => Vec::new(),
        }
    }

    /// What it may do in the case's tenant: the union of its roles' permissions while it is
    /// a member, nothing otherwise.
    fn permissions(&self) -> PermissionSet {
        match self {
            Self::Member {
                builtin,
                custom,
                removed: false,
                ..
            } => builtin.iter().fold(
                custom.iter().flatten().copied().collect(),
                |set: PermissionSet, role| set.union(role.permissions()),
            ),
            _ => PermissionSet::EMPTY,
        }
    }
}

/// Whom a command about a member names.
#[derive(Debug, Clone, Copy)]
enum Target {
    Owner,
    Bystander,
    Actor,
}

/// A role a command names.
#[derive(Debug, Clone, Copy)]
enum Role {
    Builtin(BuiltinRole),
    /// The case's custom role, which exists only if the actor was given it.
    Custom,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Builtin(role) => role.as_str(),
            Self::Custom => CUSTOM_ROLE,
        }
    }
}

/// A tenant-scoped command that needs one permission.
#[derive(Debug, Clone)]
enum Attempt {
    RenameTenant,
    ChangePlan,
    SuspendTenant,
    ReactivateTenant,
    CloseTenant,
    Invite(Vec<Role>),
    AssignRole(Target, Role),
    UnassignRole(Target, Role),
    DefineRole(Vec<Permission>),
    RemoveMember(Target),
    DeactivateUser(Target),
    CreateApiKey(Vec<Permission>),
    RevokeApiKey,
}

impl Attempt {
    /// The permission the command needs, as docs/identity.md names it.
    fn needs(&self) -> Permission {
        match self {
            Self::RenameTenant => Permission::TenantsUpdate,
            Self::ChangePlan => Permission::TenantsManagePlan,
            Self::SuspendTenant | Self::ReactivateTenant => Permission::TenantsSuspend,
            Self::CloseTenant => Permission::TenantsClose,
            Self::Invite(_) => Permission::UsersInvite,
            Self::AssignRole(..) | Self::UnassignRole(..) => Permission::RolesAssign,
            Self::DefineRole(_) => Permission::RolesManage,
            Self::RemoveMember(_) | Self::DeactivateUser(_) => Permission::UsersDeactivate,
            Self::CreateApiKey(_) => Permission::ApiKeysCreate,
            Self::RevokeApiKey => Permission::ApiKeysRevoke,
        }
    }
}

/// The permissions the commands under test need.
const NEEDED: &[Permission] = &[
    Permission::ApiKeysCreate,
    Permission::ApiKeysRevoke,
    Permission::RolesAssign,
    Permission::RolesManage,
    Permission::TenantsClose,
    Permission::TenantsManagePlan,
    Permission::TenantsSuspend,
    Permission::TenantsUpdate,
    Permission::UsersDeactivate,
    Permission::UsersInvite,
];

fn permissions(size: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<Permission>> {
    subsequence(Permission::ALL.to_vec(), size)
}

/// A custom role's permissions: some that the commands need, and perhaps a few others.
fn custom_role() -> impl Strategy<Value = Vec<Permission>> {
    (subsequence(NEEDED.to_vec(), 1..=9), permissions(0..=3)).prop_map(|(needed, others)| {
        let set: PermissionSet = needed.into_iter().chain(others).collect();
        set.iter().collect()
    })
}

fn actor() -> impl Strategy<Value = Actor> {
    let member = (
        subsequence(BuiltinRole::ALL.to_vec(), 0..=2),
        proptest::option::weighted(0.85, custom_role()),
        any::<bool>(),
        proptest::bool::weighted(0.2),
    )
        .prop_filter("a member holds a role", |(builtin, custom, ..)| {
            !builtin.is_empty() || custom.is_some()
        })
        .prop_map(|(builtin, custom, accepted, removed)| Actor::Member {
            builtin,
            custom,
            accepted,
            removed,
        });
    prop_oneof![
        8 => member,
        1 => Just(Actor::Registered),
        1 => Just(Actor::Stranger),
    ]
}

fn attempt() -> impl Strategy<Value = Attempt> {
    let target = prop_oneof![
        Just(Target::Owner),
        Just(Target::Bystander),
        Just(Target::Actor)
    ];
    let role = prop_oneof![
        proptest::sample::select(BuiltinRole::ALL.to_vec()).prop_map(Role::Builtin),
        Just(Role::Custom),
    ];
    prop_oneof![
        Just(Attempt::RenameTenant),
        Just(Attempt::ChangePlan),
        Just(Attempt::SuspendTenant),
        Just(Attempt::ReactivateTenant),
        Just(Attempt::CloseTenant),
        proptest::collection::vec(role.clone(), 0..=2).prop_map(Attempt::Invite),
        (target.clone(), role.clone()).prop_map(|(t, r)| Attempt::AssignRole(t, r)),
        (target.clone(), role).prop_map(|(t, r)| Attempt::UnassignRole(t, r)),
        permissions(0..=3).prop_map(Attempt::DefineRole),
        target.clone().prop_map(Attempt::RemoveMember),
        target.prop_map(Attempt::DeactivateUser),
        permissions(0..=3).prop_map(Attempt::CreateApiKey),
        Just(Attempt::RevokeApiKey),
    ]
}

/// A case's tenant: its owner, a bystander holding `viewer`, the owner's API key, and the
/// actor.
struct Scene {
    tenant: String,
    owner: String,
    bystander: String,
    key: String,
    actor: String,
}

impl Scene {
    fn user(&self, target: Target) -> &str {
        match target {
            Target::Owner => &self.owner,
            Target::Bystander => &self.bystander,
            Target::Actor => &self.actor,
        }
    }

    fn principal(&self, target: Target) -> String {
        format!("user:{}", self.user(target))
    }
}

async fn scene(f: &Fixture, stranger: &str, actor: &Actor) -> Scene {
    let id = &f.identity;
    let (tenant, owner, _) =
        create_tenant(f, &anonymous(None), "owner@example.org", "Owner", PASSWORD).await;
    let by_owner = as_user(&owner, &tenant, None);
    let (key, _) = id
        .create_api_key(&by_owner, &tenant, "deploys", &["resources:read"], None)
        .await
        .unwrap();
    let (bystander, _) = id
        .invite(&by_owner, &tenant, "bystander@example.org", &["viewer"])
        .await
        .unwrap();
    let actor_id = match actor {
        Actor::Member {
            custom,
            accepted,
            removed,
            ..
        } => {
            if let Some(permissions) = custom {
                let permissions: Vec<&str> = permissions.iter().map(|p| p.as_str()).collect();
                id.define_role(&by_owner, &tenant, CUSTOM_ROLE, &permissions)
                    .await
                    .unwrap();
            }
            let roles = actor.roles();
            let (first, others) = roles.split_first().unwrap();
            let (invited, _) = id
                .invite(&by_owner, &tenant, "actor@example.org", &[first])
                .await
                .unwrap();
            let user = invited.user_id.to_string();
            for role in others {
                id.assign_role(&by_owner, &tenant, &format!("user:{user}"), role)
                    .await
                    .unwrap();
            }
            if *accepted {
                id.accept_invitation(
                    &anonymous(None),
                    &user,
                    &invited.invitation_token,
                    "Actor",
                    PASSWORD,
                )
                .await
                .unwrap();
            }
            if *removed {
                id.remove_member(&by_owner, &tenant, &format!("user:{user}"))
                    .await
                    .unwrap();
            }
            user
        }
        Actor::Registered => {
            let (outcome, _) = id
                .register(
                    &anonymous(None),
                    &tenant,
                    "actor@example.org",
                    "Actor",
                    PASSWORD,
                )
                .await
                .unwrap();
            let Outcome::Done(registered) = outcome else {
                panic!("a new registration was replayed");
            };
            registered.user_id.to_string()
        }
        Actor::Stranger => stranger.to_owned(),
    };
    Scene {
        tenant,
        owner,
        bystander: bystander.user_id.to_string(),
        key: key.key_id.to_string(),
        actor: actor_id,
    }
}

/// Issues `attempt` in the scene's tenant as its actor.
async fn issue(f: &Fixture, scene: &Scene, attempt: &Attempt) -> Result<(), IdentityError> {
    let id = &f.identity;
    let tenant = scene.tenant.as_str();
    let by = &as_user(&scene.actor, tenant, None);
    match attempt {
        Attempt::RenameTenant => id.rename_tenant(by, tenant, "Renamed").await.map(|_| ()),
        Attempt::ChangePlan => id.change_plan(by, tenant, "enterprise").await.map(|_| ()),
        Attempt::SuspendTenant => id.suspend_tenant(by, tenant, "audit").await.map(|_| ()),
        Attempt::ReactivateTenant => id.reactivate_tenant(by, tenant).await.map(|_| ()),
        Attempt::CloseTenant => id.close_tenant(by, tenant, "done").await.map(|_| ()),
        Attempt::Invite(roles) => {
            let roles: Vec<&str> = roles.iter().map(|role| role.name()).collect();
            id.invite(by, tenant, "invitee@example.org", &roles)
                .await
                .map(|_| ())
        }
        Attempt::AssignRole(target, role) => id
            .assign_role(by, tenant, &scene.principal(*target), role.name())
            .await
            .map(|_| ()),
        Attempt::UnassignRole(target, role) => id
            .unassign_role(by, tenant, &scene.principal(*target), role.name())
            .await
            .map(|_| ()),
        Attempt::DefineRole(permissions) => {
            let permissions: Vec<&str> = permissions.iter().map(|p| p.as_str()).collect();
            id.define_role(by, tenant, "defined", &permissions)
                .await
                .map(|_| ())
        }
        Attempt::RemoveMember(target) => id
            .remove_member(by, tenant, &scene.principal(*target))
            .await
            .map(|_| ()),
        Attempt::DeactivateUser(target) => id
            .deactivate_user(by, tenant, scene.user(*target))
            .await
            .map(|_| ()),
        Attempt::CreateApiKey(scopes) => {
            let scopes: Vec<&str> = scopes.iter().map(|p| p.as_str()).collect();
            id.create_api_key(by, tenant, "mine", &scopes, None)
                .await
                .map(|_| ())
        }
        Attempt::RevokeApiKey => id.revoke_api_key(by, tenant, &scene.key).await.map(|_| ()),
    }
}

#[test]
fn an_actor_never_succeeds_at_a_command_whose_permission_it_lacks() {
    let runtime = runtime();
    let db = runtime.block_on(TestDb::new());
    let f = {
        let _inside = runtime.enter();
        fixture(&db)
    };
    let (_, stranger, _) = runtime.block_on(create_tenant(
        &f,
        &anonymous(None),
        "stranger@example.org",
        "Stranger",
        PASSWORD,
    ));
    let (denied, allowed) = (Cell::new(0), Cell::new(0));
    check(&runtime, 64, &(actor(), attempt()), |(actor, attempt)| {
        let (f, db, stranger) = (&f, &db, stranger.as_str());
        let (denied, allowed) = (&denied, &allowed);
        async move {
            let scene = scene(f, stranger, &actor).await;
            let needed = attempt.needs();
            let before = events(db).await;
            let result = issue(f, &scene, &attempt).await;
            let written = events(db).await - before;
            prop_assert!(
                !matches!(result, Err(IdentityError::Infrastructure(_))),
                "the store failed: {result:?}"
            );
            if actor.permissions().contains(needed) {
                allowed.set(allowed.get() + 1);
                prop_assert!(
                    !matches!(result, Err(IdentityError::Forbidden(_))),
                    "the actor holds `{needed}` and was refused: {result:?}"
                );
            } else {
                denied.set(denied.get() + 1);
                prop_assert_eq!(
                    &result,
                    &Err(IdentityError::Forbidden(needed)),
                    "the actor lacks `{}`",
                    needed
                );
                prop_assert_eq!(written, 0, "a denied command wrote events");
            }
            Ok(())
        }
    });
    // Both sides of the law were exercised.
    assert!(denied.get() > 0 && allowed.get() > 0, "only one side ran");
}

// --- No event ever holds a plaintext email address or secret -------------------------------

/// A person as they type themselves in: an address, a name and a password.
#[derive(Debug, Clone)]
struct Person {
    email: String,
    name: String,
    password: String,
}

/// An address whose local part and domain each hold a dot between letters, which none of
/// the store's encodings (base64url, hex, UUIDs, timestamps) writes: neither the address
/// nor its local part turns up in a stored row by chance.
fn email() -> impl Strategy<Value = String> {
    "[a-z]{3,8}\\.[a-z0-9]{3,8}@[a-z]{3,8}\\.(example|test)"
}

/// The address as typed, in a casing of its own, perhaps with spaces around it.
fn typed(address: &str, casing: u64) -> String {
    let cased: String = address
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if casing >> (i % 62) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    if casing >> 63 == 1 {
        format!("  {cased} ")
    } else {
        cased
    }
}

/// A name of two or three words, with a space between letters, which no stored encoding
/// writes.
fn name() -> impl Strategy<Value = String> {
    "[A-Z][a-zäåéøü]{2,8}( [A-Z][a-zäåéøü]{2,10}){1,2}"
}

/// A password as people choose them: letters, digits, spaces and symbols.
fn password() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 !#%&*+=?~-]{12,24}"
}

fn person() -> impl Strategy<Value = Person> {
    (email(), name(), password()).prop_map(|(email, name, password)| Person {
        email,
        name,
        password,
    })
}

/// An address from the documentation ranges, version 4 or 6, or none.
fn client_ip() -> impl Strategy<Value = Option<IpAddr>> {
    proptest::option::weighted(
        0.9,
        prop_oneof![
            any::<u8>().prop_map(|x| IpAddr::from([203, 0, 113, x])),
            any::<u8>().prop_map(|x| IpAddr::from([198, 51, 100, x])),
            any::<u16>().prop_map(|x| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0xbeef, x])),
        ],
    )
}

/// One identity flow, as a caller issues it.
#[derive(Debug, Clone)]
enum Flow {
    /// Someone registers, perhaps with an idempotency key, perhaps sending it twice.
    Register {
        person: Person,
        casing: u64,
        idempotent: Option<bool>,
    },
    /// A known user logs in, with their password or a wrong one, and with a second factor
    /// once MFA is on: a TOTP code or a recovery code.
    Login {
        who: Index,
        casing: u64,
        wrong_password: Option<String>,
        recovery: bool,
    },
    /// Someone logs in with an address nobody holds.
    LoginUnknown { email: String, password: String },
    /// A session's newest refresh token is rotated, or its first one presented again.
    Refresh { session: Index, replay: bool },
    /// A session is ended by its holder.
    Logout { session: Index },
    /// A user verifies their address, with the token sent to it or a wrong one.
    VerifyEmail { who: Index, right_token: bool },
    /// A user changes their password, knowing the current one or not.
    ChangePassword {
        who: Index,
        new: String,
        knows_current: bool,
    },
    /// A user starts a TOTP enrollment and perhaps confirms it, perhaps first with a
    /// wrong code.
    EnrollTotp {
        who: Index,
        confirm: bool,
        wrong_code_first: bool,
    },
    /// The owner creates an API key.
    CreateApiKey { scopes: Vec<Permission> },
    /// The owner invites someone, who perhaps accepts, with the token or a wrong one.
    Invite {
        email: String,
        casing: u64,
        accept: Option<(String, String, bool)>,
    },
}

fn flow() -> impl Strategy<Value = Flow> {
    prop_oneof![
        2 => (person(), any::<u64>(), proptest::option::of(any::<bool>())).prop_map(
            |(person, casing, idempotent)| Flow::Register {
                person,
                casing,
                idempotent
            }
        ),
        4 => (
            any::<Index>(),
            any::<u64>(),
            proptest::option::weighted(0.3, password()),
            any::<bool>()
        )
            .prop_map(|(who, casing, wrong_password, recovery)| Flow::Login {
                who,
                casing,
                wrong_password,
                recovery
            }),
        1 => (email(), password())
            .prop_map(|(email, password)| Flow::LoginUnknown { email, password }),
        3 => (any::<Index>(), proptest::bool::weighted(0.2))
            .prop_map(|(session, replay)| Flow::Refresh { session, replay }),
        1 => any::<Index>().prop_map(|session| Flow::Logout { session }),
        1 => (any::<Index>(), any::<bool>())
            .prop_map(|(who, right_token)| Flow::VerifyEmail { who, right_token }),
        1 => (any::<Index>(), password(), proptest::bool::weighted(0.8)).prop_map(
            |(who, new, knows_current)| Flow::ChangePassword {
                who,
                new,
                knows_current
            }
        ),
        2 => (any::<Index>(), proptest::bool::weighted(0.8), any::<bool>()).prop_map(
            |(who, confirm, wrong_code_first)| Flow::EnrollTotp {
                who,
                confirm,
                wrong_code_first
            }
        ),
        1 => permissions(1..=3).prop_map(|scopes| Flow::CreateApiKey { scopes }),
        2 => (
            email(),
            any::<u64>(),
            proptest::option::weighted(0.8, (name(), password(), proptest::bool::weighted(0.8)))
        )
            .prop_map(|(email, casing, accept)| Flow::Invite {
                email,
                casing,
                accept
            }),
    ]
}

/// A user of the case's tenant as the test knows them.
struct KnownUser {
    id: String,
    email: String,
    password: String,
    verification: Option<String>,
    totp: Option<String>,
    recovery: Vec<String>,
}

/// A session and every refresh token it was given, the newest last.
struct KnownSession {
    holder: String,
    id: String,
    tokens: Vec<String>,
}

/// What one case did, and every plaintext value it used or was given.
struct Story<'a> {
    f: &'a Fixture,
    tenant: String,
    owner: String,
    users: Vec<KnownUser>,
    sessions: Vec<KnownSession>,
    plaintext: Vec<String>,
}

impl Story<'_> {
    fn keep(&mut self, value: &str) {
        self.plaintext.push(value.trim().to_owned());
    }

    fn keep_person(&mut self, person: &Person) {
        self.keep(&person.email);
        if let Some((local, _)) = person.email.split_once('@') {
            self.keep(local);
        }
        self.keep(&person.name);
        self.keep(&person.password);
    }

    /// The TOTP code of `secret` at the clock's current step.
    fn totp_code(&self, secret: &str) -> String {
        let secret = totp::TotpSecret::from_base32(secret).unwrap();
        let now = u64::try_from(self.f.clock.now().timestamp()).unwrap();
        format!("{:06}", totp::code_at_step(&secret, totp::step_at(now)))
    }

    /// Runs one flow. Refusals are expected; an infrastructure failure is not (a command
    /// whose metadata still held a plain address would be one).
    async fn run(&mut self, flow: &Flow, ip: Option<IpAddr>) -> Result<(), TestCaseError> {
        let f = self.f;
        let id = &f.identity;
        let tenant = self.tenant.clone();
        let result: Result<(), IdentityError> = match flow {
            Flow::Register {
                person,
                casing,
                idempotent,
            } => {
                self.keep_person(person);
                let mut metadata = anonymous(ip);
                metadata.idempotency_key = idempotent.map(|_| Uuid::now_v7().to_string());
                let times = if *idempotent == Some(true) { 2 } else { 1 };
                let mut result = Ok(());
                for _ in 0..times {
                    let email = typed(&person.email, *casing);
                    result = id
                        .register(&metadata, &tenant, &email, &person.name, &person.password)
                        .await
                        .map(|(outcome, _)| {
                            if let Outcome::Done(registered) = outcome {
                                let token = registered.verification_token.unwrap_or_default();
                                self.plaintext.push(token.clone());
                                self.users.push(KnownUser {
                                    id: registered.user_id.to_string(),
                                    email: person.email.clone(),
                                    password: person.password.clone(),
                                    verification: Some(token),
                                    totp: None,
                                    recovery: Vec::new(),
                                });
                            }
                        });
                }
                result
            }
            Flow::Login {
                who,
                casing,
                wrong_password,
                recovery,
            } => {
                let user = who.index(self.users.len());
                let email = typed(&self.users[user].email, *casing);
                let password = match wrong_password {
                    Some(wrong) => {
                        self.keep(wrong);
                        wrong.clone()
                    }
                    None => self.users[user].password.clone(),
                };
                let code = match (&self.users[user].totp, self.users[user].recovery.last()) {
                    (Some(_), Some(code)) if *recovery => Some(code.clone()),
                    (Some(secret), _) => {
                        // A code of a step not used before.
                        self.f.clock.advance(Duration::seconds(30));
                        Some(self.totp_code(secret))
                    }
                    (None, _) => None,
                };
                let result = id
                    .login_with_code(&anonymous(ip), &tenant, &email, &password, code.as_deref())
                    .await;
                result.map(|(login, _)| {
                    if *recovery && code.is_some() && self.users[user].totp.is_some() {
                        self.users[user].recovery.pop();
                    }
                    self.plaintext.push(login.refresh_token.clone());
                    self.sessions.push(KnownSession {
                        holder: login.user_id.to_string(),
                        id: login.session_id.to_string(),
                        tokens: vec![login.refresh_token],
                    });
                })
            }
            Flow::LoginUnknown { email, password } => {
                self.keep(email);
                self.keep(password);
                id.login(&anonymous(ip), &tenant, email, password)
                    .await
                    .map(|_| ())
            }
            Flow::Refresh { session, replay } => {
                if self.sessions.is_empty() {
                    return Ok(());
                }
                let at = session.index(self.sessions.len());
                let session = &mut self.sessions[at];
                let presented = if *replay {
                    session.tokens[0].clone()
                } else {
                    session.tokens[session.tokens.len() - 1].clone()
                };
                match id.refresh(&anonymous(ip), &session.id, &presented).await {
                    Ok((refreshed, _)) => {
                        session.tokens.push(refreshed.refresh_token.clone());
                        self.plaintext.push(refreshed.refresh_token);
                        Ok(())
                    }
                    Err(err) => Err(err),
                }
            }
            Flow::Logout { session } => {
                if self.sessions.is_empty() {
                    return Ok(());
                }
                let session = &self.sessions[session.index(self.sessions.len())];
                id.logout(&as_user(&session.holder, &tenant, ip), &session.id)
                    .await
                    .map(|_| ())
            }
            Flow::VerifyEmail { who, right_token } => {
                let user = &self.users[who.index(self.users.len())];
                let token = match (&user.verification, right_token) {
                    (Some(token), true) => token.clone(),
                    _ => "not the token that was sent".to_owned(),
                };
                id.verify_email(&anonymous(ip), &user.id, &token)
                    .await
                    .map(|_| ())
            }
            Flow::ChangePassword {
                who,
                new,
                knows_current,
            } => {
                self.keep(new);
                let user = who.index(self.users.len());
                let current = if *knows_current {
                    self.users[user].password.clone()
                } else {
                    "a guess at the current password".to_owned()
                };
                let result = id
                    .change_password(&as_user(&self.users[user].id, &tenant, ip), &current, new)
                    .await;
                if result.is_ok() {
                    self.users[user].password.clone_from(new);
                }
                // Sessions opened in the same instant as the change end with it.
                self.f.clock.advance(Duration::seconds(1));
                result.map(|_| ())
            }
            Flow::EnrollTotp {
                who,
                confirm,
                wrong_code_first,
            } => {
                let user = who.index(self.users.len());
                let me = as_user(&self.users[user].id, &tenant, ip);
                let email = self.users[user].email.clone();
                match id.start_totp_enrollment(&me, "Platform", &email).await {
                    Ok(enrollment) => {
                        self.keep(&enrollment.secret);
                        self.keep(&enrollment.otpauth_uri);
                        let mut result = Ok(());
                        if *confirm {
                            if *wrong_code_first {
                                let right = self.totp_code(&enrollment.secret);
                                let wrong = if right == "123456" {
                                    "654321"
                                } else {
                                    "123456"
                                };
                                let _ = id.confirm_totp(&me, wrong).await;
                            }
                            let code = self.totp_code(&enrollment.secret);
                            result = id.confirm_totp(&me, &code).await.map(|codes| {
                                for code in &codes {
                                    self.keep(code);
                                    self.keep(&code.replace('-', ""));
                                }
                                self.users[user].totp = Some(enrollment.secret);
                                self.users[user].recovery = codes;
                            });
                        }
                        result
                    }
                    Err(err) => Err(err),
                }
            }
            Flow::CreateApiKey { scopes } => {
                let scopes: Vec<&str> = scopes.iter().map(|p| p.as_str()).collect();
                id.create_api_key(
                    &as_user(&self.owner, &tenant, ip),
                    &tenant,
                    "automation",
                    &scopes,
                    None,
                )
                .await
                .map(|(created, _)| self.plaintext.push(created.key))
            }
            Flow::Invite {
                email,
                casing,
                accept,
            } => {
                self.keep(email);
                if let Some((local, _)) = email.split_once('@') {
                    self.keep(local);
                }
                let by_owner = as_user(&self.owner, &tenant, ip);
                match id
                    .invite(&by_owner, &tenant, &typed(email, *casing), &["member"])
                    .await
                {
                    Ok((invited, _)) => {
                        self.keep(&invited.invitation_token);
                        match accept {
                            Some((name, password, right_token)) => {
                                self.keep(name);
                                self.keep(password);
                                let token = if *right_token {
                                    invited.invitation_token.clone()
                                } else {
                                    "not the invitation token".to_owned()
                                };
                                let user = invited.user_id.to_string();
                                let accepted = id
                                    .accept_invitation(
                                        &anonymous(ip),
                                        &user,
                                        &token,
                                        name,
                                        password,
                                    )
                                    .await;
                                if accepted.is_ok() {
                                    self.users.push(KnownUser {
                                        id: user,
                                        email: email.clone(),
                                        password: password.clone(),
                                        verification: None,
                                        totp: None,
                                        recovery: Vec::new(),
                                    });
                                }
                                accepted.map(|_| ())
                            }
                            None => Ok(()),
                        }
                    }
                    Err(err) => Err(err),
                }
            }
        };
        prop_assert!(
            !matches!(result, Err(IdentityError::Infrastructure(_))),
            "{flow:?} failed: {result:?}"
        );
        Ok(())
    }
}

/// Every row written since the log was at `position`, and every row of every other table,
/// as text. Events are read both whole and by their payload and metadata.
async fn stored_since(db: &TestDb, position: i64) -> Vec<String> {
    let mut rows: Vec<String> = sqlx::query_scalar(
        "SELECT e::text || E'\\n' || e.payload::text || E'\\n' || e.metadata::text
           FROM events e WHERE global_position > $1",
    )
    .bind(position)
    .fetch_all(&db.admin)
    .await
    .unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'events'",
    )
    .fetch_all(&db.admin)
    .await
    .unwrap();
    for table in tables {
        let text: Vec<String> = sqlx::query_scalar(&format!(r#"SELECT t::text FROM "{table}" t"#))
            .fetch_all(&db.admin)
            .await
            .unwrap();
        rows.extend(text);
    }
    rows
}

async fn head(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM events")
        .fetch_one(&db.admin)
        .await
        .unwrap()
}

#[test]
fn no_stored_row_ever_holds_a_plaintext_address_name_password_token_key_or_ip() {
    let runtime = runtime();
    let db = runtime.block_on(TestDb::new());
    let f = {
        let _inside = runtime.enter();
        fixture(&db)
    };
    let strategy = (
        person(),
        any::<u64>(),
        client_ip(),
        proptest::collection::vec((flow(), client_ip()), 1..16),
    );
    check(
        &runtime,
        64,
        &strategy,
        |(owner, casing, owner_ip, flows)| {
            let (f, db) = (&f, &db);
            async move {
                let start = head(db).await;
                let (tenant, owner_id, verification) = create_tenant(
                    f,
                    &anonymous(owner_ip),
                    &typed(&owner.email, casing),
                    &owner.name,
                    &owner.password,
                )
                .await;
                let mut story = Story {
                    f,
                    tenant,
                    owner: owner_id.clone(),
                    users: vec![KnownUser {
                        id: owner_id,
                        email: owner.email.clone(),
                        password: owner.password.clone(),
                        verification: Some(verification.clone()),
                        totp: None,
                        recovery: Vec::new(),
                    }],
                    sessions: Vec::new(),
                    plaintext: vec![verification],
                };
                story.keep_person(&owner);
                story.plaintext.extend(owner_ip.map(|ip| ip.to_string()));
                for (flow, ip) in &flows {
                    story.plaintext.extend(ip.map(|ip| ip.to_string()));
                    story.run(flow, *ip).await?;
                }
                // Every event of the tenant's flows is recorded in the tenant's own chain,
                // including those of flows whose caller named no tenant (refresh, logout).
                let strays: Vec<(i64, String, Option<uuid::Uuid>)> = sqlx::query_as(
                    "SELECT global_position, aggregate_type || '.' || event_type, tenant_id
                       FROM events
                      WHERE global_position > $1 AND tenant_id IS DISTINCT FROM $2::uuid",
                )
                .bind(start)
                .bind(&story.tenant)
                .fetch_all(&db.app)
                .await
                .map_err(|err| TestCaseError::fail(err.to_string()))?;
                if !strays.is_empty() {
                    return Err(TestCaseError::fail(format!(
                        "events outside the tenant's chain: {strays:?}"
                    )));
                }
                let rows = stored_since(db, start).await;
                for value in &story.plaintext {
                    let value = value.to_lowercase();
                    if let Some(row) = rows.iter().find(|row| row.to_lowercase().contains(&value)) {
                        return Err(TestCaseError::fail(format!(
                            "{value:?} is stored in plaintext: {row}"
                        )));
                    }
                }
                Ok(())
            }
        },
    );
}
