//! The identity read model, `rm_identity`: tenants, users, memberships with their roles,
//! custom roles, effective permissions, sessions, API keys and service accounts, as tables
//! that the gateway can query directly (docs/read-models.md lists their columns).
//!
//! The model follows the events of five aggregates (`Tenant`, `User`, `Session`, `ApiKey`,
//! `ServiceAccount`); email claims and idempotency records are passed over. It copies what
//! the events carry and never more: no password hash, token hash, client-secret hash, TOTP
//! secret or recovery code reaches a table, and personal fields stay sealed exactly as the
//! events hold them. This module never opens them.
//!
//! The key decision: every row belongs to exactly one aggregate (a tenant's members, custom
//! roles and effective permissions belong to the tenant), and the aggregate's main row keeps
//! `last_position`, the log position of the last of its events applied. An event at or below
//! that position is passed over, so applying an event twice changes nothing, even outside
//! the runner's checkpoint. An event whose payload does not decode, an event type the model
//! does not know, and an event that contradicts the model (an update of a row that was never
//! created) are errors naming the event's position: a poison event parks the model, it is
//! never skipped silently.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use domain::identity::api_key::ApiKeyEvent;
use domain::identity::principal::Principal;
use domain::identity::rbac::{self, BuiltinRole, Permission, PermissionSet, RoleRef};
use domain::identity::service_account::ServiceAccountEvent;
use domain::identity::session::{EndReason, RevocationReason, SessionEvent};
use domain::identity::tenant::TenantEvent;
use domain::identity::user::UserEvent;
use domain::personal::PersonalData;
use eventstore::RecordedEvent;
use serde::de::DeserializeOwned;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::pg::{ApplyError, PgProjection};

/// The identity read model. See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityModel;

/// The aggregate types whose events the model reads, as the domain names them
/// (`Aggregate::TYPE` of `Tenant`, `User`, `Session`, `ApiKey` and `ServiceAccount`).
pub const AGGREGATE_TYPES: [&str; 5] = ["Tenant", "User", "Session", "ApiKey", "ServiceAccount"];

/// The only event version the model reads. Another version is an error until the model learns it.
const EVENT_VERSION: &str = "1";

/// The tables, created in the model's own schema (unqualified names).
const SCHEMA: &str = r#"
CREATE TABLE tenants (
    tenant_id         uuid PRIMARY KEY,
    name              text NOT NULL,
    plan              text NOT NULL,
    status            text NOT NULL CHECK (status IN ('active', 'suspended', 'closed')),
    status_reason     text,
    status_changed_at timestamptz,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    last_position     bigint NOT NULL
);

CREATE TABLE memberships (
    tenant_id      uuid NOT NULL,
    principal      text NOT NULL,
    principal_kind text NOT NULL CHECK (principal_kind IN ('user', 'service_account')),
    principal_id   uuid NOT NULL,
    roles          text[] NOT NULL,
    added_at       timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, principal)
);
CREATE INDEX memberships_by_principal ON memberships (principal_id);

CREATE TABLE custom_roles (
    tenant_id     uuid NOT NULL,
    name          text NOT NULL,
    permissions   text[] NOT NULL,
    defined_at    timestamptz NOT NULL,
    redefined_at  timestamptz,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE effective_permissions (
    tenant_id   uuid NOT NULL,
    principal   text NOT NULL,
    permissions text[] NOT NULL,
    PRIMARY KEY (tenant_id, principal)
);

CREATE TABLE users (
    user_id               uuid PRIMARY KEY,
    tenant_id             uuid NOT NULL,
    status                text NOT NULL CHECK (status IN ('invited', 'active', 'deactivated')),
    email_sealed          text NOT NULL,
    email_index           text NOT NULL,
    email_verified        boolean NOT NULL,
    name_sealed           text,
    invited_by            uuid,
    invitation_expires_at timestamptz,
    mfa_enabled           boolean NOT NULL,
    recovery_codes_left   integer NOT NULL,
    failed_logins         integer NOT NULL,
    lockouts              integer NOT NULL,
    locked_until          timestamptz,
    last_login_at         timestamptz,
    password_changed_at   timestamptz,
    sessions_valid_after  timestamptz,
    created_at            timestamptz NOT NULL,
    activated_at          timestamptz,
    deactivated_at        timestamptz,
    updated_at            timestamptz NOT NULL,
    last_position         bigint NOT NULL
);
CREATE INDEX users_by_email ON users (tenant_id, email_index);

CREATE TABLE sessions (
    session_id        uuid PRIMARY KEY,
    user_id           uuid NOT NULL,
    tenant_id         uuid NOT NULL,
    status            text NOT NULL CHECK (status IN ('active', 'revoked', 'ended', 'expired')),
    revoke_reason     text,
    mfa               boolean NOT NULL,
    generation        bigint NOT NULL,
    opened_at         timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    last_refreshed_at timestamptz,
    reuse_detected_at timestamptz,
    ended_at          timestamptz,
    updated_at        timestamptz NOT NULL,
    last_position     bigint NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);
CREATE INDEX sessions_by_tenant ON sessions (tenant_id);

CREATE TABLE api_keys (
    key_id         uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL,
    owner          text NOT NULL,
    name           text NOT NULL,
    display_prefix text NOT NULL,
    scopes         text[] NOT NULL,
    expires_at     timestamptz,
    revoked_at     timestamptz,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    last_position  bigint NOT NULL
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id);

CREATE TABLE service_accounts (
    account_id        uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL,
    name              text NOT NULL,
    enabled           boolean NOT NULL,
    created_by        text NOT NULL,
    created_at        timestamptz NOT NULL,
    active_secret_ids uuid[] NOT NULL,
    updated_at        timestamptz NOT NULL,
    last_position     bigint NOT NULL
);
CREATE INDEX service_accounts_by_tenant ON service_accounts (tenant_id);
"#;

impl PgProjection for IdentityModel {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn version(&self) -> i32 {
        1
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        AGGREGATE_TYPES.contains(&event.aggregate_type.as_str())
    }

    fn schema_sql(&self) -> &'static str {
        SCHEMA
    }

    #[tracing::instrument(name = "identity_model_apply", skip_all, fields(events = events.len()))]
    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ApplyError> {
        for event in events {
            apply_event(conn, event)
                .await
                .map_err(|problem| ApplyError::of(event, problem))?;
        }
        Ok(())
    }
}

/// Why one event could not be applied.
#[derive(Debug, thiserror::Error)]
enum Problem {
    /// The payload is not an event of the aggregate's event enum.
    #[error("the payload does not decode as a {aggregate} event: {source}")]
    Decode {
        aggregate: &'static str,
        source: serde_json::Error,
    },
    /// PostgreSQL failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The event contradicts the model or the rest of the event.
    #[error("{0}")]
    Inconsistent(String),
}

type Step = Result<(), Problem>;

/// The id of an identity event's aggregate, once the event's version is one the identity
/// models read.
pub(crate) fn aggregate_uuid(event: &RecordedEvent) -> Result<Uuid, String> {
    if event.event_version != EVENT_VERSION {
        return Err(format!(
            "event version {} is unknown to the model (it reads version {EVENT_VERSION})",
            event.event_version
        ));
    }
    Uuid::parse_str(&event.aggregate_id)
        .map_err(|_| format!("aggregate id `{}` is not a UUID", event.aggregate_id))
}

async fn apply_event(conn: &mut PgConnection, event: &RecordedEvent) -> Step {
    let id = aggregate_uuid(event).map_err(Problem::Inconsistent)?;
    match event.aggregate_type.as_str() {
        "Tenant" => tenant(conn, event, id).await,
        "User" => user(conn, event, id).await,
        "Session" => session(conn, event, id).await,
        "ApiKey" => api_key(conn, event, id).await,
        "ServiceAccount" => service_account(conn, event, id).await,
        other => Err(Problem::Inconsistent(format!(
            "aggregate type `{other}` is not read by this model"
        ))),
    }
}

/// The event's payload as the domain's event enum.
fn decode<T: DeserializeOwned>(
    event: &RecordedEvent,
    aggregate: &'static str,
) -> Result<T, Problem> {
    T::deserialize(&event.payload).map_err(|source| Problem::Decode { aggregate, source })
}

/// Whether an event is new to the model, given the `last_position` of its aggregate's row
/// (`None`: no row yet). A creation with no row, or any other event after the row's last
/// one, is new; an event at or below it was applied already. A creation over an existing
/// row, or a change of a row that was never created, contradicts the model.
fn is_new(what: &str, creates: bool, last: Option<i64>, position: i64) -> Result<bool, Problem> {
    match (creates, last) {
        (_, Some(last)) if last >= position => Ok(false),
        (true, None) | (false, Some(_)) => Ok(true),
        (true, Some(last)) => Err(Problem::Inconsistent(format!(
            "the {what} was already created (its last event is at position {last})"
        ))),
        (false, None) => Err(Problem::Inconsistent(format!(
            "no {what} with this id was created before this event"
        ))),
    }
}

/// Refuses a creation event whose own id differs from its aggregate's id.
fn same_id(what: &str, in_payload: Uuid, aggregate: Uuid) -> Step {
    if in_payload == aggregate {
        Ok(())
    } else {
        Err(Problem::Inconsistent(format!(
            "the payload names {what} {in_payload}, not the aggregate's id"
        )))
    }
}

/// Refuses a change that touched no row, or more than one.
fn one_row(rows: u64, what: impl FnOnce() -> String) -> Step {
    match rows {
        1 => Ok(()),
        n => Err(Problem::Inconsistent(format!(
            "{} (it matched {n} rows, not one)",
            what()
        ))),
    }
}

/// A personal field exactly as the event holds it: the JSON of its subject and sealed text.
fn sealed(field: &PersonalData) -> Result<String, Problem> {
    serde_json::to_string(field)
        .map_err(|err| Problem::Inconsistent(format!("a sealed field does not encode: {err}")))
}

/// Names sorted by byte, without duplicates, as stored in `text[]` columns.
fn sorted<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    names
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// The strings of a permission set, sorted.
pub(crate) fn permission_strings(set: PermissionSet) -> Vec<String> {
    sorted(set.iter().map(Permission::as_str))
}

fn kind_of(principal: &Principal) -> (&'static str, Uuid) {
    match principal {
        Principal::User(id) => ("user", id.as_uuid()),
        Principal::ServiceAccount(id) => ("service_account", id.as_uuid()),
    }
}

fn to_i32(value: impl TryInto<i32>, what: &str) -> Result<i32, Problem> {
    value
        .try_into()
        .map_err(|_| Problem::Inconsistent(format!("{what} does not fit the model's integer")))
}

fn to_i64(value: u64, what: &str) -> Result<i64, Problem> {
    i64::try_from(value)
        .map_err(|_| Problem::Inconsistent(format!("{what} does not fit the model's integer")))
}

// ---------------------------------------------------------------------------------------
// Tenants: the tenants row, memberships, custom roles and effective permissions.

async fn tenant(conn: &mut PgConnection, event: &RecordedEvent, id: Uuid) -> Step {
    let change: TenantEvent = decode(event, "Tenant")?;
    let last: Option<i64> =
        sqlx::query_scalar("SELECT last_position FROM tenants WHERE tenant_id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let creates = matches!(change, TenantEvent::TenantCreated { .. });
    if !is_new("tenant", creates, last, event.global_position)? {
        return Ok(());
    }
    let mut roles_changed = true;
    match change {
        TenantEvent::TenantCreated {
            tenant_id,
            name,
            plan,
            owner,
            created_at,
        } => {
            same_id("tenant", tenant_id.as_uuid(), id)?;
            sqlx::query(
                "INSERT INTO tenants (tenant_id, name, plan, status, created_at, updated_at,
                                      last_position)
                 VALUES ($1, $2, $3, 'active', $4, $5, $6)",
            )
            .bind(id)
            .bind(name.as_str())
            .bind(plan.as_str())
            .bind(created_at)
            .bind(event.recorded_at)
            .bind(event.global_position)
            .execute(&mut *conn)
            .await?;
            add_member(
                conn,
                id,
                &Principal::User(owner),
                sorted([BuiltinRole::Owner.as_str()]),
                created_at,
            )
            .await?;
        }
        TenantEvent::TenantRenamed {
            name,
            renamed_at: _,
        } => {
            roles_changed = false;
            sqlx::query("UPDATE tenants SET name = $2 WHERE tenant_id = $1")
                .bind(id)
                .bind(name.as_str())
                .execute(&mut *conn)
                .await?;
        }
        TenantEvent::PlanChanged {
            plan,
            previous: _,
            changed_at: _,
        } => {
            roles_changed = false;
            sqlx::query("UPDATE tenants SET plan = $2 WHERE tenant_id = $1")
                .bind(id)
                .bind(plan.as_str())
                .execute(&mut *conn)
                .await?;
        }
        TenantEvent::TenantSuspended {
            reason,
            suspended_at,
        } => {
            roles_changed = false;
            set_status(conn, id, "suspended", Some(&reason), suspended_at).await?;
        }
        TenantEvent::TenantReactivated { reactivated_at } => {
            roles_changed = false;
            set_status(conn, id, "active", None, reactivated_at).await?;
        }
        TenantEvent::TenantClosed { reason, closed_at } => {
            roles_changed = false;
            set_status(conn, id, "closed", Some(&reason), closed_at).await?;
        }
        TenantEvent::MemberAdded {
            principal,
            roles,
            added_at,
        } => {
            let roles = sorted(roles.iter().map(RoleRef::as_str));
            add_member(conn, id, &principal, roles, added_at).await?;
        }
        TenantEvent::MemberRemoved {
            principal,
            removed_at: _,
        } => {
            let done =
                sqlx::query("DELETE FROM memberships WHERE tenant_id = $1 AND principal = $2")
                    .bind(id)
                    .bind(principal.to_string())
                    .execute(&mut *conn)
                    .await?;
            one_row(done.rows_affected(), || {
                format!("{principal} is not a member to remove")
            })?;
        }
        TenantEvent::RoleAssigned {
            principal,
            role,
            assigned_at: _,
        } => {
            change_roles(conn, id, &principal, |roles| {
                roles.insert(role.as_str().to_owned());
            })
            .await?;
        }
        TenantEvent::RoleUnassigned {
            principal,
            role,
            unassigned_at: _,
        } => {
            change_roles(conn, id, &principal, |roles| {
                roles.remove(role.as_str());
            })
            .await?;
        }
        TenantEvent::RoleDefined {
            name,
            permissions,
            defined_at,
        } => {
            sqlx::query(
                "INSERT INTO custom_roles (tenant_id, name, permissions, defined_at)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(name.as_str())
            .bind(permission_strings(permissions))
            .bind(defined_at)
            .execute(&mut *conn)
            .await?;
        }
        TenantEvent::RoleRedefined {
            name,
            permissions,
            previous: _,
            redefined_at,
        } => {
            let done = sqlx::query(
                "UPDATE custom_roles SET permissions = $3, redefined_at = $4
                  WHERE tenant_id = $1 AND name = $2",
            )
            .bind(id)
            .bind(name.as_str())
            .bind(permission_strings(permissions))
            .bind(redefined_at)
            .execute(&mut *conn)
            .await?;
            one_row(done.rows_affected(), || {
                format!("there is no custom role `{name}` to redefine")
            })?;
        }
        TenantEvent::RoleDeleted {
            name,
            deleted_at: _,
        } => {
            let done = sqlx::query("DELETE FROM custom_roles WHERE tenant_id = $1 AND name = $2")
                .bind(id)
                .bind(name.as_str())
                .execute(&mut *conn)
                .await?;
            one_row(done.rows_affected(), || {
                format!("there is no custom role `{name}` to delete")
            })?;
        }
    }
    sqlx::query("UPDATE tenants SET updated_at = $2, last_position = $3 WHERE tenant_id = $1")
        .bind(id)
        .bind(event.recorded_at)
        .bind(event.global_position)
        .execute(&mut *conn)
        .await?;
    if roles_changed {
        recompute_permissions(conn, id).await?;
    }
    Ok(())
}

async fn set_status(
    conn: &mut PgConnection,
    tenant: Uuid,
    status: &str,
    reason: Option<&str>,
    at: DateTime<Utc>,
) -> Step {
    sqlx::query(
        "UPDATE tenants SET status = $2, status_reason = $3, status_changed_at = $4
          WHERE tenant_id = $1",
    )
    .bind(tenant)
    .bind(status)
    .bind(reason)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn add_member(
    conn: &mut PgConnection,
    tenant: Uuid,
    principal: &Principal,
    roles: Vec<String>,
    added_at: DateTime<Utc>,
) -> Step {
    let (kind, principal_id) = kind_of(principal);
    sqlx::query(
        "INSERT INTO memberships (tenant_id, principal, principal_kind, principal_id, roles,
                                  added_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant)
    .bind(principal.to_string())
    .bind(kind)
    .bind(principal_id)
    .bind(roles)
    .bind(added_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn change_roles(
    conn: &mut PgConnection,
    tenant: Uuid,
    principal: &Principal,
    change: impl FnOnce(&mut BTreeSet<String>),
) -> Step {
    let principal = principal.to_string();
    let roles: Option<Vec<String>> =
        sqlx::query_scalar("SELECT roles FROM memberships WHERE tenant_id = $1 AND principal = $2")
            .bind(tenant)
            .bind(&principal)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(roles) = roles else {
        return Err(Problem::Inconsistent(format!(
            "{principal} is not a member of the tenant"
        )));
    };
    let mut roles: BTreeSet<String> = roles.into_iter().collect();
    change(&mut roles);
    sqlx::query("UPDATE memberships SET roles = $3 WHERE tenant_id = $1 AND principal = $2")
        .bind(tenant)
        .bind(&principal)
        .bind(roles.into_iter().collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Rewrites the effective permissions of every member of `tenant` from its memberships and
/// custom roles: the union of the permissions of each member's roles. Like the domain's
/// `Tenant::effective_permissions`, it holds whatever the roles grant, whether the tenant is
/// active or not and whether the principal can sign in or not; those are other columns.
async fn recompute_permissions(conn: &mut PgConnection, tenant: Uuid) -> Step {
    let defined: Vec<(String, Vec<String>)> =
        sqlx::query_as("SELECT name, permissions FROM custom_roles WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&mut *conn)
            .await?;
    let mut custom = BTreeMap::new();
    for (name, permissions) in defined {
        let set = permissions
            .iter()
            .map(|permission| permission.parse::<Permission>())
            .collect::<Result<PermissionSet, _>>()
            .map_err(|err| Problem::Inconsistent(format!("custom role `{name}`: {err}")))?;
        custom.insert(name, set);
    }
    let members: Vec<(String, Vec<String>)> =
        sqlx::query_as("SELECT principal, roles FROM memberships WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&mut *conn)
            .await?;
    let mut principals = Vec::with_capacity(members.len());
    let mut permissions = Vec::with_capacity(members.len());
    for (principal, roles) in members {
        let builtin = roles.iter().filter_map(|role| BuiltinRole::from_name(role));
        // A role that is neither built in nor defined grants nothing, as in the domain (whose
        // rules keep every held role defined).
        let defined = roles.iter().filter_map(|role| custom.get(role));
        let set = rbac::effective_permissions(builtin, defined);
        principals.push(principal);
        permissions.push(permission_strings(set).join(","));
    }
    sqlx::query("DELETE FROM effective_permissions WHERE tenant_id = $1")
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO effective_permissions (tenant_id, principal, permissions)
         SELECT $1, principal, string_to_array(permissions, ',')
           FROM unnest($2::text[], $3::text[]) AS member(principal, permissions)",
    )
    .bind(tenant)
    .bind(principals)
    .bind(permissions)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Users.

async fn user(conn: &mut PgConnection, event: &RecordedEvent, id: Uuid) -> Step {
    let change: UserEvent = decode(event, "User")?;
    let last: Option<i64> =
        sqlx::query_scalar("SELECT last_position FROM users WHERE user_id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let creates = matches!(
        change,
        UserEvent::UserRegistered { .. } | UserEvent::UserInvited { .. }
    );
    if !is_new("user", creates, last, event.global_position)? {
        return Ok(());
    }
    match change {
        UserEvent::UserRegistered {
            user_id,
            tenant_id,
            email,
            email_index,
            name,
            password: _,
            registered_at,
        } => {
            same_id("user", user_id.as_uuid(), id)?;
            sqlx::query(
                "INSERT INTO users (user_id, tenant_id, status, email_sealed, email_index,
                                    email_verified, name_sealed, mfa_enabled,
                                    recovery_codes_left, failed_logins, lockouts, created_at,
                                    activated_at, updated_at, last_position)
                 VALUES ($1, $2, 'active', $3, $4, false, $5, false, 0, 0, 0, $6, $6, $7, $8)",
            )
            .bind(id)
            .bind(tenant_id.as_uuid())
            .bind(sealed(&email)?)
            .bind(email_index.as_str())
            .bind(sealed(&name)?)
            .bind(registered_at)
            .bind(event.recorded_at)
            .bind(event.global_position)
            .execute(&mut *conn)
            .await?;
        }
        UserEvent::UserInvited {
            user_id,
            tenant_id,
            email,
            email_index,
            invited_by,
            invitation: _,
            expires_at,
            invited_at,
        } => {
            same_id("user", user_id.as_uuid(), id)?;
            sqlx::query(
                "INSERT INTO users (user_id, tenant_id, status, email_sealed, email_index,
                                    email_verified, invited_by, invitation_expires_at,
                                    mfa_enabled, recovery_codes_left, failed_logins, lockouts,
                                    created_at, updated_at, last_position)
                 VALUES ($1, $2, 'invited', $3, $4, false, $5, $6, false, 0, 0, 0, $7, $8, $9)",
            )
            .bind(id)
            .bind(tenant_id.as_uuid())
            .bind(sealed(&email)?)
            .bind(email_index.as_str())
            .bind(invited_by.as_uuid())
            .bind(expires_at)
            .bind(invited_at)
            .bind(event.recorded_at)
            .bind(event.global_position)
            .execute(&mut *conn)
            .await?;
        }
        UserEvent::InvitationAccepted {
            name,
            password: _,
            accepted_at,
        } => {
            sqlx::query(
                "UPDATE users SET status = 'active', name_sealed = $2, activated_at = $3,
                                  invitation_expires_at = NULL
                  WHERE user_id = $1",
            )
            .bind(id)
            .bind(sealed(&name)?)
            .bind(accepted_at)
            .execute(&mut *conn)
            .await?;
        }
        // A token's hash and expiry are for the aggregate alone.
        UserEvent::EmailVerificationIssued {
            token: _,
            expires_at: _,
        } => {}
        UserEvent::EmailVerified { verified_at: _ } => {
            sqlx::query("UPDATE users SET email_verified = true WHERE user_id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        UserEvent::EmailChanged {
            email,
            email_index,
            previous_index: _,
            changed_at: _,
        } => {
            sqlx::query(
                "UPDATE users SET email_sealed = $2, email_index = $3, email_verified = false
                  WHERE user_id = $1",
            )
            .bind(id)
            .bind(sealed(&email)?)
            .bind(email_index.as_str())
            .execute(&mut *conn)
            .await?;
        }
        UserEvent::PasswordChanged {
            password: _,
            changed_at,
        } => {
            sqlx::query(
                "UPDATE users SET password_changed_at = $2,
                                  sessions_valid_after = GREATEST(sessions_valid_after, $2)
                  WHERE user_id = $1",
            )
            .bind(id)
            .bind(changed_at)
            .execute(&mut *conn)
            .await?;
        }
        UserEvent::UserDeactivated { deactivated_at } => {
            sqlx::query(
                "UPDATE users SET status = 'deactivated', deactivated_at = $2,
                                  invitation_expires_at = NULL
                  WHERE user_id = $1",
            )
            .bind(id)
            .bind(deactivated_at)
            .execute(&mut *conn)
            .await?;
        }
        UserEvent::LoginFailed {
            at: _,
            consecutive_failures,
            while_locked,
        } => {
            // A failure while locked does not count.
            if !while_locked {
                sqlx::query("UPDATE users SET failed_logins = $2 WHERE user_id = $1")
                    .bind(id)
                    .bind(to_i32(consecutive_failures, "a failure count")?)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        UserEvent::AccountLocked { until, lockout } => {
            sqlx::query(
                "UPDATE users SET locked_until = $2, lockouts = $3, failed_logins = 0
                  WHERE user_id = $1",
            )
            .bind(id)
            .bind(until)
            .bind(to_i32(lockout, "a lockout count")?)
            .execute(&mut *conn)
            .await?;
        }
        UserEvent::LoginSucceeded {
            session_id: _,
            at,
            mfa_used: _,
        } => {
            sqlx::query(
                "UPDATE users SET failed_logins = 0, last_login_at = $2 WHERE user_id = $1",
            )
            .bind(id)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        // The sealed TOTP secret stays in the log: a pending enrollment does not turn MFA on.
        UserEvent::TotpEnrollmentStarted { secret: _ } => {}
        UserEvent::TotpConfirmed {
            step: _,
            recovery_codes,
            confirmed_at: _,
        } => {
            sqlx::query(
                "UPDATE users SET mfa_enabled = true, recovery_codes_left = $2 WHERE user_id = $1",
            )
            .bind(id)
            .bind(to_i32(recovery_codes.len(), "a number of recovery codes")?)
            .execute(&mut *conn)
            .await?;
        }
        UserEvent::TotpCodeUsed { step: _ } => {}
        // The domain accepts each recovery code once, so each use is one code fewer.
        UserEvent::RecoveryCodeUsed { code: _ } => {
            sqlx::query(
                "UPDATE users SET recovery_codes_left = GREATEST(recovery_codes_left - 1, 0)
                  WHERE user_id = $1",
            )
            .bind(id)
            .execute(&mut *conn)
            .await?;
        }
        UserEvent::MfaDisabled {
            step: _,
            disabled_at: _,
        } => {
            sqlx::query(
                "UPDATE users SET mfa_enabled = false, recovery_codes_left = 0 WHERE user_id = $1",
            )
            .bind(id)
            .execute(&mut *conn)
            .await?;
        }
        UserEvent::AllSessionsRevoked { at } => {
            sqlx::query(
                "UPDATE users SET sessions_valid_after = GREATEST(sessions_valid_after, $2)
                  WHERE user_id = $1",
            )
            .bind(id)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
    }
    sqlx::query("UPDATE users SET updated_at = $2, last_position = $3 WHERE user_id = $1")
        .bind(id)
        .bind(event.recorded_at)
        .bind(event.global_position)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sessions.

/// The stored name of a revocation reason (the domain's snake_case names).
pub(crate) fn revocation_reason(reason: RevocationReason) -> &'static str {
    match reason {
        RevocationReason::UserRequest => "user_request",
        RevocationReason::AdminRequest => "admin_request",
        RevocationReason::AllSessionsRevoked => "all_sessions_revoked",
        RevocationReason::PasswordChanged => "password_changed",
        RevocationReason::UserDeactivated => "user_deactivated",
        RevocationReason::TokenReuse => "token_reuse",
    }
}

async fn session(conn: &mut PgConnection, event: &RecordedEvent, id: Uuid) -> Step {
    let change: SessionEvent = decode(event, "Session")?;
    let last: Option<i64> =
        sqlx::query_scalar("SELECT last_position FROM sessions WHERE session_id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let creates = matches!(change, SessionEvent::SessionOpened { .. });
    if !is_new("session", creates, last, event.global_position)? {
        return Ok(());
    }
    match change {
        SessionEvent::SessionOpened {
            session_id,
            user_id,
            tenant_id,
            refresh: _,
            expires_at,
            mfa,
            opened_at,
        } => {
            same_id("session", session_id.as_uuid(), id)?;
            sqlx::query(
                "INSERT INTO sessions (session_id, user_id, tenant_id, status, mfa, generation,
                                       opened_at, expires_at, updated_at, last_position)
                 VALUES ($1, $2, $3, 'active', $4, 1, $5, $6, $7, $8)",
            )
            .bind(id)
            .bind(user_id.as_uuid())
            .bind(tenant_id.as_uuid())
            .bind(mfa)
            .bind(opened_at)
            .bind(expires_at)
            .bind(event.recorded_at)
            .bind(event.global_position)
            .execute(&mut *conn)
            .await?;
        }
        SessionEvent::RefreshTokenRotated {
            generation,
            refresh: _,
            rotated_at,
        } => {
            sqlx::query(
                "UPDATE sessions SET generation = $2, last_refreshed_at = $3 WHERE session_id = $1",
            )
            .bind(id)
            .bind(to_i64(generation, "a token generation")?)
            .bind(rotated_at)
            .execute(&mut *conn)
            .await?;
        }
        SessionEvent::RefreshTokenReused {
            presented_generation: _,
            detected_at,
        } => {
            sqlx::query("UPDATE sessions SET reuse_detected_at = $2 WHERE session_id = $1")
                .bind(id)
                .bind(detected_at)
                .execute(&mut *conn)
                .await?;
        }
        SessionEvent::SessionRevoked { reason, revoked_at } => {
            end_session(
                conn,
                id,
                "revoked",
                Some(revocation_reason(reason)),
                revoked_at,
            )
            .await?;
        }
        SessionEvent::SessionEnded {
            reason: EndReason::Logout,
            ended_at,
        } => {
            end_session(conn, id, "ended", None, ended_at).await?;
        }
        SessionEvent::SessionExpired { expired_at } => {
            end_session(conn, id, "expired", None, expired_at).await?;
        }
    }
    sqlx::query("UPDATE sessions SET updated_at = $2, last_position = $3 WHERE session_id = $1")
        .bind(id)
        .bind(event.recorded_at)
        .bind(event.global_position)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn end_session(
    conn: &mut PgConnection,
    session: Uuid,
    status: &str,
    revoke_reason: Option<&str>,
    at: DateTime<Utc>,
) -> Step {
    sqlx::query(
        "UPDATE sessions SET status = $2, revoke_reason = $3, ended_at = $4 WHERE session_id = $1",
    )
    .bind(session)
    .bind(status)
    .bind(revoke_reason)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// API keys.

async fn api_key(conn: &mut PgConnection, event: &RecordedEvent, id: Uuid) -> Step {
    let change: ApiKeyEvent = decode(event, "ApiKey")?;
    let last: Option<i64> =
        sqlx::query_scalar("SELECT last_position FROM api_keys WHERE key_id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let creates = matches!(change, ApiKeyEvent::ApiKeyCreated { .. });
    if !is_new("API key", creates, last, event.global_position)? {
        return Ok(());
    }
    match change {
        ApiKeyEvent::ApiKeyCreated {
            key_id,
            tenant_id,
            owner,
            name,
            hash: _,
            display_prefix,
            scopes,
            expires_at,
            created_at,
        } => {
            same_id("API key", key_id.as_uuid(), id)?;
            sqlx::query(
                "INSERT INTO api_keys (key_id, tenant_id, owner, name, display_prefix, scopes,
                                       expires_at, created_at, updated_at, last_position)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(id)
            .bind(tenant_id.as_uuid())
            .bind(owner.to_string())
            .bind(name)
            .bind(display_prefix)
            .bind(permission_strings(scopes))
            .bind(expires_at)
            .bind(created_at)
            .bind(event.recorded_at)
            .bind(event.global_position)
            .execute(&mut *conn)
            .await?;
        }
        ApiKeyEvent::ApiKeyRevoked { revoked_at } => {
            sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE key_id = $1")
                .bind(id)
                .bind(revoked_at)
                .execute(&mut *conn)
                .await?;
        }
    }
    sqlx::query("UPDATE api_keys SET updated_at = $2, last_position = $3 WHERE key_id = $1")
        .bind(id)
        .bind(event.recorded_at)
        .bind(event.global_position)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Service accounts.

async fn service_account(conn: &mut PgConnection, event: &RecordedEvent, id: Uuid) -> Step {
    let change: ServiceAccountEvent = decode(event, "ServiceAccount")?;
    let last: Option<i64> =
        sqlx::query_scalar("SELECT last_position FROM service_accounts WHERE account_id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let creates = matches!(change, ServiceAccountEvent::ServiceAccountCreated { .. });
    if !is_new("service account", creates, last, event.global_position)? {
        return Ok(());
    }
    match change {
        ServiceAccountEvent::ServiceAccountCreated {
            account_id,
            tenant_id,
            name,
            created_by,
            created_at,
        } => {
            same_id("service account", account_id.as_uuid(), id)?;
            sqlx::query(
                "INSERT INTO service_accounts (account_id, tenant_id, name, enabled, created_by,
                                               created_at, active_secret_ids, updated_at,
                                               last_position)
                 VALUES ($1, $2, $3, true, $4, $5, '{}', $6, $7)",
            )
            .bind(id)
            .bind(tenant_id.as_uuid())
            .bind(name)
            .bind(created_by.to_string())
            .bind(created_at)
            .bind(event.recorded_at)
            .bind(event.global_position)
            .execute(&mut *conn)
            .await?;
        }
        ServiceAccountEvent::ServiceAccountRenamed {
            name,
            renamed_at: _,
        } => {
            sqlx::query("UPDATE service_accounts SET name = $2 WHERE account_id = $1")
                .bind(id)
                .bind(name)
                .execute(&mut *conn)
                .await?;
        }
        ServiceAccountEvent::ServiceAccountDisabled { disabled_at: _ } => {
            sqlx::query("UPDATE service_accounts SET enabled = false WHERE account_id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        ServiceAccountEvent::ServiceAccountEnabled { enabled_at: _ } => {
            sqlx::query("UPDATE service_accounts SET enabled = true WHERE account_id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        ServiceAccountEvent::ClientSecretIssued {
            secret_id,
            hash: _,
            issued_at: _,
        } => {
            sqlx::query(
                "UPDATE service_accounts SET active_secret_ids = array_append(active_secret_ids, $2)
                  WHERE account_id = $1",
            )
            .bind(id)
            .bind(secret_id)
            .execute(&mut *conn)
            .await?;
        }
        ServiceAccountEvent::ClientSecretRevoked {
            secret_id,
            revoked_at: _,
        } => {
            sqlx::query(
                "UPDATE service_accounts SET active_secret_ids = array_remove(active_secret_ids, $2)
                  WHERE account_id = $1",
            )
            .bind(id)
            .bind(secret_id)
            .execute(&mut *conn)
            .await?;
        }
    }
    sqlx::query(
        "UPDATE service_accounts SET updated_at = $2, last_position = $3 WHERE account_id = $1",
    )
    .bind(id)
    .bind(event.recorded_at)
    .bind(event.global_position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_new_only_after_its_aggregates_last_one() {
        assert!(is_new("tenant", true, None, 5).unwrap());
        assert!(is_new("tenant", false, Some(4), 5).unwrap());
        assert!(!is_new("tenant", false, Some(5), 5).unwrap());
        assert!(!is_new("tenant", true, Some(9), 5).unwrap());
        assert!(is_new("tenant", true, Some(4), 5).is_err());
        assert!(is_new("tenant", false, None, 5).is_err());
    }

    #[test]
    fn stored_names_are_sorted_bytewise_without_duplicates() {
        assert_eq!(
            sorted(["support-lead", "admin", "billing-admin", "admin"]),
            ["admin", "billing-admin", "support-lead"]
        );
    }
}
