//! `TenantEvent` and its messages.

use domain::identity::tenant::TenantEvent as Domain;

use super::{
    case, from_string, parse, permission_strings, permissions, principal, principal_message,
    role_strings, roles, time, timestamp,
};
use crate::error::ConvertError;
use crate::v1::{self, tenant_event::Event};

impl From<Domain> for v1::TenantEvent {
    fn from(event: Domain) -> Self {
        let event = match event {
            Domain::TenantCreated {
                tenant_id,
                name,
                plan,
                owner,
                created_at,
            } => Event::TenantCreated(v1::TenantCreated {
                tenant_id: tenant_id.to_string(),
                name: name.into(),
                plan: plan.into(),
                owner: owner.to_string(),
                created_at: Some(timestamp(created_at)),
            }),
            Domain::TenantRenamed { name, renamed_at } => Event::TenantRenamed(v1::TenantRenamed {
                name: name.into(),
                renamed_at: Some(timestamp(renamed_at)),
            }),
            Domain::PlanChanged {
                plan,
                previous,
                changed_at,
            } => Event::PlanChanged(v1::PlanChanged {
                plan: plan.into(),
                previous: previous.into(),
                changed_at: Some(timestamp(changed_at)),
            }),
            Domain::TenantSuspended {
                reason,
                suspended_at,
            } => Event::TenantSuspended(v1::TenantSuspended {
                reason,
                suspended_at: Some(timestamp(suspended_at)),
            }),
            Domain::TenantReactivated { reactivated_at } => {
                Event::TenantReactivated(v1::TenantReactivated {
                    reactivated_at: Some(timestamp(reactivated_at)),
                })
            }
            Domain::TenantClosed { reason, closed_at } => Event::TenantClosed(v1::TenantClosed {
                reason,
                closed_at: Some(timestamp(closed_at)),
            }),
            Domain::MemberAdded {
                principal,
                roles,
                added_at,
            } => Event::MemberAdded(v1::MemberAdded {
                principal: Some(principal_message(principal)),
                roles: role_strings(&roles),
                added_at: Some(timestamp(added_at)),
            }),
            Domain::MemberRemoved {
                principal,
                removed_at,
            } => Event::MemberRemoved(v1::MemberRemoved {
                principal: Some(principal_message(principal)),
                removed_at: Some(timestamp(removed_at)),
            }),
            Domain::RoleAssigned {
                principal,
                role,
                assigned_at,
            } => Event::RoleAssigned(v1::RoleAssigned {
                principal: Some(principal_message(principal)),
                role: role.as_str().to_owned(),
                assigned_at: Some(timestamp(assigned_at)),
            }),
            Domain::RoleUnassigned {
                principal,
                role,
                unassigned_at,
            } => Event::RoleUnassigned(v1::RoleUnassigned {
                principal: Some(principal_message(principal)),
                role: role.as_str().to_owned(),
                unassigned_at: Some(timestamp(unassigned_at)),
            }),
            Domain::RoleDefined {
                name,
                permissions,
                defined_at,
            } => Event::RoleDefined(v1::RoleDefined {
                name: name.as_str().to_owned(),
                permissions: permission_strings(permissions),
                defined_at: Some(timestamp(defined_at)),
            }),
            Domain::RoleRedefined {
                name,
                permissions,
                previous,
                redefined_at,
            } => Event::RoleRedefined(v1::RoleRedefined {
                name: name.as_str().to_owned(),
                permissions: permission_strings(permissions),
                previous: permission_strings(previous),
                redefined_at: Some(timestamp(redefined_at)),
            }),
            Domain::RoleDeleted { name, deleted_at } => Event::RoleDeleted(v1::RoleDeleted {
                name: name.as_str().to_owned(),
                deleted_at: Some(timestamp(deleted_at)),
            }),
        };
        Self { event: Some(event) }
    }
}

impl TryFrom<v1::TenantEvent> for Domain {
    type Error = ConvertError;

    fn try_from(message: v1::TenantEvent) -> Result<Self, ConvertError> {
        Ok(match case("TenantEvent.event", message.event)? {
            Event::TenantCreated(m) => Self::TenantCreated {
                tenant_id: parse("TenantCreated.tenant_id", &m.tenant_id)?,
                name: from_string("TenantCreated.name", m.name)?,
                plan: from_string("TenantCreated.plan", m.plan)?,
                owner: parse("TenantCreated.owner", &m.owner)?,
                created_at: time("TenantCreated.created_at", m.created_at)?,
            },
            Event::TenantRenamed(m) => Self::TenantRenamed {
                name: from_string("TenantRenamed.name", m.name)?,
                renamed_at: time("TenantRenamed.renamed_at", m.renamed_at)?,
            },
            Event::PlanChanged(m) => Self::PlanChanged {
                plan: from_string("PlanChanged.plan", m.plan)?,
                previous: from_string("PlanChanged.previous", m.previous)?,
                changed_at: time("PlanChanged.changed_at", m.changed_at)?,
            },
            Event::TenantSuspended(m) => Self::TenantSuspended {
                reason: m.reason,
                suspended_at: time("TenantSuspended.suspended_at", m.suspended_at)?,
            },
            Event::TenantReactivated(m) => Self::TenantReactivated {
                reactivated_at: time("TenantReactivated.reactivated_at", m.reactivated_at)?,
            },
            Event::TenantClosed(m) => Self::TenantClosed {
                reason: m.reason,
                closed_at: time("TenantClosed.closed_at", m.closed_at)?,
            },
            Event::MemberAdded(m) => Self::MemberAdded {
                principal: principal("MemberAdded.principal", m.principal)?,
                roles: roles("MemberAdded.roles", &m.roles)?,
                added_at: time("MemberAdded.added_at", m.added_at)?,
            },
            Event::MemberRemoved(m) => Self::MemberRemoved {
                principal: principal("MemberRemoved.principal", m.principal)?,
                removed_at: time("MemberRemoved.removed_at", m.removed_at)?,
            },
            Event::RoleAssigned(m) => Self::RoleAssigned {
                principal: principal("RoleAssigned.principal", m.principal)?,
                role: parse("RoleAssigned.role", &m.role)?,
                assigned_at: time("RoleAssigned.assigned_at", m.assigned_at)?,
            },
            Event::RoleUnassigned(m) => Self::RoleUnassigned {
                principal: principal("RoleUnassigned.principal", m.principal)?,
                role: parse("RoleUnassigned.role", &m.role)?,
                unassigned_at: time("RoleUnassigned.unassigned_at", m.unassigned_at)?,
            },
            Event::RoleDefined(m) => Self::RoleDefined {
                name: parse("RoleDefined.name", &m.name)?,
                permissions: permissions("RoleDefined.permissions", &m.permissions)?,
                defined_at: time("RoleDefined.defined_at", m.defined_at)?,
            },
            Event::RoleRedefined(m) => Self::RoleRedefined {
                name: parse("RoleRedefined.name", &m.name)?,
                permissions: permissions("RoleRedefined.permissions", &m.permissions)?,
                previous: permissions("RoleRedefined.previous", &m.previous)?,
                redefined_at: time("RoleRedefined.redefined_at", m.redefined_at)?,
            },
            Event::RoleDeleted(m) => Self::RoleDeleted {
                name: parse("RoleDeleted.name", &m.name)?,
                deleted_at: time("RoleDeleted.deleted_at", m.deleted_at)?,
            },
        })
    }
}
