//! Administering a tenant: its lifecycle, its roles and who holds them, invitations,
//! deactivating users and forgetting them. Every operation here needs a permission in the
//! tenant, and no operation grants more than the actor holds.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use domain::RefusalKind;
use domain::identity::email_claim::{EmailClaim, EmailClaimCommand, claim_id};
use domain::identity::principal::Principal;
use domain::identity::rbac::{Permission, PermissionSet, RoleName, RoleRef};
use domain::identity::service_account::ServiceAccount;
use domain::identity::tenant::{Tenant, TenantCommand, TenantStatus};
use domain::identity::user::{User, UserCommand, UserStatus};
use domain::identity::values::{Email, PlanRef, TenantId, TenantName, UserId};
use domain::personal::SubjectId;
use uuid::Uuid;

use super::account::signed_in_user;
use super::flows::{
    Refused, actor_principal, authorize, hash_password, hash_token, parse_tenant, refused,
    subject_of, token, verify_password,
};
use super::{Identity, IdentityError};
use crate::bus::{Command, CommandError, EventLog, UnitOfWork};
use crate::metadata::CommandMetadata;
use crate::privacy::{self, SubjectKeys};

/// An administrative change of a tenant.
#[derive(Debug, Clone)]
enum TenantOp {
    Rename(TenantName),
    ChangePlan(PlanRef),
    Suspend(String),
    Reactivate,
    Close(String),
    Assign(Principal, RoleRef),
    Unassign(Principal, RoleRef),
    Define(RoleName, PermissionSet),
    Remove(Principal),
}

impl TenantOp {
    fn permission(&self) -> Permission {
        match self {
            Self::Rename(_) => Permission::TenantsUpdate,
            Self::ChangePlan(_) => Permission::TenantsManagePlan,
            Self::Suspend(_) | Self::Reactivate => Permission::TenantsSuspend,
            Self::Close(_) => Permission::TenantsClose,
            Self::Assign(..) | Self::Unassign(..) => Permission::RolesAssign,
            Self::Define(..) => Permission::RolesManage,
            Self::Remove(_) => Permission::UsersDeactivate,
        }
    }

    fn command(&self, granted_by: PermissionSet, now: DateTime<Utc>) -> TenantCommand {
        match self.clone() {
            Self::Rename(name) => TenantCommand::Rename { name, now },
            Self::ChangePlan(plan) => TenantCommand::ChangePlan { plan, now },
            Self::Suspend(reason) => TenantCommand::Suspend { reason, now },
            Self::Reactivate => TenantCommand::Reactivate { now },
            Self::Close(reason) => TenantCommand::Close { reason, now },
            Self::Assign(principal, role) => TenantCommand::AssignRole {
                principal,
                role,
                granted_by,
                now,
            },
            Self::Unassign(principal, role) => TenantCommand::UnassignRole {
                principal,
                role,
                granted_by,
                now,
            },
            Self::Define(name, permissions) => TenantCommand::DefineRole {
                name,
                permissions,
                granted_by,
                now,
            },
            Self::Remove(principal) => TenantCommand::RemoveMember {
                principal,
                granted_by,
                now,
            },
        }
    }
}

struct TenantAdmin {
    tenant_id: TenantId,
    actor: Principal,
    op: TenantOp,
    now: DateTime<Utc>,
}

impl<L: EventLog> Command<L> for TenantAdmin {
    type Output = ();
    type Error = Refused;

    async fn decide(&self, work: &mut UnitOfWork<'_, L>) -> Result<(), CommandError<Refused>> {
        let mut tenant = work.load::<Tenant>(&self.tenant_id.to_string()).await?;
        authorize(tenant.state(), &self.actor, self.op.permission())?;
        let granted_by = tenant.state().effective_permissions(&self.actor);
        work.handle(&mut tenant, self.op.command(granted_by, self.now), &())
            .await
            .map_err(refused)?;
        Ok(())
    }
}

fn parse_principal(text: &str) -> Result<Principal, IdentityError> {
    text.parse()
        .map_err(|err| IdentityError::bad_input("principal", err))
}

fn parse_role(text: &str) -> Result<RoleRef, IdentityError> {
    RoleRef::parse(text).map_err(|err| IdentityError::bad_input("role", err))
}

/// The roles granted with a new membership: at least one, each a valid role name.
pub(crate) fn parse_roles(roles: &[&str]) -> Result<BTreeSet<RoleRef>, IdentityError> {
    let roles = roles
        .iter()
        .map(|role| RoleRef::parse(role))
        .collect::<Result<BTreeSet<_>, _>>()
        .map_err(|err| IdentityError::bad_input("roles", err))?;
    if roles.is_empty() {
        return Err(IdentityError::bad_input("roles", "give at least one role"));
    }
    Ok(roles)
}

/// An invitation to show the invitee once (it is sent by email).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invited {
    /// The invited user.
    pub user_id: UserId,
    /// The token the invitee presents to accept.
    pub invitation_token: String,
}

impl<L: EventLog, K: SubjectKeys> Identity<L, K> {
    async fn tenant_admin(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        op: TenantOp,
    ) -> Result<Option<i64>, IdentityError> {
        let tenant_id = parse_tenant(tenant)?;
        let actor = actor_principal(metadata)?;
        let metadata = &self.sealed(metadata, subject_of(actor)).await?;
        let command = TenantAdmin {
            tenant_id,
            actor,
            op,
            now: self.clock.now(),
        };
        let ((), position) = self.execute(metadata, &command).await?;
        Ok(position)
    }

    /// Renames a tenant. Needs `tenants:update`.
    pub async fn rename_tenant(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        name: &str,
    ) -> Result<Option<i64>, IdentityError> {
        let name =
            TenantName::parse(name).map_err(|err| IdentityError::bad_input("name", err.problem))?;
        self.tenant_admin(metadata, tenant, TenantOp::Rename(name))
            .await
    }

    /// Changes a tenant's plan. Needs `tenants:manage_plan`.
    pub async fn change_plan(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        plan: &str,
    ) -> Result<Option<i64>, IdentityError> {
        let plan =
            PlanRef::parse(plan).map_err(|err| IdentityError::bad_input("plan", err.problem))?;
        self.tenant_admin(metadata, tenant, TenantOp::ChangePlan(plan))
            .await
    }

    /// Suspends a tenant. Needs `tenants:suspend`.
    pub async fn suspend_tenant(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        reason: &str,
    ) -> Result<Option<i64>, IdentityError> {
        self.tenant_admin(metadata, tenant, TenantOp::Suspend(reason.to_owned()))
            .await
    }

    /// Reactivates a suspended tenant. Needs `tenants:suspend`.
    pub async fn reactivate_tenant(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
    ) -> Result<Option<i64>, IdentityError> {
        self.tenant_admin(metadata, tenant, TenantOp::Reactivate)
            .await
    }

    /// Closes a tenant for good (its events stay). Needs `tenants:close`.
    pub async fn close_tenant(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        reason: &str,
    ) -> Result<Option<i64>, IdentityError> {
        self.tenant_admin(metadata, tenant, TenantOp::Close(reason.to_owned()))
            .await
    }

    /// Assigns a role (`owner`, `admin`, ..., or a custom role's name) to a member
    /// (`user:<id>` or `service_account:<id>`). Needs `roles:assign`, and every permission
    /// of the role.
    pub async fn assign_role(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        principal: &str,
        role: &str,
    ) -> Result<Option<i64>, IdentityError> {
        let op = TenantOp::Assign(parse_principal(principal)?, parse_role(role)?);
        self.tenant_admin(metadata, tenant, op).await
    }

    /// Takes a role from a member. Needs `roles:assign`; the last owner keeps theirs.
    pub async fn unassign_role(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        principal: &str,
        role: &str,
    ) -> Result<Option<i64>, IdentityError> {
        let op = TenantOp::Unassign(parse_principal(principal)?, parse_role(role)?);
        self.tenant_admin(metadata, tenant, op).await
    }

    /// Defines a custom role. Needs `roles:manage`, and every permission it grants.
    pub async fn define_role(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        name: &str,
        permissions: &[&str],
    ) -> Result<Option<i64>, IdentityError> {
        let name = RoleName::parse(name).map_err(|err| IdentityError::bad_input("name", err))?;
        let permissions = permissions
            .iter()
            .map(|p| p.parse::<Permission>())
            .collect::<Result<PermissionSet, _>>()
            .map_err(|err| IdentityError::bad_input("permissions", err))?;
        self.tenant_admin(metadata, tenant, TenantOp::Define(name, permissions))
            .await
    }

    /// Removes a member from a tenant. Needs `users:deactivate`; the last owner stays.
    pub async fn remove_member(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        principal: &str,
    ) -> Result<Option<i64>, IdentityError> {
        let op = TenantOp::Remove(parse_principal(principal)?);
        self.tenant_admin(metadata, tenant, op).await
    }

    /// Makes a registered user, or a service account of the tenant that was removed, a
    /// member with `roles` (at least one, within the actor's permissions). Needs
    /// `roles:assign`.
    pub async fn add_member(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        principal: &str,
        roles: &[&str],
    ) -> Result<Option<i64>, IdentityError> {
        let tenant_id = parse_tenant(tenant)?;
        let principal = parse_principal(principal)?;
        let roles = parse_roles(roles)?;
        let actor = actor_principal(metadata)?;
        let metadata = &self.sealed(metadata, subject_of(actor)).await?;
        let command = AddMember {
            tenant_id,
            actor,
            principal,
            roles,
            now: self.clock.now(),
        };
        let ((), position) = self.execute(metadata, &command).await?;
        Ok(position)
    }

    /// Invites a person into a tenant with roles. Needs `users:invite` and every permission
    /// of the roles. The address is claimed at once, so it cannot be registered twice.
    pub async fn invite(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        email: &str,
        roles: &[&str],
    ) -> Result<(Invited, Option<i64>), IdentityError> {
        let tenant_id = parse_tenant(tenant)?;
        let email =
            Email::parse(email).map_err(|err| IdentityError::bad_input("email", err.problem))?;
        let roles = roles
            .iter()
            .map(|r| parse_role(r))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let actor = actor_principal(metadata)?;
        let Principal::User(invited_by) = actor else {
            return Err(IdentityError::Refused {
                kind: RefusalKind::Forbidden,
                reason: "users_only",
                message: "invitations are sent by users".into(),
            });
        };
        let user_id = UserId::from_uuid(Uuid::now_v7());
        let subject = SubjectId::from_uuid(user_id.as_uuid());
        let key = self.keys.key_for(subject).await?;
        let sealed_email = privacy::seal(&key, subject, "email", email.as_str())?;
        let index = self.blind_index.email(tenant_id, &email);
        let (token, token_hash) = token()?;
        let metadata = &self.sealed(metadata, subject_of(actor)).await?;
        let now = self.clock.now();
        let command = Invite {
            tenant_id,
            actor,
            invited_by,
            user_id,
            email: sealed_email,
            index,
            roles,
            token_hash,
            expires_at: now + self.lifetimes.invitation,
            now,
        };
        let ((), position) = self.execute(metadata, &command).await?;
        Ok((
            Invited {
                user_id,
                invitation_token: token,
            },
            position,
        ))
    }

    /// Accepts an invitation with its token, setting the invitee's name and password.
    pub async fn accept_invitation(
        &self,
        metadata: &CommandMetadata,
        user: &str,
        token: &str,
        name: &str,
        password: &str,
    ) -> Result<Option<i64>, IdentityError> {
        let user_id: UserId = user
            .parse()
            .map_err(|err| IdentityError::bad_input("userId", err))?;
        let name = domain::identity::values::PersonName::parse(name)
            .map_err(|err| IdentityError::bad_input("name", err.problem))?;
        let invitee = self.load_user(metadata, user_id).await?;
        let email = self.email_of(&invitee, user_id).await?;
        crate::security::password::check_policy(password, &email)
            .map_err(|err| IdentityError::bad_input("password", err))?;
        let subject = SubjectId::from_uuid(user_id.as_uuid());
        let key = self.keys.key_for(subject).await?;
        let sealed_name = privacy::seal(&key, subject, "name", name.as_str())?;
        let password = hash_password(&self.hasher, password).await?;
        let metadata = &self.sealed(metadata, subject).await?;
        let (_, position) = self
            .run_act::<User>(
                metadata,
                user_id.to_string(),
                UserCommand::AcceptInvitation {
                    invitation: hash_token(token),
                    name: sealed_name,
                    password,
                    now: self.clock.now(),
                },
            )
            .await?;
        Ok(position)
    }
}

struct Invite {
    tenant_id: TenantId,
    actor: Principal,
    invited_by: UserId,
    user_id: UserId,
    email: domain::personal::PersonalData,
    index: domain::identity::values::EmailIndex,
    roles: BTreeSet<RoleRef>,
    token_hash: domain::identity::credentials::SecretHash,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
}

impl<L: EventLog> Command<L> for Invite {
    type Output = ();
    type Error = Refused;

    async fn decide(&self, work: &mut UnitOfWork<'_, L>) -> Result<(), CommandError<Refused>> {
        let mut tenant = work.load::<Tenant>(&self.tenant_id.to_string()).await?;
        authorize(tenant.state(), &self.actor, Permission::UsersInvite)?;
        let granted_by = tenant.state().effective_permissions(&self.actor);
        let mut claim = work
            .load::<EmailClaim>(&claim_id(self.tenant_id, &self.index))
            .await?;
        let mut user = work.load::<User>(&self.user_id.to_string()).await?;
        work.handle(
            &mut claim,
            EmailClaimCommand::Claim {
                tenant_id: self.tenant_id,
                index: self.index.clone(),
                user_id: self.user_id,
                now: self.now,
            },
            &(),
        )
        .await
        .map_err(refused)?;
        work.handle(
            &mut user,
            UserCommand::Invite {
                user_id: self.user_id,
                tenant_id: self.tenant_id,
                email: self.email.clone(),
                email_index: self.index.clone(),
                invited_by: self.invited_by,
                invitation: self.token_hash,
                expires_at: self.expires_at,
                now: self.now,
            },
            &(),
        )
        .await
        .map_err(refused)?;
        work.handle(
            &mut tenant,
            TenantCommand::AddMember {
                principal: Principal::User(self.user_id),
                roles: self.roles.clone(),
                granted_by,
                now: self.now,
            },
            &(),
        )
        .await
        .map_err(refused)?;
        Ok(())
    }
}

impl<L: EventLog, K: SubjectKeys> Identity<L, K> {
    /// The user's email address in plaintext, for the password policy; empty if it cannot
    /// be read any more (the person was forgotten).
    async fn email_of(&self, user: &User, user_id: UserId) -> Result<String, IdentityError> {
        let subject = SubjectId::from_uuid(user_id.as_uuid());
        match (user.email(), self.keys.find(subject).await?) {
            (Some(sealed), Some(key)) => match privacy::open(Some(&key), sealed, "email")? {
                privacy::Opened::Plain(email) => Ok(email),
                privacy::Opened::Forgotten => Ok(String::new()),
            },
            _ => Ok(String::new()),
        }
    }

    /// Changes the signed-in user's password, after checking the current one. Every
    /// session opened before the change stops working.
    pub async fn change_password(
        &self,
        metadata: &CommandMetadata,
        current: &str,
        new: &str,
    ) -> Result<Option<i64>, IdentityError> {
        let user_id = signed_in_user(metadata)?;
        let user = self.load_user(metadata, user_id).await?;
        let Some(stored) = user.password_hash() else {
            return Err(IdentityError::wrong_credentials());
        };
        if !verify_password(&self.hasher, current, stored).await? {
            return Err(IdentityError::Unauthenticated {
                reason: "invalid_credentials",
                message: "the current password is wrong".into(),
            });
        }
        let subject = SubjectId::from_uuid(user_id.as_uuid());
        let email = self.email_of(&user, user_id).await?;
        crate::security::password::check_policy(new, &email)
            .map_err(|err| IdentityError::bad_input("newPassword", err))?;
        let password = hash_password(&self.hasher, new).await?;
        let metadata = &self.sealed(metadata, subject).await?;
        let (_, position) = self
            .run_act::<User>(
                metadata,
                user_id.to_string(),
                UserCommand::ChangePassword {
                    password,
                    now: self.clock.now(),
                },
            )
            .await?;
        Ok(position)
    }

    /// Verifies a user's email address with the token sent to it.
    pub async fn verify_email(
        &self,
        metadata: &CommandMetadata,
        user: &str,
        token: &str,
    ) -> Result<Option<i64>, IdentityError> {
        let user_id: UserId = user
            .parse()
            .map_err(|err| IdentityError::bad_input("userId", err))?;
        let metadata = &self
            .sealed(metadata, SubjectId::from_uuid(user_id.as_uuid()))
            .await?;
        let (_, position) = self
            .run_act::<User>(
                metadata,
                user_id.to_string(),
                UserCommand::VerifyEmail {
                    token: hash_token(token),
                    now: self.clock.now(),
                },
            )
            .await?;
        Ok(position)
    }

    /// Deactivates a user of a tenant. Needs `users:deactivate` and every permission the
    /// user holds; the tenant's last user owner cannot be deactivated.
    pub async fn deactivate_user(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        user: &str,
    ) -> Result<Option<i64>, IdentityError> {
        let tenant_id = parse_tenant(tenant)?;
        let user_id: UserId = user
            .parse()
            .map_err(|err| IdentityError::bad_input("userId", err))?;
        let actor = actor_principal(metadata)?;
        let metadata = &self
            .sealed(metadata, SubjectId::from_uuid(user_id.as_uuid()))
            .await?;
        let command = Deactivate {
            tenant_id,
            actor,
            user_id,
            now: self.clock.now(),
        };
        let ((), position) = self.execute(metadata, &command).await?;
        Ok(position)
    }
}

impl<L: EventLog, K: SubjectKeys> Identity<L, K> {
    /// Forgets a user of a tenant (crypto-shredding): destroys their data key, so every
    /// personal field ever sealed for them (email, name, client IPs, user agents) reads as
    /// redacted everywhere, and records `SubjectForgotten`, which holds only ids. The user is
    /// deactivated for good, their sessions end, their email address is released and they
    /// leave the tenant's members (so their API keys grant nothing).
    ///
    /// Needs `privacy:forget` and every permission the user holds; the tenant's last owner
    /// cannot be forgotten. Nobody forgets themselves: erasure is done by another member, so
    /// that a stolen session cannot destroy its victim's account and data for good.
    /// Forgetting a forgotten user again changes nothing and answers no position.
    pub async fn forget_subject(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        user: &str,
    ) -> Result<Option<i64>, IdentityError> {
        let tenant_id = parse_tenant(tenant)?;
        let user_id: UserId = user
            .parse()
            .map_err(|err| IdentityError::bad_input("userId", err))?;
        let actor = actor_principal(metadata)?;
        if actor == Principal::User(user_id) {
            return Err(IdentityError::Refused {
                kind: RefusalKind::Forbidden,
                reason: "forget_self",
                message: "a person is forgotten by another member who holds `privacy:forget`, \
                          never with their own credentials"
                    .into(),
            });
        }
        // The request's IP and user agent are the actor's, sealed under the actor's key:
        // nothing of the forgotten person is sealed anew.
        let metadata = &self.sealed(metadata, subject_of(actor)).await?;
        let command = Forget {
            tenant_id,
            actor,
            user_id,
            keys: &self.keys,
            now: self.clock.now(),
        };
        let ((), position) = self.execute(metadata, &command).await?;
        Ok(position)
    }
}

/// Forgets a user. The order matters, because the key store is not the log and no
/// transaction spans both: every aggregate decides first (so a refusal destroys nothing),
/// then the key is destroyed, then the unit of work commits `SubjectForgotten` with the
/// claim's release and the membership's removal.
///
/// - If the key cannot be destroyed, nothing is written: the log never claims an erasure
///   that did not happen.
/// - If the commit fails after the key is gone, the person's data is already unreadable
///   (read models and GraphQL show it redacted) and nothing new can be sealed for them;
///   the log lacks the event until the caller retries. The retry finds the user not yet
///   forgotten, decides again, finds the key already destroyed (`forget` is idempotent)
///   and commits. A conflict with a concurrent change retries the same way, inside
///   [`crate::bus::run`].
/// - Appending first and destroying after would leave, on a failure between the two, a log
///   that says the person is forgotten while their data still opens: the one outcome that
///   must never happen.
struct Forget<'k, K> {
    tenant_id: TenantId,
    actor: Principal,
    user_id: UserId,
    keys: &'k K,
    now: DateTime<Utc>,
}

impl<L: EventLog, K: SubjectKeys> Command<L> for Forget<'_, K> {
    type Output = ();
    type Error = Refused;

    async fn decide(&self, work: &mut UnitOfWork<'_, L>) -> Result<(), CommandError<Refused>> {
        let mut tenant = work.load::<Tenant>(&self.tenant_id.to_string()).await?;
        authorize(tenant.state(), &self.actor, Permission::PrivacyForget)?;
        let mut user = work.load::<User>(&self.user_id.to_string()).await?;
        if user.state().tenant() != Some(self.tenant_id) {
            return Err(CommandError::Refused(Refused::new(
                RefusalKind::NotFound,
                "user_not_found",
                "no such user in this tenant",
            )));
        }
        if user.state().is_forgotten() {
            // Already done, key and event alike (the key is destroyed before the event is
            // written): nothing to record.
            return Ok(());
        }
        may_remove(tenant.state(), &self.actor, self.user_id, "forgotten")?;
        let target = Principal::User(self.user_id);
        let granted_by = tenant.state().effective_permissions(&self.actor);
        let index = user.state().email_index().cloned();
        work.handle(&mut user, UserCommand::Forget { now: self.now }, &())
            .await
            .map_err(refused)?;
        // The address is free again; its blind index stays in the log (a keyed hash).
        if let Some(index) = index {
            let mut claim = work
                .load::<EmailClaim>(&claim_id(self.tenant_id, &index))
                .await?;
            if claim.state().holder() == Some(self.user_id) {
                work.handle(
                    &mut claim,
                    EmailClaimCommand::Release {
                        user_id: self.user_id,
                        now: self.now,
                    },
                    &(),
                )
                .await
                .map_err(refused)?;
            }
        }
        // A suspended or closed tenant accepts no membership change; it grants nothing to a
        // deactivated user either.
        if tenant.state().status() == TenantStatus::Active && tenant.state().is_member(&target) {
            work.handle(
                &mut tenant,
                TenantCommand::RemoveMember {
                    principal: target,
                    granted_by,
                    now: self.now,
                },
                &(),
            )
            .await
            .map_err(refused)?;
        }
        self.keys
            .forget(SubjectId::from_uuid(self.user_id.as_uuid()))
            .await
            .map_err(|err| CommandError::Infrastructure(err.to_string()))?;
        Ok(())
    }
}

/// Whether `actor` may take `user` out of the tenant (deactivate or forget them): only if
/// the actor holds every permission the user holds, and never the tenant's last owner.
/// `done` names what would be done to them, for the refusal.
fn may_remove(
    tenant: &Tenant,
    actor: &Principal,
    user: UserId,
    done: &str,
) -> Result<(), CommandError<Refused>> {
    let held = tenant.effective_permissions(&Principal::User(user));
    if !held.is_subset_of(tenant.effective_permissions(actor)) {
        return Err(CommandError::Refused(Refused::new(
            RefusalKind::Forbidden,
            "escalation",
            "this user holds permissions you do not hold",
        )));
    }
    let owners = tenant.owners();
    if owners.contains(&user) && owners.len() == 1 {
        return Err(CommandError::Refused(Refused::new(
            RefusalKind::Conflict,
            "last_owner",
            format!("the tenant's last owner cannot be {done}; make someone else an owner first"),
        )));
    }
    Ok(())
}

struct Deactivate {
    tenant_id: TenantId,
    actor: Principal,
    user_id: UserId,
    now: DateTime<Utc>,
}

impl<L: EventLog> Command<L> for Deactivate {
    type Output = ();
    type Error = Refused;

    async fn decide(&self, work: &mut UnitOfWork<'_, L>) -> Result<(), CommandError<Refused>> {
        let tenant = work.load::<Tenant>(&self.tenant_id.to_string()).await?;
        authorize(tenant.state(), &self.actor, Permission::UsersDeactivate)?;
        let mut user = work.load::<User>(&self.user_id.to_string()).await?;
        if user.state().tenant() != Some(self.tenant_id) {
            return Err(CommandError::Refused(Refused::new(
                RefusalKind::NotFound,
                "user_not_found",
                "no such user in this tenant",
            )));
        }
        may_remove(tenant.state(), &self.actor, self.user_id, "deactivated")?;
        work.handle(&mut user, UserCommand::Deactivate { now: self.now }, &())
            .await
            .map_err(refused)?;
        Ok(())
    }
}

struct AddMember {
    tenant_id: TenantId,
    actor: Principal,
    principal: Principal,
    roles: BTreeSet<RoleRef>,
    now: DateTime<Utc>,
}

impl<L: EventLog> Command<L> for AddMember {
    type Output = ();
    type Error = Refused;

    async fn decide(&self, work: &mut UnitOfWork<'_, L>) -> Result<(), CommandError<Refused>> {
        let mut tenant = work.load::<Tenant>(&self.tenant_id.to_string()).await?;
        authorize(tenant.state(), &self.actor, Permission::RolesAssign)?;
        let belongs = match self.principal {
            Principal::User(user) => {
                let user = work.load::<User>(&user.to_string()).await?;
                user.state().tenant() == Some(self.tenant_id)
                    && user.state().status() == UserStatus::Active
            }
            Principal::ServiceAccount(account) => {
                let account = work.load::<ServiceAccount>(&account.to_string()).await?;
                account.state().tenant() == Some(self.tenant_id)
            }
        };
        if !belongs {
            return Err(CommandError::Refused(Refused::new(
                RefusalKind::NotFound,
                "principal_not_found",
                "no such active user or service account in this tenant",
            )));
        }
        let granted_by = tenant.state().effective_permissions(&self.actor);
        work.handle(
            &mut tenant,
            TenantCommand::AddMember {
                principal: self.principal,
                roles: self.roles.clone(),
                granted_by,
                now: self.now,
            },
            &(),
        )
        .await
        .map_err(refused)?;
        Ok(())
    }
}
