//! The `Tenant` aggregate: an organisation. It holds the tenant's lifecycle (active, suspended,
//! closed), its name, its plan, its members (users and service accounts) with their roles, and
//! its custom roles.
//!
//! Consistency rules, all enforced inside this one boundary:
//!
//! - **Lifecycle.** A tenant is created once. A closed tenant refuses every later command
//!   (`closed`), `Create` included; its events stay. A suspended tenant refuses every command
//!   except `Reactivate` and `Close` (`suspended`): no renames, plan changes, members or roles
//!   change while it is suspended. `Suspend` is accepted only from active, `Reactivate` only
//!   from suspended, `Close` from either.
//! - **Nobody grants what they do not hold** (`docs/permissions.md`, rule 5). Every member and
//!   role command carries `granted_by`: the acting principal's effective permissions, computed
//!   by the application layer with [`Tenant::effective_permissions`] (or a key's scopes). Adding
//!   a member, assigning or unassigning a role, and removing a member need `granted_by` to hold
//!   every permission of the roles given or taken away; defining, redefining (old *and* new
//!   permissions) and deleting a custom role need it to hold the role's permissions. Whether
//!   the actor holds `roles:assign` / `roles:manage` / `tenants:*` at all is the application
//!   layer's check, made before the command is sent.
//! - **The last owner stays** (rule 7). No command may leave the tenant without a *user*
//!   holding the built-in owner role. Key decision: only users count. A service account may
//!   hold the owner role, but it never counts as an owner for this rule, so the last user
//!   owner can neither leave nor be demoted while only service accounts hold owner besides
//!   them; [`Tenant::owners`] lists user owners only.
//! - **Roles exist while they are used.** A member holds at least one role (unassigning the
//!   last one is refused: remove the member instead), and a custom role still held by a member
//!   cannot be deleted (unassign it first). So every role a member holds is always defined.
//!
//! The order of refusals is fixed: the lifecycle first, then the shape of the input (empty
//! roles or permissions, an unchanged name), then whether what the command names exists (the
//! member, the custom role), then escalation, then the rules about the tenant's state (already a
//! member, the last owner, a role in use). Each command emits exactly one event, decided before
//! it is written.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use super::principal::Principal;
use super::rbac::{BuiltinRole, Permission, PermissionSet, RoleName, RoleRef};
use super::values::{PlanRef, TenantId, TenantName, UserId};
use crate::refusal::{Refusal, RefusalKind};

/// The longest reason for suspending or closing a tenant, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// Where a tenant is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    /// Not created yet.
    #[default]
    Absent,
    /// In use.
    Active,
    /// Stopped for a while; only reactivation or closing is accepted.
    Suspended,
    /// Closed for good; no command is accepted.
    Closed,
}

/// An organisation: its lifecycle, plan, members with their roles, and custom roles.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    id: Option<TenantId>,
    status: TenantStatus,
    name: Option<TenantName>,
    plan: Option<PlanRef>,
    members: BTreeMap<Principal, BTreeSet<RoleRef>>,
    custom_roles: BTreeMap<RoleName, PermissionSet>,
}

/// What can be asked of a tenant. Every command carries the time it is handled at.
#[derive(Clone, Debug, PartialEq)]
pub enum TenantCommand {
    /// Create the tenant, with its creator as its first owner.
    Create {
        /// The new tenant's id.
        tenant_id: TenantId,
        /// Its name.
        name: TenantName,
        /// Its plan.
        plan: PlanRef,
        /// The creating user, who becomes a member with the built-in owner role.
        owner: UserId,
        /// When.
        now: DateTime<Utc>,
    },
    /// Rename the tenant.
    Rename {
        /// The new name.
        name: TenantName,
        /// When.
        now: DateTime<Utc>,
    },
    /// Move the tenant to another plan.
    ChangePlan {
        /// The new plan.
        plan: PlanRef,
        /// When.
        now: DateTime<Utc>,
    },
    /// Suspend an active tenant.
    Suspend {
        /// Why; trimmed, 1 to 500 characters. Stored as given: it must not hold personal data.
        reason: String,
        /// When.
        now: DateTime<Utc>,
    },
    /// Reactivate a suspended tenant.
    Reactivate {
        /// When.
        now: DateTime<Utc>,
    },
    /// Close an active or suspended tenant for good.
    Close {
        /// Why; trimmed, 1 to 500 characters. Stored as given: it must not hold personal data.
        reason: String,
        /// When.
        now: DateTime<Utc>,
    },
    /// Make a user or service account a member, with some roles.
    AddMember {
        /// The new member.
        principal: Principal,
        /// Its roles; at least one.
        roles: BTreeSet<RoleRef>,
        /// The acting principal's effective permissions.
        granted_by: PermissionSet,
        /// When.
        now: DateTime<Utc>,
    },
    /// Remove a member with all its roles.
    RemoveMember {
        /// The member to remove.
        principal: Principal,
        /// The acting principal's effective permissions.
        granted_by: PermissionSet,
        /// When.
        now: DateTime<Utc>,
    },
    /// Give a member one more role.
    AssignRole {
        /// The member.
        principal: Principal,
        /// The role to give.
        role: RoleRef,
        /// The acting principal's effective permissions.
        granted_by: PermissionSet,
        /// When.
        now: DateTime<Utc>,
    },
    /// Take one role away from a member.
    UnassignRole {
        /// The member.
        principal: Principal,
        /// The role to take away.
        role: RoleRef,
        /// The acting principal's effective permissions.
        granted_by: PermissionSet,
        /// When.
        now: DateTime<Utc>,
    },
    /// Define a custom role.
    DefineRole {
        /// Its name, unique in the tenant.
        name: RoleName,
        /// Its permissions; at least one.
        permissions: PermissionSet,
        /// The acting principal's effective permissions.
        granted_by: PermissionSet,
        /// When.
        now: DateTime<Utc>,
    },
    /// Change the permissions of a custom role (for every member holding it).
    RedefineRole {
        /// The role.
        name: RoleName,
        /// Its new permissions; at least one.
        permissions: PermissionSet,
        /// The acting principal's effective permissions.
        granted_by: PermissionSet,
        /// When.
        now: DateTime<Utc>,
    },
    /// Delete a custom role that no member holds.
    DeleteRole {
        /// The role.
        name: RoleName,
        /// The acting principal's effective permissions.
        granted_by: PermissionSet,
        /// When.
        now: DateTime<Utc>,
    },
}

/// What happened to a tenant. Stored as JSON; principals and roles are plain strings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TenantEvent {
    /// The tenant was created; `owner` is its first member, with the built-in owner role.
    TenantCreated {
        /// The tenant.
        tenant_id: TenantId,
        /// Its name.
        name: TenantName,
        /// Its plan.
        plan: PlanRef,
        /// The creating user, now an owner.
        owner: UserId,
        /// When.
        created_at: DateTime<Utc>,
    },
    /// The tenant was renamed.
    TenantRenamed {
        /// The new name.
        name: TenantName,
        /// When.
        renamed_at: DateTime<Utc>,
    },
    /// The tenant moved to another plan.
    PlanChanged {
        /// The new plan.
        plan: PlanRef,
        /// The plan before.
        previous: PlanRef,
        /// When.
        changed_at: DateTime<Utc>,
    },
    /// The tenant was suspended.
    TenantSuspended {
        /// Why (trimmed).
        reason: String,
        /// When.
        suspended_at: DateTime<Utc>,
    },
    /// The tenant was reactivated.
    TenantReactivated {
        /// When.
        reactivated_at: DateTime<Utc>,
    },
    /// The tenant was closed for good.
    TenantClosed {
        /// Why (trimmed).
        reason: String,
        /// When.
        closed_at: DateTime<Utc>,
    },
    /// A principal became a member.
    MemberAdded {
        /// The member.
        principal: Principal,
        /// Its roles.
        roles: BTreeSet<RoleRef>,
        /// When.
        added_at: DateTime<Utc>,
    },
    /// A member was removed, with all its roles.
    MemberRemoved {
        /// The former member.
        principal: Principal,
        /// When.
        removed_at: DateTime<Utc>,
    },
    /// A member was given a role.
    RoleAssigned {
        /// The member.
        principal: Principal,
        /// The role.
        role: RoleRef,
        /// When.
        assigned_at: DateTime<Utc>,
    },
    /// A role was taken away from a member.
    RoleUnassigned {
        /// The member.
        principal: Principal,
        /// The role.
        role: RoleRef,
        /// When.
        unassigned_at: DateTime<Utc>,
    },
    /// A custom role was defined.
    RoleDefined {
        /// Its name.
        name: RoleName,
        /// Its permissions.
        permissions: PermissionSet,
        /// When.
        defined_at: DateTime<Utc>,
    },
    /// A custom role's permissions changed.
    RoleRedefined {
        /// Its name.
        name: RoleName,
        /// Its new permissions.
        permissions: PermissionSet,
        /// Its permissions before.
        previous: PermissionSet,
        /// When.
        redefined_at: DateTime<Utc>,
    },
    /// A custom role was deleted.
    RoleDeleted {
        /// Its name.
        name: RoleName,
        /// When.
        deleted_at: DateTime<Utc>,
    },
}

impl DomainEvent for TenantEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TenantCreated { .. } => "TenantCreated",
            Self::TenantRenamed { .. } => "TenantRenamed",
            Self::PlanChanged { .. } => "PlanChanged",
            Self::TenantSuspended { .. } => "TenantSuspended",
            Self::TenantReactivated { .. } => "TenantReactivated",
            Self::TenantClosed { .. } => "TenantClosed",
            Self::MemberAdded { .. } => "MemberAdded",
            Self::MemberRemoved { .. } => "MemberRemoved",
            Self::RoleAssigned { .. } => "RoleAssigned",
            Self::RoleUnassigned { .. } => "RoleUnassigned",
            Self::RoleDefined { .. } => "RoleDefined",
            Self::RoleRedefined { .. } => "RoleRedefined",
            Self::RoleDeleted { .. } => "RoleDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// The permissions of a set, as `a:b, c:d`.
fn permission_list(permissions: &PermissionSet) -> String {
    permissions
        .iter()
        .map(Permission::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a tenant refused a command.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TenantError {
    /// `Create` on a tenant that exists.
    #[error("tenant {tenant_id} already exists")]
    AlreadyExists {
        /// The tenant.
        tenant_id: TenantId,
    },
    /// A command other than `Create` on a tenant that was never created.
    #[error("there is no such tenant; it must be created first")]
    NotFound,
    /// Any command on a closed tenant.
    #[error("tenant {tenant_id} is closed; it accepts no changes")]
    Closed {
        /// The tenant.
        tenant_id: TenantId,
    },
    /// A command other than `Reactivate` or `Close` on a suspended tenant.
    #[error("tenant {tenant_id} is suspended; it can only be reactivated or closed")]
    Suspended {
        /// The tenant.
        tenant_id: TenantId,
    },
    /// `Reactivate` on a tenant that is not suspended.
    #[error("tenant {tenant_id} is not suspended, so it cannot be reactivated")]
    NotSuspended {
        /// The tenant.
        tenant_id: TenantId,
    },
    /// `Rename` to the current name.
    #[error("the tenant is already named `{name}`")]
    SameName {
        /// The current name.
        name: TenantName,
    },
    /// `ChangePlan` to the current plan.
    #[error("the tenant is already on plan `{plan}`")]
    SamePlan {
        /// The current plan.
        plan: PlanRef,
    },
    /// A suspension or closing reason that is empty or too long.
    #[error("the reason {problem}")]
    InvalidReason {
        /// What is wrong with it.
        problem: String,
    },
    /// `AddMember` without roles.
    #[error("a member needs at least one role")]
    NoRoles,
    /// A custom role the tenant does not have.
    #[error("the tenant has no role `{role}`")]
    UnknownRole {
        /// The role.
        role: RoleRef,
    },
    /// The command would grant or take away permissions the acting principal does not hold.
    #[error(
        "the acting principal lacks {}; nobody grants or takes away permissions they do not hold",
        permission_list(.missing)
    )]
    Escalation {
        /// The permissions the acting principal would need besides its own.
        missing: PermissionSet,
    },
    /// `AddMember` of a principal that is a member.
    #[error("{principal} is already a member of the tenant")]
    AlreadyMember {
        /// The principal.
        principal: Principal,
    },
    /// A member command on a principal that is not a member.
    #[error("{principal} is not a member of the tenant")]
    NotAMember {
        /// The principal.
        principal: Principal,
    },
    /// `AssignRole` of a role the member holds.
    #[error("{principal} already holds the role `{role}`")]
    RoleAlreadyHeld {
        /// The member.
        principal: Principal,
        /// The role.
        role: RoleRef,
    },
    /// `UnassignRole` of a role the member does not hold.
    #[error("{principal} does not hold the role `{role}`")]
    RoleNotHeld {
        /// The member.
        principal: Principal,
        /// The role.
        role: RoleRef,
    },
    /// `UnassignRole` of a member's only role.
    #[error("`{role}` is the only role of {principal}; remove the member instead")]
    NoRoleLeft {
        /// The member.
        principal: Principal,
        /// The role.
        role: RoleRef,
    },
    /// Removing or demoting the last user who is an owner.
    #[error(
        "{principal} is the tenant's last owner; make another user an owner before removing or \
         demoting them"
    )]
    LastOwner {
        /// The last owner.
        principal: Principal,
    },
    /// `DefineRole` with a name the tenant already uses.
    #[error("the tenant already has a role named `{name}`")]
    RoleExists {
        /// The name.
        name: RoleName,
    },
    /// `DefineRole` or `RedefineRole` without permissions.
    #[error("a role needs at least one permission")]
    NoPermissions,
    /// `RedefineRole` with the role's current permissions.
    #[error("role `{name}` already has exactly these permissions")]
    SamePermissions {
        /// The role.
        name: RoleName,
    },
    /// `DeleteRole` of a role some members hold.
    #[error("role `{name}` is held by {holders} member(s); unassign it from them first")]
    RoleInUse {
        /// The role.
        name: RoleName,
        /// How many members hold it.
        holders: usize,
    },
}

impl Refusal for TenantError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::SameName { .. }
            | Self::SamePlan { .. }
            | Self::InvalidReason { .. }
            | Self::NoRoles
            | Self::NoRoleLeft { .. }
            | Self::NoPermissions
            | Self::SamePermissions { .. } => RefusalKind::BadInput,
            Self::NotFound
            | Self::UnknownRole { .. }
            | Self::NotAMember { .. }
            | Self::RoleNotHeld { .. } => RefusalKind::NotFound,
            Self::AlreadyExists { .. }
            | Self::Closed { .. }
            | Self::Suspended { .. }
            | Self::NotSuspended { .. }
            | Self::AlreadyMember { .. }
            | Self::RoleAlreadyHeld { .. }
            | Self::LastOwner { .. }
            | Self::RoleExists { .. }
            | Self::RoleInUse { .. } => RefusalKind::Conflict,
            Self::Escalation { .. } => RefusalKind::Forbidden,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::AlreadyExists { .. } => "already_exists",
            Self::NotFound => "not_found",
            Self::Closed { .. } => "closed",
            Self::Suspended { .. } => "suspended",
            Self::NotSuspended { .. } => "not_suspended",
            Self::SameName { .. } => "same_name",
            Self::SamePlan { .. } => "same_plan",
            Self::InvalidReason { .. } => "invalid_reason",
            Self::NoRoles => "no_roles",
            Self::UnknownRole { .. } => "unknown_role",
            Self::Escalation { .. } => "escalation",
            Self::AlreadyMember { .. } => "already_member",
            Self::NotAMember { .. } => "not_a_member",
            Self::RoleAlreadyHeld { .. } => "role_already_held",
            Self::RoleNotHeld { .. } => "role_not_held",
            Self::NoRoleLeft { .. } => "no_role_left",
            Self::LastOwner { .. } => "last_owner",
            Self::RoleExists { .. } => "role_exists",
            Self::NoPermissions => "no_permissions",
            Self::SamePermissions { .. } => "same_permissions",
            Self::RoleInUse { .. } => "role_in_use",
        }
    }
}

/// Refuses with [`TenantError::Escalation`] unless `needed` is within `granted_by`.
fn within(needed: PermissionSet, granted_by: PermissionSet) -> Result<(), TenantError> {
    let missing = needed.difference(granted_by);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(TenantError::Escalation { missing })
    }
}

/// A suspension or closing reason, trimmed and checked.
fn checked_reason(input: &str) -> Result<String, TenantError> {
    let reason = input.trim();
    let chars = reason.chars().count();
    let problem = if chars == 0 {
        "is empty".to_owned()
    } else if chars > MAX_REASON_CHARS {
        format!("has {chars} characters; at most {MAX_REASON_CHARS} are allowed")
    } else {
        return Ok(reason.to_owned());
    };
    Err(TenantError::InvalidReason { problem })
}

const OWNER: RoleRef = RoleRef::Builtin(BuiltinRole::Owner);

impl Tenant {
    /// The tenant's id, once created.
    pub fn id(&self) -> Option<TenantId> {
        self.id
    }

    /// Where the tenant is in its life.
    pub fn status(&self) -> TenantStatus {
        self.status
    }

    /// The tenant's name, once created.
    pub fn name(&self) -> Option<&TenantName> {
        self.name.as_ref()
    }

    /// The tenant's plan, once created.
    pub fn plan(&self) -> Option<&PlanRef> {
        self.plan.as_ref()
    }

    /// Whether `principal` is a member.
    pub fn is_member(&self, principal: &Principal) -> bool {
        self.members.contains_key(principal)
    }

    /// The roles of `principal`, if a member.
    pub fn roles_of(&self, principal: &Principal) -> Option<&BTreeSet<RoleRef>> {
        self.members.get(principal)
    }

    /// Every member with its roles.
    pub fn members(&self) -> &BTreeMap<Principal, BTreeSet<RoleRef>> {
        &self.members
    }

    /// The users holding the built-in owner role. Service accounts holding it are not listed:
    /// they never count as owners for the last-owner rule.
    pub fn owners(&self) -> BTreeSet<UserId> {
        self.members
            .iter()
            .filter(|(_, roles)| roles.contains(&OWNER))
            .filter_map(|(principal, _)| match principal {
                Principal::User(user) => Some(*user),
                Principal::ServiceAccount(_) => None,
            })
            .collect()
    }

    /// The tenant's custom roles and their permissions.
    pub fn custom_roles(&self) -> &BTreeMap<RoleName, PermissionSet> {
        &self.custom_roles
    }

    /// The permissions of a role in this tenant: a built-in role's fixed set, or a custom
    /// role's set; `None` for a custom role the tenant does not have.
    pub fn role_permissions(&self, role: &RoleRef) -> Option<PermissionSet> {
        match role {
            RoleRef::Builtin(builtin) => Some(builtin.permissions()),
            RoleRef::Custom(name) => self.custom_roles.get(name).copied(),
        }
    }

    /// What `principal` may do in this tenant: the union of its roles' permissions; empty for
    /// a principal that is not a member.
    pub fn effective_permissions(&self, principal: &Principal) -> PermissionSet {
        self.members
            .get(principal)
            .into_iter()
            .flatten()
            .filter_map(|role| self.role_permissions(role))
            .fold(PermissionSet::EMPTY, PermissionSet::union)
    }

    /// The union of the permissions of `roles`, refusing an unknown custom role.
    fn permissions_of<'a>(
        &self,
        roles: impl IntoIterator<Item = &'a RoleRef>,
    ) -> Result<PermissionSet, TenantError> {
        roles
            .into_iter()
            .try_fold(PermissionSet::EMPTY, |set, role| {
                self.role_permissions(role)
                    .map(|permissions| set.union(permissions))
                    .ok_or_else(|| TenantError::UnknownRole { role: role.clone() })
            })
    }

    /// Whether `principal` is the only user holding the owner role.
    fn is_last_owner(&self, principal: &Principal) -> bool {
        match principal {
            Principal::User(user) => {
                let owners = self.owners();
                owners.len() == 1 && owners.contains(user)
            }
            Principal::ServiceAccount(_) => false,
        }
    }

    /// The roles of a member, or [`TenantError::NotAMember`].
    fn member(&self, principal: &Principal) -> Result<&BTreeSet<RoleRef>, TenantError> {
        self.members.get(principal).ok_or(TenantError::NotAMember {
            principal: *principal,
        })
    }

    /// The permissions of a custom role, or [`TenantError::UnknownRole`].
    fn custom_role(&self, name: &RoleName) -> Result<PermissionSet, TenantError> {
        self.custom_roles
            .get(name)
            .copied()
            .ok_or_else(|| TenantError::UnknownRole {
                role: RoleRef::Custom(name.clone()),
            })
    }

    /// Refuses what the lifecycle does not allow: anything but `Create` before creation,
    /// everything once closed, everything but `Reactivate` and `Close` while suspended, and
    /// `Create` once created.
    fn check_lifecycle(&self, command: &TenantCommand) -> Result<(), TenantError> {
        let is_create = matches!(command, TenantCommand::Create { .. });
        let tenant_id = match (self.status, self.id) {
            (TenantStatus::Absent, _) | (_, None) => {
                return if is_create {
                    Ok(())
                } else {
                    Err(TenantError::NotFound)
                };
            }
            (_, Some(tenant_id)) => tenant_id,
        };
        match self.status {
            TenantStatus::Closed => Err(TenantError::Closed { tenant_id }),
            TenantStatus::Suspended
                if !matches!(
                    command,
                    TenantCommand::Reactivate { .. } | TenantCommand::Close { .. }
                ) =>
            {
                Err(TenantError::Suspended { tenant_id })
            }
            _ if is_create => Err(TenantError::AlreadyExists { tenant_id }),
            _ => Ok(()),
        }
    }

    /// Decides the one event `command` leads to, or why it is refused. Pure.
    fn decide(&self, command: TenantCommand) -> Result<TenantEvent, TenantError> {
        self.check_lifecycle(&command)?;
        match command {
            TenantCommand::Create {
                tenant_id,
                name,
                plan,
                owner,
                now,
            } => Ok(TenantEvent::TenantCreated {
                tenant_id,
                name,
                plan,
                owner,
                created_at: now,
            }),
            TenantCommand::Rename { name, now } => {
                if self.name.as_ref() == Some(&name) {
                    return Err(TenantError::SameName { name });
                }
                Ok(TenantEvent::TenantRenamed {
                    name,
                    renamed_at: now,
                })
            }
            TenantCommand::ChangePlan { plan, now } => match &self.plan {
                Some(previous) if *previous == plan => Err(TenantError::SamePlan { plan }),
                Some(previous) => Ok(TenantEvent::PlanChanged {
                    plan,
                    previous: previous.clone(),
                    changed_at: now,
                }),
                None => Err(TenantError::NotFound),
            },
            TenantCommand::Suspend { reason, now } => {
                let reason = checked_reason(&reason)?;
                Ok(TenantEvent::TenantSuspended {
                    reason,
                    suspended_at: now,
                })
            }
            TenantCommand::Reactivate { now } => match (self.status, self.id) {
                (TenantStatus::Suspended, _) => Ok(TenantEvent::TenantReactivated {
                    reactivated_at: now,
                }),
                (_, Some(tenant_id)) => Err(TenantError::NotSuspended { tenant_id }),
                (_, None) => Err(TenantError::NotFound),
            },
            TenantCommand::Close { reason, now } => {
                let reason = checked_reason(&reason)?;
                Ok(TenantEvent::TenantClosed {
                    reason,
                    closed_at: now,
                })
            }
            TenantCommand::AddMember {
                principal,
                roles,
                granted_by,
                now,
            } => {
                if roles.is_empty() {
                    return Err(TenantError::NoRoles);
                }
                within(self.permissions_of(&roles)?, granted_by)?;
                if self.is_member(&principal) {
                    return Err(TenantError::AlreadyMember { principal });
                }
                Ok(TenantEvent::MemberAdded {
                    principal,
                    roles,
                    added_at: now,
                })
            }
            TenantCommand::RemoveMember {
                principal,
                granted_by,
                now,
            } => {
                let roles = self.member(&principal)?;
                within(self.permissions_of(roles)?, granted_by)?;
                if self.is_last_owner(&principal) {
                    return Err(TenantError::LastOwner { principal });
                }
                Ok(TenantEvent::MemberRemoved {
                    principal,
                    removed_at: now,
                })
            }
            TenantCommand::AssignRole {
                principal,
                role,
                granted_by,
                now,
            } => {
                let roles = self.member(&principal)?;
                within(self.permissions_of([&role])?, granted_by)?;
                if roles.contains(&role) {
                    return Err(TenantError::RoleAlreadyHeld { principal, role });
                }
                Ok(TenantEvent::RoleAssigned {
                    principal,
                    role,
                    assigned_at: now,
                })
            }
            TenantCommand::UnassignRole {
                principal,
                role,
                granted_by,
                now,
            } => {
                let roles = self.member(&principal)?;
                if !roles.contains(&role) {
                    return Err(TenantError::RoleNotHeld { principal, role });
                }
                within(self.permissions_of([&role])?, granted_by)?;
                if role == OWNER && self.is_last_owner(&principal) {
                    return Err(TenantError::LastOwner { principal });
                }
                if roles.len() == 1 {
                    return Err(TenantError::NoRoleLeft { principal, role });
                }
                Ok(TenantEvent::RoleUnassigned {
                    principal,
                    role,
                    unassigned_at: now,
                })
            }
            TenantCommand::DefineRole {
                name,
                permissions,
                granted_by,
                now,
            } => {
                if permissions.is_empty() {
                    return Err(TenantError::NoPermissions);
                }
                within(permissions, granted_by)?;
                if self.custom_roles.contains_key(&name) {
                    return Err(TenantError::RoleExists { name });
                }
                Ok(TenantEvent::RoleDefined {
                    name,
                    permissions,
                    defined_at: now,
                })
            }
            TenantCommand::RedefineRole {
                name,
                permissions,
                granted_by,
                now,
            } => {
                if permissions.is_empty() {
                    return Err(TenantError::NoPermissions);
                }
                let previous = self.custom_role(&name)?;
                within(previous.union(permissions), granted_by)?;
                if previous == permissions {
                    return Err(TenantError::SamePermissions { name });
                }
                Ok(TenantEvent::RoleRedefined {
                    name,
                    permissions,
                    previous,
                    redefined_at: now,
                })
            }
            TenantCommand::DeleteRole {
                name,
                granted_by,
                now,
            } => {
                within(self.custom_role(&name)?, granted_by)?;
                let holders = self
                    .members
                    .values()
                    .filter(|roles| {
                        roles
                            .iter()
                            .any(|role| matches!(role, RoleRef::Custom(held) if *held == name))
                    })
                    .count();
                if holders > 0 {
                    return Err(TenantError::RoleInUse { name, holders });
                }
                Ok(TenantEvent::RoleDeleted {
                    name,
                    deleted_at: now,
                })
            }
        }
    }
}

impl Aggregate for Tenant {
    const TYPE: &'static str = "Tenant";
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = TenantError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _service: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = self.decide(command)?;
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            TenantEvent::TenantCreated {
                tenant_id,
                name,
                plan,
                owner,
                created_at: _,
            } => {
                self.id = Some(tenant_id);
                self.status = TenantStatus::Active;
                self.name = Some(name);
                self.plan = Some(plan);
                self.members
                    .insert(Principal::User(owner), BTreeSet::from([OWNER]));
            }
            TenantEvent::TenantRenamed { name, .. } => self.name = Some(name),
            TenantEvent::PlanChanged { plan, .. } => self.plan = Some(plan),
            TenantEvent::TenantSuspended { .. } => self.status = TenantStatus::Suspended,
            TenantEvent::TenantReactivated { .. } => self.status = TenantStatus::Active,
            TenantEvent::TenantClosed { .. } => self.status = TenantStatus::Closed,
            TenantEvent::MemberAdded {
                principal, roles, ..
            } => {
                self.members.insert(principal, roles);
            }
            TenantEvent::MemberRemoved { principal, .. } => {
                self.members.remove(&principal);
            }
            TenantEvent::RoleAssigned {
                principal, role, ..
            } => {
                self.members.entry(principal).or_default().insert(role);
            }
            TenantEvent::RoleUnassigned {
                principal, role, ..
            } => {
                if let Some(roles) = self.members.get_mut(&principal) {
                    roles.remove(&role);
                }
            }
            TenantEvent::RoleDefined {
                name, permissions, ..
            }
            | TenantEvent::RoleRedefined {
                name, permissions, ..
            } => {
                self.custom_roles.insert(name, permissions);
            }
            TenantEvent::RoleDeleted { name, .. } => {
                self.custom_roles.remove(&name);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::cell::RefCell;

    use chrono::{TimeDelta, TimeZone};
    use cqrs_es::test::TestFramework;
    use proptest::prelude::*;
    use uuid::Uuid;

    use super::*;
    use crate::identity::values::ServiceAccountId;

    type P = Permission;

    fn at(minutes: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap() + TimeDelta::minutes(minutes)
    }

    fn tenant_id() -> TenantId {
        TenantId::from_uuid(Uuid::from_u128(0x7e4a))
    }

    fn ada() -> UserId {
        UserId::from_uuid(Uuid::from_u128(0xada))
    }

    fn bob() -> UserId {
        UserId::from_uuid(Uuid::from_u128(0xb0b))
    }

    fn user(id: UserId) -> Principal {
        Principal::User(id)
    }

    fn robot() -> Principal {
        Principal::ServiceAccount(ServiceAccountId::from_uuid(Uuid::from_u128(0x60b07)))
    }

    fn acme() -> TenantName {
        TenantName::parse("Acme").unwrap()
    }

    fn free() -> PlanRef {
        PlanRef::parse("free").unwrap()
    }

    fn team() -> PlanRef {
        PlanRef::parse("team").unwrap()
    }

    fn support() -> RoleName {
        RoleName::parse("support").unwrap()
    }

    fn builtin(role: BuiltinRole) -> RoleRef {
        RoleRef::Builtin(role)
    }

    fn custom(name: &str) -> RoleRef {
        RoleRef::Custom(RoleName::parse(name).unwrap())
    }

    fn roles(roles: &[RoleRef]) -> BTreeSet<RoleRef> {
        roles.iter().cloned().collect()
    }

    fn perms(permissions: &[Permission]) -> PermissionSet {
        PermissionSet::of(permissions)
    }

    fn owner_perms() -> PermissionSet {
        BuiltinRole::Owner.permissions()
    }

    fn admin_perms() -> PermissionSet {
        BuiltinRole::Admin.permissions()
    }

    fn support_perms() -> PermissionSet {
        perms(&[P::UsersRead, P::SessionsRevoke])
    }

    fn framework() -> TestFramework<Tenant> {
        TestFramework::with(())
    }

    fn created() -> TenantEvent {
        TenantEvent::TenantCreated {
            tenant_id: tenant_id(),
            name: acme(),
            plan: free(),
            owner: ada(),
            created_at: at(0),
        }
    }

    fn added(principal: Principal, with: &[RoleRef]) -> TenantEvent {
        TenantEvent::MemberAdded {
            principal,
            roles: roles(with),
            added_at: at(1),
        }
    }

    fn support_defined() -> TenantEvent {
        TenantEvent::RoleDefined {
            name: support(),
            permissions: support_perms(),
            defined_at: at(1),
        }
    }

    fn suspended() -> TenantEvent {
        TenantEvent::TenantSuspended {
            reason: "unpaid invoices".to_owned(),
            suspended_at: at(2),
        }
    }

    fn closed() -> TenantEvent {
        TenantEvent::TenantClosed {
            reason: "customer left".to_owned(),
            closed_at: at(3),
        }
    }

    fn replay(events: impl IntoIterator<Item = TenantEvent>) -> Tenant {
        let mut tenant = Tenant::default();
        for event in events {
            tenant.apply(event);
        }
        tenant
    }

    /// One command of each kind, all of which an active tenant with bob as a viewer and the
    /// `support` role defined would accept.
    fn one_of_each_command() -> Vec<TenantCommand> {
        let now = at(10);
        vec![
            TenantCommand::Create {
                tenant_id: tenant_id(),
                name: acme(),
                plan: free(),
                owner: ada(),
                now,
            },
            TenantCommand::Rename {
                name: TenantName::parse("Acme Ltd").unwrap(),
                now,
            },
            TenantCommand::ChangePlan { plan: team(), now },
            TenantCommand::Suspend {
                reason: "audit".to_owned(),
                now,
            },
            TenantCommand::Reactivate { now },
            TenantCommand::Close {
                reason: "done".to_owned(),
                now,
            },
            TenantCommand::AddMember {
                principal: robot(),
                roles: roles(&[builtin(BuiltinRole::Operator)]),
                granted_by: owner_perms(),
                now,
            },
            TenantCommand::RemoveMember {
                principal: user(bob()),
                granted_by: owner_perms(),
                now,
            },
            TenantCommand::AssignRole {
                principal: user(bob()),
                role: builtin(BuiltinRole::Auditor),
                granted_by: owner_perms(),
                now,
            },
            TenantCommand::UnassignRole {
                principal: user(bob()),
                role: builtin(BuiltinRole::Viewer),
                granted_by: owner_perms(),
                now,
            },
            TenantCommand::DefineRole {
                name: RoleName::parse("tier-2").unwrap(),
                permissions: perms(&[P::UsersRead]),
                granted_by: owner_perms(),
                now,
            },
            TenantCommand::RedefineRole {
                name: support(),
                permissions: perms(&[P::UsersRead]),
                granted_by: owner_perms(),
                now,
            },
            TenantCommand::DeleteRole {
                name: support(),
                granted_by: owner_perms(),
                now,
            },
        ]
    }

    // --- Create -------------------------------------------------------------------------

    #[test]
    fn creating_a_tenant_makes_its_creator_the_first_owner() {
        framework()
            .given_no_previous_events()
            .when(TenantCommand::Create {
                tenant_id: tenant_id(),
                name: acme(),
                plan: free(),
                owner: ada(),
                now: at(0),
            })
            .then_expect_events(vec![created()]);
        let tenant = replay([created()]);
        assert_eq!(tenant.id(), Some(tenant_id()));
        assert_eq!(tenant.status(), TenantStatus::Active);
        assert_eq!(tenant.name(), Some(&acme()));
        assert_eq!(tenant.plan(), Some(&free()));
        assert!(tenant.is_member(&user(ada())));
        assert_eq!(
            tenant.roles_of(&user(ada())),
            Some(&roles(&[builtin(BuiltinRole::Owner)]))
        );
        assert_eq!(tenant.owners(), BTreeSet::from([ada()]));
        assert_eq!(tenant.effective_permissions(&user(ada())), owner_perms());
    }

    #[test]
    fn creating_a_tenant_that_exists_is_refused() {
        framework()
            .given(vec![created()])
            .when(one_of_each_command().remove(0))
            .then_expect_error(TenantError::AlreadyExists {
                tenant_id: tenant_id(),
            });
    }

    #[test]
    fn a_tenant_that_was_never_created_accepts_only_create() {
        for command in one_of_each_command().into_iter().skip(1) {
            framework()
                .given_no_previous_events()
                .when(command)
                .then_expect_error(TenantError::NotFound);
        }
    }

    // --- Rename and ChangePlan ------------------------------------------------------------

    #[test]
    fn renaming_a_tenant_records_the_new_name() {
        let name = TenantName::parse("Acme Ltd").unwrap();
        framework()
            .given(vec![created()])
            .when(TenantCommand::Rename {
                name: name.clone(),
                now: at(5),
            })
            .then_expect_events(vec![TenantEvent::TenantRenamed {
                name,
                renamed_at: at(5),
            }]);
    }

    #[test]
    fn renaming_a_tenant_to_its_current_name_is_refused() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::Rename {
                name: acme(),
                now: at(5),
            })
            .then_expect_error(TenantError::SameName { name: acme() });
    }

    #[test]
    fn changing_the_plan_records_the_previous_one() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::ChangePlan {
                plan: team(),
                now: at(5),
            })
            .then_expect_events(vec![TenantEvent::PlanChanged {
                plan: team(),
                previous: free(),
                changed_at: at(5),
            }]);
    }

    #[test]
    fn changing_to_the_current_plan_is_refused() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::ChangePlan {
                plan: free(),
                now: at(5),
            })
            .then_expect_error(TenantError::SamePlan { plan: free() });
    }

    // --- Suspend, Reactivate, Close -------------------------------------------------------

    #[test]
    fn suspending_an_active_tenant_records_the_trimmed_reason() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::Suspend {
                reason: "  unpaid invoices \n".to_owned(),
                now: at(2),
            })
            .then_expect_events(vec![suspended()]);
        assert_eq!(
            replay([created(), suspended()]).status(),
            TenantStatus::Suspended
        );
    }

    #[test]
    fn suspending_without_a_reason_is_refused() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::Suspend {
                reason: "   ".to_owned(),
                now: at(2),
            })
            .then_expect_error(TenantError::InvalidReason {
                problem: "is empty".to_owned(),
            });
    }

    #[test]
    fn a_reason_longer_than_500_characters_is_refused() {
        let longest = "é".repeat(MAX_REASON_CHARS);
        framework()
            .given(vec![created()])
            .when(TenantCommand::Suspend {
                reason: longest.clone(),
                now: at(2),
            })
            .then_expect_events(vec![TenantEvent::TenantSuspended {
                reason: longest,
                suspended_at: at(2),
            }]);
        for command in [
            TenantCommand::Suspend {
                reason: "é".repeat(MAX_REASON_CHARS + 1),
                now: at(2),
            },
            TenantCommand::Close {
                reason: "é".repeat(MAX_REASON_CHARS + 1),
                now: at(2),
            },
        ] {
            framework()
                .given(vec![created()])
                .when(command)
                .then_expect_error(TenantError::InvalidReason {
                    problem: "has 501 characters; at most 500 are allowed".to_owned(),
                });
        }
    }

    #[test]
    fn suspending_a_suspended_tenant_is_refused() {
        framework()
            .given(vec![created(), suspended()])
            .when(TenantCommand::Suspend {
                reason: "again".to_owned(),
                now: at(4),
            })
            .then_expect_error(TenantError::Suspended {
                tenant_id: tenant_id(),
            });
    }

    #[test]
    fn reactivating_a_suspended_tenant_makes_it_active() {
        let reactivated = TenantEvent::TenantReactivated {
            reactivated_at: at(4),
        };
        framework()
            .given(vec![created(), suspended()])
            .when(TenantCommand::Reactivate { now: at(4) })
            .then_expect_events(vec![reactivated.clone()]);
        assert_eq!(
            replay([created(), suspended(), reactivated]).status(),
            TenantStatus::Active
        );
    }

    #[test]
    fn reactivating_an_active_tenant_is_refused() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::Reactivate { now: at(4) })
            .then_expect_error(TenantError::NotSuspended {
                tenant_id: tenant_id(),
            });
    }

    #[test]
    fn closing_an_active_tenant_records_the_reason() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::Close {
                reason: " customer left ".to_owned(),
                now: at(3),
            })
            .then_expect_events(vec![closed()]);
        assert_eq!(replay([created(), closed()]).status(), TenantStatus::Closed);
    }

    #[test]
    fn closing_a_suspended_tenant_is_allowed() {
        framework()
            .given(vec![created(), suspended()])
            .when(TenantCommand::Close {
                reason: "customer left".to_owned(),
                now: at(3),
            })
            .then_expect_events(vec![closed()]);
    }

    #[test]
    fn closing_without_a_reason_is_refused() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::Close {
                reason: String::new(),
                now: at(3),
            })
            .then_expect_error(TenantError::InvalidReason {
                problem: "is empty".to_owned(),
            });
    }

    #[test]
    fn a_closed_tenant_accepts_no_command() {
        let history = vec![
            created(),
            added(user(bob()), &[builtin(BuiltinRole::Viewer)]),
            support_defined(),
            closed(),
        ];
        let commands = one_of_each_command();
        assert_eq!(commands.len(), 13, "every command kind");
        for command in commands {
            framework()
                .given(history.clone())
                .when(command)
                .then_expect_error(TenantError::Closed {
                    tenant_id: tenant_id(),
                });
        }
    }

    #[test]
    fn a_suspended_tenant_only_reactivates_or_closes() {
        let history = vec![
            created(),
            added(user(bob()), &[builtin(BuiltinRole::Viewer)]),
            support_defined(),
            suspended(),
        ];
        for command in one_of_each_command() {
            let allowed = matches!(
                command,
                TenantCommand::Reactivate { .. } | TenantCommand::Close { .. }
            );
            let result = framework()
                .given(history.clone())
                .when(command.clone())
                .inspect_result();
            if allowed {
                assert!(result.is_ok(), "{command:?}: {result:?}");
            } else {
                assert_eq!(
                    result,
                    Err(TenantError::Suspended {
                        tenant_id: tenant_id()
                    }),
                    "{command:?}"
                );
            }
        }
    }

    // --- AddMember ------------------------------------------------------------------------

    #[test]
    fn adding_a_member_gives_it_the_roles() {
        let with = [builtin(BuiltinRole::Viewer), custom("support")];
        framework()
            .given(vec![created(), support_defined()])
            .when(TenantCommand::AddMember {
                principal: user(bob()),
                roles: roles(&with),
                granted_by: admin_perms(),
                now: at(1),
            })
            .then_expect_events(vec![added(user(bob()), &with)]);
        let tenant = replay([created(), support_defined(), added(user(bob()), &with)]);
        assert_eq!(tenant.roles_of(&user(bob())), Some(&roles(&with)));
        assert_eq!(
            tenant.effective_permissions(&user(bob())),
            BuiltinRole::Viewer.permissions().union(support_perms())
        );
        assert_eq!(tenant.owners(), BTreeSet::from([ada()]));
    }

    #[test]
    fn adding_a_member_twice_is_refused() {
        framework()
            .given(vec![
                created(),
                added(user(bob()), &[builtin(BuiltinRole::Viewer)]),
            ])
            .when(TenantCommand::AddMember {
                principal: user(bob()),
                roles: roles(&[builtin(BuiltinRole::Member)]),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::AlreadyMember {
                principal: user(bob()),
            });
    }

    #[test]
    fn adding_a_member_without_roles_is_refused() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::AddMember {
                principal: user(bob()),
                roles: BTreeSet::new(),
                granted_by: owner_perms(),
                now: at(1),
            })
            .then_expect_error(TenantError::NoRoles);
    }

    #[test]
    fn adding_a_member_with_an_unknown_custom_role_is_refused() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::AddMember {
                principal: user(bob()),
                roles: roles(&[builtin(BuiltinRole::Viewer), custom("ghost")]),
                granted_by: owner_perms(),
                now: at(1),
            })
            .then_expect_error(TenantError::UnknownRole {
                role: custom("ghost"),
            });
    }

    #[test]
    fn an_admin_cannot_grant_the_owner_role() {
        let missing = owner_perms().difference(admin_perms());
        framework()
            .given(vec![created()])
            .when(TenantCommand::AddMember {
                principal: user(bob()),
                roles: roles(&[builtin(BuiltinRole::Owner)]),
                granted_by: admin_perms(),
                now: at(1),
            })
            .then_expect_error(TenantError::Escalation { missing });
        framework()
            .given(vec![
                created(),
                added(user(bob()), &[builtin(BuiltinRole::Viewer)]),
            ])
            .when(TenantCommand::AssignRole {
                principal: user(bob()),
                role: builtin(BuiltinRole::Owner),
                granted_by: admin_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::Escalation { missing });
    }

    #[test]
    fn an_escalation_refusal_lists_the_missing_permissions() {
        let err = TenantError::Escalation {
            missing: BuiltinRole::BillingAdmin
                .permissions()
                .difference(admin_perms()),
        };
        assert_eq!(
            err.to_string(),
            "the acting principal lacks billing:manage, tenants:manage_plan; nobody grants or \
             takes away permissions they do not hold"
        );
        assert_eq!(err.kind(), RefusalKind::Forbidden);
        assert_eq!(err.reason(), "escalation");
    }

    // --- RemoveMember ---------------------------------------------------------------------

    #[test]
    fn removing_a_member_takes_away_all_its_roles() {
        let removed = TenantEvent::MemberRemoved {
            principal: user(bob()),
            removed_at: at(2),
        };
        let history = vec![
            created(),
            added(user(bob()), &[builtin(BuiltinRole::Viewer)]),
        ];
        framework()
            .given(history.clone())
            .when(TenantCommand::RemoveMember {
                principal: user(bob()),
                granted_by: admin_perms(),
                now: at(2),
            })
            .then_expect_events(vec![removed.clone()]);
        let tenant = replay(history.into_iter().chain([removed]));
        assert!(!tenant.is_member(&user(bob())));
        assert_eq!(
            tenant.effective_permissions(&user(bob())),
            PermissionSet::EMPTY
        );
    }

    #[test]
    fn removing_a_principal_that_is_not_a_member_is_refused() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::RemoveMember {
                principal: robot(),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::NotAMember { principal: robot() });
    }

    #[test]
    fn an_admin_cannot_remove_an_owner() {
        framework()
            .given(vec![
                created(),
                added(user(bob()), &[builtin(BuiltinRole::Owner)]),
            ])
            .when(TenantCommand::RemoveMember {
                principal: user(bob()),
                granted_by: admin_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::Escalation {
                missing: owner_perms().difference(admin_perms()),
            });
    }

    #[test]
    fn the_last_owner_cannot_be_removed() {
        framework()
            .given(vec![
                created(),
                added(user(bob()), &[builtin(BuiltinRole::Admin)]),
            ])
            .when(TenantCommand::RemoveMember {
                principal: user(ada()),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::LastOwner {
                principal: user(ada()),
            });
    }

    #[test]
    fn a_second_owner_can_leave_while_another_owner_stays() {
        let history = vec![
            created(),
            added(user(bob()), &[builtin(BuiltinRole::Owner)]),
        ];
        let removed = TenantEvent::MemberRemoved {
            principal: user(ada()),
            removed_at: at(2),
        };
        framework()
            .given(history.clone())
            .when(TenantCommand::RemoveMember {
                principal: user(ada()),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_events(vec![removed.clone()]);
        let tenant = replay(history.into_iter().chain([removed]));
        assert_eq!(tenant.owners(), BTreeSet::from([bob()]));
        // Bob is now the last owner.
        framework()
            .given(vec![
                created(),
                added(user(bob()), &[builtin(BuiltinRole::Owner)]),
                TenantEvent::MemberRemoved {
                    principal: user(ada()),
                    removed_at: at(2),
                },
            ])
            .when(TenantCommand::RemoveMember {
                principal: user(bob()),
                granted_by: owner_perms(),
                now: at(3),
            })
            .then_expect_error(TenantError::LastOwner {
                principal: user(bob()),
            });
    }

    #[test]
    fn a_service_account_owner_does_not_count_as_the_last_owner() {
        let history = vec![created(), added(robot(), &[builtin(BuiltinRole::Owner)])];
        let tenant = replay(history.clone());
        assert_eq!(tenant.owners(), BTreeSet::from([ada()]));
        framework()
            .given(history.clone())
            .when(TenantCommand::RemoveMember {
                principal: user(ada()),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::LastOwner {
                principal: user(ada()),
            });
        framework()
            .given(history.clone())
            .when(TenantCommand::UnassignRole {
                principal: user(ada()),
                role: builtin(BuiltinRole::Owner),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::LastOwner {
                principal: user(ada()),
            });
        // The service account owner itself can always go.
        framework()
            .given(history)
            .when(TenantCommand::RemoveMember {
                principal: robot(),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_events(vec![TenantEvent::MemberRemoved {
                principal: robot(),
                removed_at: at(2),
            }]);
    }

    // --- AssignRole -----------------------------------------------------------------------

    #[test]
    fn assigning_a_role_adds_it_to_the_members_roles() {
        let history = vec![
            created(),
            support_defined(),
            added(user(bob()), &[builtin(BuiltinRole::Viewer)]),
        ];
        let assigned = TenantEvent::RoleAssigned {
            principal: user(bob()),
            role: custom("support"),
            assigned_at: at(2),
        };
        framework()
            .given(history.clone())
            .when(TenantCommand::AssignRole {
                principal: user(bob()),
                role: custom("support"),
                granted_by: support_perms(),
                now: at(2),
            })
            .then_expect_events(vec![assigned.clone()]);
        let tenant = replay(history.into_iter().chain([assigned]));
        assert_eq!(
            tenant.roles_of(&user(bob())),
            Some(&roles(&[builtin(BuiltinRole::Viewer), custom("support")]))
        );
    }

    #[test]
    fn assigning_a_role_to_a_principal_that_is_not_a_member_is_refused() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::AssignRole {
                principal: user(bob()),
                role: builtin(BuiltinRole::Viewer),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::NotAMember {
                principal: user(bob()),
            });
    }

    #[test]
    fn assigning_an_unknown_custom_role_is_refused() {
        framework()
            .given(vec![
                created(),
                added(user(bob()), &[builtin(BuiltinRole::Viewer)]),
            ])
            .when(TenantCommand::AssignRole {
                principal: user(bob()),
                role: custom("ghost"),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::UnknownRole {
                role: custom("ghost"),
            });
    }

    #[test]
    fn assigning_a_role_the_member_already_holds_is_refused() {
        framework()
            .given(vec![
                created(),
                added(user(bob()), &[builtin(BuiltinRole::Viewer)]),
            ])
            .when(TenantCommand::AssignRole {
                principal: user(bob()),
                role: builtin(BuiltinRole::Viewer),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::RoleAlreadyHeld {
                principal: user(bob()),
                role: builtin(BuiltinRole::Viewer),
            });
    }

    // --- UnassignRole ---------------------------------------------------------------------

    #[test]
    fn unassigning_a_role_takes_it_from_the_member() {
        let history = vec![
            created(),
            added(
                user(bob()),
                &[builtin(BuiltinRole::Viewer), builtin(BuiltinRole::Operator)],
            ),
        ];
        let unassigned = TenantEvent::RoleUnassigned {
            principal: user(bob()),
            role: builtin(BuiltinRole::Operator),
            unassigned_at: at(2),
        };
        framework()
            .given(history.clone())
            .when(TenantCommand::UnassignRole {
                principal: user(bob()),
                role: builtin(BuiltinRole::Operator),
                granted_by: admin_perms(),
                now: at(2),
            })
            .then_expect_events(vec![unassigned.clone()]);
        let tenant = replay(history.into_iter().chain([unassigned]));
        assert_eq!(
            tenant.roles_of(&user(bob())),
            Some(&roles(&[builtin(BuiltinRole::Viewer)]))
        );
    }

    #[test]
    fn unassigning_from_a_principal_that_is_not_a_member_is_refused() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::UnassignRole {
                principal: robot(),
                role: builtin(BuiltinRole::Viewer),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::NotAMember { principal: robot() });
    }

    #[test]
    fn unassigning_a_role_the_member_does_not_hold_is_refused() {
        framework()
            .given(vec![
                created(),
                added(user(bob()), &[builtin(BuiltinRole::Viewer)]),
            ])
            .when(TenantCommand::UnassignRole {
                principal: user(bob()),
                role: builtin(BuiltinRole::Auditor),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::RoleNotHeld {
                principal: user(bob()),
                role: builtin(BuiltinRole::Auditor),
            });
    }

    #[test]
    fn an_admin_cannot_demote_an_owner() {
        framework()
            .given(vec![
                created(),
                added(
                    user(bob()),
                    &[builtin(BuiltinRole::Owner), builtin(BuiltinRole::Member)],
                ),
            ])
            .when(TenantCommand::UnassignRole {
                principal: user(bob()),
                role: builtin(BuiltinRole::Owner),
                granted_by: admin_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::Escalation {
                missing: owner_perms().difference(admin_perms()),
            });
    }

    #[test]
    fn the_last_owner_cannot_be_demoted() {
        framework()
            .given(vec![
                created(),
                TenantEvent::RoleAssigned {
                    principal: user(ada()),
                    role: builtin(BuiltinRole::Member),
                    assigned_at: at(1),
                },
            ])
            .when(TenantCommand::UnassignRole {
                principal: user(ada()),
                role: builtin(BuiltinRole::Owner),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::LastOwner {
                principal: user(ada()),
            });
        // With the owner role as the only role, the last-owner rule is what is reported.
        framework()
            .given(vec![created()])
            .when(TenantCommand::UnassignRole {
                principal: user(ada()),
                role: builtin(BuiltinRole::Owner),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::LastOwner {
                principal: user(ada()),
            });
    }

    #[test]
    fn an_owner_can_be_demoted_while_another_user_owner_stays() {
        framework()
            .given(vec![
                created(),
                added(
                    user(bob()),
                    &[builtin(BuiltinRole::Owner), builtin(BuiltinRole::Admin)],
                ),
            ])
            .when(TenantCommand::UnassignRole {
                principal: user(bob()),
                role: builtin(BuiltinRole::Owner),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_events(vec![TenantEvent::RoleUnassigned {
                principal: user(bob()),
                role: builtin(BuiltinRole::Owner),
                unassigned_at: at(2),
            }]);
    }

    #[test]
    fn unassigning_a_members_only_role_is_refused() {
        framework()
            .given(vec![
                created(),
                added(user(bob()), &[builtin(BuiltinRole::Viewer)]),
            ])
            .when(TenantCommand::UnassignRole {
                principal: user(bob()),
                role: builtin(BuiltinRole::Viewer),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::NoRoleLeft {
                principal: user(bob()),
                role: builtin(BuiltinRole::Viewer),
            });
    }

    // --- DefineRole, RedefineRole, DeleteRole ------------------------------------------------

    #[test]
    fn defining_a_custom_role_records_its_permissions() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::DefineRole {
                name: support(),
                permissions: support_perms(),
                granted_by: admin_perms(),
                now: at(1),
            })
            .then_expect_events(vec![support_defined()]);
        let tenant = replay([created(), support_defined()]);
        assert_eq!(
            tenant.custom_roles(),
            &BTreeMap::from([(support(), support_perms())])
        );
        assert_eq!(
            tenant.role_permissions(&custom("support")),
            Some(support_perms())
        );
        assert_eq!(tenant.role_permissions(&custom("ghost")), None);
        assert_eq!(
            tenant.role_permissions(&builtin(BuiltinRole::Auditor)),
            Some(BuiltinRole::Auditor.permissions())
        );
    }

    #[test]
    fn defining_a_role_that_exists_is_refused() {
        framework()
            .given(vec![created(), support_defined()])
            .when(TenantCommand::DefineRole {
                name: support(),
                permissions: perms(&[P::UsersRead]),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::RoleExists { name: support() });
    }

    #[test]
    fn defining_a_role_without_permissions_is_refused() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::DefineRole {
                name: support(),
                permissions: PermissionSet::EMPTY,
                granted_by: owner_perms(),
                now: at(1),
            })
            .then_expect_error(TenantError::NoPermissions);
    }

    #[test]
    fn a_custom_role_cannot_exceed_its_definers_permissions() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::DefineRole {
                name: support(),
                permissions: perms(&[P::UsersRead, P::TenantsClose, P::PrivacyForget]),
                granted_by: admin_perms(),
                now: at(1),
            })
            .then_expect_error(TenantError::Escalation {
                missing: perms(&[P::TenantsClose, P::PrivacyForget]),
            });
    }

    #[test]
    fn redefining_a_role_records_the_previous_permissions() {
        let redefined = TenantEvent::RoleRedefined {
            name: support(),
            permissions: perms(&[P::UsersRead]),
            previous: support_perms(),
            redefined_at: at(2),
        };
        framework()
            .given(vec![created(), support_defined()])
            .when(TenantCommand::RedefineRole {
                name: support(),
                permissions: perms(&[P::UsersRead]),
                granted_by: admin_perms(),
                now: at(2),
            })
            .then_expect_events(vec![redefined.clone()]);
        let tenant = replay([created(), support_defined(), redefined]);
        assert_eq!(
            tenant.role_permissions(&custom("support")),
            Some(perms(&[P::UsersRead]))
        );
    }

    #[test]
    fn redefining_an_unknown_role_is_refused() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::RedefineRole {
                name: support(),
                permissions: perms(&[P::UsersRead]),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::UnknownRole {
                role: custom("support"),
            });
    }

    #[test]
    fn redefining_a_role_with_its_current_permissions_is_refused() {
        framework()
            .given(vec![created(), support_defined()])
            .when(TenantCommand::RedefineRole {
                name: support(),
                permissions: support_perms(),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::SamePermissions { name: support() });
    }

    #[test]
    fn redefining_a_role_without_permissions_is_refused() {
        framework()
            .given(vec![created(), support_defined()])
            .when(TenantCommand::RedefineRole {
                name: support(),
                permissions: PermissionSet::EMPTY,
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::NoPermissions);
    }

    #[test]
    fn redefining_a_role_needs_both_its_old_and_its_new_permissions() {
        let wide = TenantEvent::RoleDefined {
            name: support(),
            permissions: perms(&[P::UsersRead, P::BillingManage]),
            defined_at: at(1),
        };
        // Narrowing a role one cannot hold is taking away what one does not hold.
        framework()
            .given(vec![created(), wide])
            .when(TenantCommand::RedefineRole {
                name: support(),
                permissions: perms(&[P::UsersRead]),
                granted_by: admin_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::Escalation {
                missing: perms(&[P::BillingManage]),
            });
        framework()
            .given(vec![created(), support_defined()])
            .when(TenantCommand::RedefineRole {
                name: support(),
                permissions: perms(&[P::UsersRead, P::TenantsSuspend]),
                granted_by: admin_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::Escalation {
                missing: perms(&[P::TenantsSuspend]),
            });
    }

    #[test]
    fn deleting_an_unused_role_removes_it() {
        let deleted = TenantEvent::RoleDeleted {
            name: support(),
            deleted_at: at(2),
        };
        framework()
            .given(vec![created(), support_defined()])
            .when(TenantCommand::DeleteRole {
                name: support(),
                granted_by: support_perms(),
                now: at(2),
            })
            .then_expect_events(vec![deleted.clone()]);
        assert!(
            replay([created(), support_defined(), deleted])
                .custom_roles()
                .is_empty()
        );
    }

    #[test]
    fn deleting_an_unknown_role_is_refused() {
        framework()
            .given(vec![created()])
            .when(TenantCommand::DeleteRole {
                name: support(),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::UnknownRole {
                role: custom("support"),
            });
    }

    #[test]
    fn deleting_a_role_beyond_the_deleters_permissions_is_refused() {
        framework()
            .given(vec![created(), support_defined()])
            .when(TenantCommand::DeleteRole {
                name: support(),
                granted_by: BuiltinRole::Member.permissions(),
                now: at(2),
            })
            .then_expect_error(TenantError::Escalation {
                missing: perms(&[P::SessionsRevoke]),
            });
    }

    #[test]
    fn a_role_in_use_cannot_be_deleted() {
        framework()
            .given(vec![
                created(),
                support_defined(),
                added(user(bob()), &[custom("support")]),
                added(robot(), &[custom("support"), builtin(BuiltinRole::Viewer)]),
            ])
            .when(TenantCommand::DeleteRole {
                name: support(),
                granted_by: owner_perms(),
                now: at(2),
            })
            .then_expect_error(TenantError::RoleInUse {
                name: support(),
                holders: 2,
            });
    }

    // --- Refusals, events and serialization ---------------------------------------------------

    #[test]
    fn every_refusal_has_a_stable_reason_and_kind() {
        let cases = [
            (
                TenantError::AlreadyExists {
                    tenant_id: tenant_id(),
                },
                RefusalKind::Conflict,
                "already_exists",
            ),
            (TenantError::NotFound, RefusalKind::NotFound, "not_found"),
            (
                TenantError::Closed {
                    tenant_id: tenant_id(),
                },
                RefusalKind::Conflict,
                "closed",
            ),
            (
                TenantError::Suspended {
                    tenant_id: tenant_id(),
                },
                RefusalKind::Conflict,
                "suspended",
            ),
            (
                TenantError::SameName { name: acme() },
                RefusalKind::BadInput,
                "same_name",
            ),
            (
                TenantError::UnknownRole {
                    role: custom("ghost"),
                },
                RefusalKind::NotFound,
                "unknown_role",
            ),
            (
                TenantError::LastOwner {
                    principal: user(ada()),
                },
                RefusalKind::Conflict,
                "last_owner",
            ),
            (
                TenantError::NoRoleLeft {
                    principal: user(bob()),
                    role: builtin(BuiltinRole::Viewer),
                },
                RefusalKind::BadInput,
                "no_role_left",
            ),
            (
                TenantError::RoleInUse {
                    name: support(),
                    holders: 1,
                },
                RefusalKind::Conflict,
                "role_in_use",
            ),
        ];
        for (err, kind, reason) in cases {
            assert_eq!(err.kind(), kind, "{err}");
            assert_eq!(err.reason(), reason, "{err}");
        }
        assert_eq!(
            TenantError::Closed {
                tenant_id: tenant_id()
            }
            .to_string(),
            format!("tenant {} is closed; it accepts no changes", tenant_id())
        );
    }

    #[test]
    fn event_types_are_the_variant_names_at_version_one() {
        let event = added(robot(), &[builtin(BuiltinRole::Operator)]);
        assert_eq!(event.event_type(), "MemberAdded");
        assert_eq!(event.event_version(), "1");
        assert_eq!(created().event_type(), "TenantCreated");
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "MemberAdded": {
                    "principal": robot().to_string(),
                    "roles": ["operator"],
                    "added_at": "2026-03-01T09:01:00Z",
                }
            })
        );
    }

    #[test]
    fn a_tenant_survives_a_json_round_trip() {
        let tenant = replay([
            created(),
            support_defined(),
            added(
                user(bob()),
                &[custom("support"), builtin(BuiltinRole::Viewer)],
            ),
            added(robot(), &[builtin(BuiltinRole::Owner)]),
            suspended(),
        ]);
        let json = serde_json::to_value(&tenant).unwrap();
        assert_eq!(
            json["members"][user(bob()).to_string()],
            serde_json::json!(["viewer", "support"])
        );
        assert_eq!(
            json["custom_roles"]["support"],
            serde_json::json!(["sessions:revoke", "users:read"])
        );
        assert_eq!(json["status"], "suspended");
        let back: Tenant = serde_json::from_value(json).unwrap();
        assert_eq!(back, tenant);
    }

    #[test]
    fn role_refs_order_built_in_roles_first_then_custom_roles_by_name() {
        let mut sorted = vec![
            custom("b-team"),
            builtin(BuiltinRole::Viewer),
            custom("a-team"),
            builtin(BuiltinRole::Owner),
        ];
        sorted.sort();
        assert_eq!(
            sorted,
            [
                builtin(BuiltinRole::Owner),
                builtin(BuiltinRole::Viewer),
                custom("a-team"),
                custom("b-team"),
            ]
        );
    }

    // --- Properties ---------------------------------------------------------------------------

    thread_local! {
        static RUNTIME: RefCell<tokio::runtime::Runtime> = RefCell::new(
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a current-thread runtime"),
        );
    }

    /// Handles `command` on `tenant` through `Aggregate::handle`, returning its events.
    fn handle(
        tenant: &mut Tenant,
        command: TenantCommand,
    ) -> Result<Vec<TenantEvent>, TenantError> {
        RUNTIME.with(|runtime| {
            let runtime = runtime.borrow();
            let sink = EventSink::default();
            runtime.block_on(tenant.handle(command, &(), &sink))?;
            Ok(runtime.block_on(sink.collect()))
        })
    }

    const PRINCIPALS: usize = 3;
    const ROLES: usize = 5;
    const GRANTS: usize = 3;
    const PERMISSION_SETS: usize = 3;

    fn principal_at(i: usize) -> Principal {
        [user(ada()), user(bob()), robot()][i % PRINCIPALS]
    }

    fn role_at(i: usize) -> RoleRef {
        [
            builtin(BuiltinRole::Owner),
            builtin(BuiltinRole::Admin),
            builtin(BuiltinRole::Viewer),
            custom("support"),
            custom("tier-2"),
        ][i % ROLES]
            .clone()
    }

    fn custom_name_at(i: usize) -> RoleName {
        RoleName::parse(["support", "tier-2"][i % 2]).unwrap()
    }

    fn grant_at(i: usize) -> PermissionSet {
        [
            owner_perms(),
            admin_perms(),
            BuiltinRole::Member.permissions(),
        ][i % GRANTS]
    }

    fn permission_set_at(i: usize) -> PermissionSet {
        [
            perms(&[P::UsersRead]),
            perms(&[P::UsersRead, P::TenantsClose]),
            admin_perms(),
        ][i % PERMISSION_SETS]
    }

    /// A command from a small alphabet: `kind` picks the command, the other numbers its
    /// principal, role(s), `granted_by` and permission set.
    fn command_at(
        kind: u8,
        principal: usize,
        role: usize,
        grant: usize,
        set: usize,
        step: usize,
    ) -> TenantCommand {
        let now = at(i64::try_from(step).unwrap());
        let principal = principal_at(principal);
        let granted_by = grant_at(grant);
        match kind {
            0 => TenantCommand::Create {
                tenant_id: tenant_id(),
                name: acme(),
                plan: free(),
                owner: ada(),
                now,
            },
            1 => TenantCommand::Rename {
                name: TenantName::parse(["Acme", "Acme Ltd"][set % 2]).unwrap(),
                now,
            },
            2 => TenantCommand::ChangePlan {
                plan: [free(), team()][set % 2].clone(),
                now,
            },
            3 => TenantCommand::Suspend {
                reason: ["", " audit "][set % 2].to_owned(),
                now,
            },
            4 => TenantCommand::Reactivate { now },
            5 => TenantCommand::Close {
                reason: "closing".to_owned(),
                now,
            },
            6 => TenantCommand::AddMember {
                principal,
                roles: (0..=set).map(|i| role_at(role + i)).collect(),
                granted_by,
                now,
            },
            7 => TenantCommand::RemoveMember {
                principal,
                granted_by,
                now,
            },
            8 => TenantCommand::AssignRole {
                principal,
                role: role_at(role),
                granted_by,
                now,
            },
            9 => TenantCommand::UnassignRole {
                principal,
                role: role_at(role),
                granted_by,
                now,
            },
            10 => TenantCommand::DefineRole {
                name: custom_name_at(role),
                permissions: permission_set_at(set),
                granted_by,
                now,
            },
            11 => TenantCommand::RedefineRole {
                name: custom_name_at(role),
                permissions: permission_set_at(set),
                granted_by,
                now,
            },
            _ => TenantCommand::DeleteRole {
                name: custom_name_at(role),
                granted_by,
                now,
            },
        }
    }

    type Step = (u8, usize, usize, usize, usize);

    fn steps(kinds: std::ops::Range<u8>) -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            (
                kinds,
                0..PRINCIPALS,
                0..ROLES,
                0..GRANTS,
                0..PERMISSION_SETS,
            ),
            0..40,
        )
    }

    proptest! {
        /// Handling commands one by one and replaying the accepted events (through their
        /// JSON form) on a fresh tenant give the same tenant; a refusal changes nothing.
        #[test]
        fn replaying_the_accepted_events_rebuilds_the_same_tenant(
            create_first in any::<bool>(),
            steps in steps(0..13),
        ) {
            let mut tenant = Tenant::default();
            let mut accepted = Vec::new();
            let first = create_first.then_some((0, 0, 0, 0, 0));
            for (step, (kind, principal, role, grant, set)) in
                first.into_iter().chain(steps).enumerate()
            {
                let before = tenant.clone();
                match handle(&mut tenant, command_at(kind, principal, role, grant, set, step)) {
                    Ok(events) => {
                        prop_assert_eq!(events.len(), 1);
                        accepted.extend(events);
                    }
                    Err(_) => prop_assert_eq!(&tenant, &before),
                }
            }
            let stored: Vec<TenantEvent> = accepted
                .iter()
                .map(|event| {
                    serde_json::from_value(serde_json::to_value(event).unwrap()).unwrap()
                })
                .collect();
            prop_assert_eq!(&stored, &accepted);
            prop_assert_eq!(&replay(stored), &tenant);
            let back: Tenant =
                serde_json::from_value(serde_json::to_value(&tenant).unwrap()).unwrap();
            prop_assert_eq!(back, tenant);
        }

        /// Whatever role commands an owner sends, a created tenant always keeps a user
        /// owner, and every member keeps at least one defined role.
        #[test]
        fn role_commands_never_leave_a_tenant_without_a_user_owner(steps in steps(6..13)) {
            let mut tenant = replay([created()]);
            for (step, (kind, principal, role, _, set)) in steps.into_iter().enumerate() {
                let command = command_at(kind, principal, role, 0, set, step + 1);
                let _ = handle(&mut tenant, command);
                prop_assert!(!tenant.owners().is_empty());
                for roles in tenant.members().values() {
                    prop_assert!(!roles.is_empty());
                    for role in roles {
                        prop_assert!(tenant.role_permissions(role).is_some());
                    }
                }
            }
        }
    }
}
