//! Laws of the identity commands over generated actors and commands, through the real
//! event store: a command never succeeds for an actor that lacks its permission.
//!
//! Each test has one database and each case a tenant of its own. Passwords are hashed with
//! real Argon2id, at the lowest cost Argon2 allows, so that hundreds of them take moments.

use std::cell::Cell;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{
    self, PasswordHash as Phc, PasswordHasher as _, PasswordVerifier as _, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use chrono::{DateTime, Utc};
use commands::bus::Outcome;
use commands::identity::{Clock, Identity, IdentityError};
use commands::privacy::MasterKey;
use commands::security::password::{HashingError, PasswordHasher};
use commands::{ClientIp, CommandMetadata};
use domain::ActorKind;
use domain::identity::credentials::PasswordHash;
use domain::identity::rbac::{BuiltinRole, Permission, PermissionSet};
use eventstore::{EventRepository, PgSubjectKeys};
use proptest::prelude::*;
use proptest::sample::subsequence;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tests::TestDb;
use tokio::runtime::Runtime;
use uuid::Uuid;

/// Argon2id (version 19) at Argon2's minimum cost: the same algorithm and PHC strings as
/// production, at a small fraction of the work. Production's hasher refuses its hashes.
#[derive(Debug)]
struct CheapArgon2id(Params);

impl CheapArgon2id {
    fn new() -> Self {
        Self(Params::new(Params::MIN_M_COST, Params::MIN_T_COST, 1, None).unwrap())
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.0.clone())
    }
}

impl PasswordHasher for CheapArgon2id {
    fn hash(&self, password: &str) -> Result<PasswordHash, HashingError> {
        let salt =
            SaltString::encode_b64(Uuid::new_v4().as_bytes()).map_err(HashingError::Argon2)?;
        let phc = self
            .argon2()
            .hash_password(password.as_bytes(), &salt)
            .map_err(HashingError::Argon2)?;
        PasswordHash::parse(phc.to_string()).map_err(HashingError::Unrepresentable)
    }

    fn verify(&self, password: &str, hash: &PasswordHash) -> Result<bool, HashingError> {
        let phc = Phc::new(hash.as_str()).map_err(HashingError::MalformedStoredHash)?;
        match self.argon2().verify_password(password.as_bytes(), &phc) {
            Ok(()) => Ok(true),
            Err(password_hash::Error::Password) => Ok(false),
            Err(other) => Err(HashingError::Argon2(other)),
        }
    }
}

/// A clock the test moves by hand.
#[derive(Debug)]
struct TestClock(Mutex<DateTime<Utc>>);

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.lock().map(|now| *now).unwrap_or_else(|_| Utc::now())
    }
}

struct Fixture {
    identity: Identity<EventRepository, PgSubjectKeys>,
}

/// The identity service over `db`'s event store; call it inside the runtime, which runs
/// the store's tasks.
fn fixture(db: &TestDb) -> Fixture {
    let store = db.store();
    let master = MasterKey::from_bytes([7; 32]);
    let clock = Arc::new(TestClock(Mutex::new(Utc::now())));
    let identity = Identity::new(
        store.repository.clone(),
        PgSubjectKeys::new(db.app.clone(), master.key_wrapping_key()),
        Arc::new(CheapArgon2id::new()),
        &master,
        clock,
    );
    Fixture { identity }
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
