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
//!
//! A batch costs one round trip per event, plus a few per batch: the `last_position` of every
//! aggregate the batch touches is read in one query before its first event and kept as it
//! goes; each event's statement stamps its aggregate's main row (`updated_at`,
//! `last_position`) as it changes it; and the effective permissions of a tenant whose members
//! or custom roles changed are rewritten once, after the batch's last event, for every such
//! tenant at once. A failure of that last step names the last event that changed the
//! tenant's roles.

use std::collections::{BTreeMap, BTreeSet, HashMap};

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
    forgotten_at          timestamptz,
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

-- The gateway reads as `platform_reader`, bound to one tenant per transaction: each table
-- shows it that tenant's rows and nothing else (migrations/0008_read_model_reader.sql).
DO $grants$
DECLARE
    t text;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO platform_reader', current_schema());
    FOREACH t IN ARRAY ARRAY['tenants', 'memberships', 'custom_roles', 'effective_permissions',
                             'users', 'sessions', 'api_keys', 'service_accounts'] LOOP
        EXECUTE format('GRANT SELECT ON %I TO platform_reader', t);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_rows ON %I FOR SELECT TO platform_reader USING '
            '(tenant_id = NULLIF(current_setting(''platform.tenant_id'', true), '''')::uuid)',
            t);
    END LOOP;
END
$grants$;
"#;

impl PgProjection for IdentityModel {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn version(&self) -> i32 {
        // 2: row-level security for the gateway's reader role.
        // 3: `users.forgotten_at`.
        3
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
        let mut batch = Batch::read(conn, events).await?;
        for event in events {
            batch
                .apply(conn, event)
                .await
                .map_err(|problem| ApplyError::of(event, problem))?;
        }
        batch.recompute_permissions(conn).await
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

/// An aggregate the model reads, by the table of its main row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Aggregate {
    Tenant,
    User,
    Session,
    ApiKey,
    ServiceAccount,
}

impl Aggregate {
    /// The aggregate of a type name of the log.
    fn of(aggregate_type: &str) -> Option<Self> {
        match aggregate_type {
            "Tenant" => Some(Self::Tenant),
            "User" => Some(Self::User),
            "Session" => Some(Self::Session),
            "ApiKey" => Some(Self::ApiKey),
            "ServiceAccount" => Some(Self::ServiceAccount),
            _ => None,
        }
    }

    /// Its place among the parameters of [`LAST_POSITIONS`].
    fn index(self) -> usize {
        match self {
            Self::Tenant => 0,
            Self::User => 1,
            Self::Session => 2,
            Self::ApiKey => 3,
            Self::ServiceAccount => 4,
        }
    }
}

/// The `last_position` of the main rows of the given ids of each aggregate (tenants, users,
/// sessions, API keys, service accounts), each row with its aggregate's type name.
const LAST_POSITIONS: &str = "
    SELECT 'Tenant', tenant_id, last_position FROM tenants WHERE tenant_id = ANY($1)
    UNION ALL
    SELECT 'User', user_id, last_position FROM users WHERE user_id = ANY($2)
    UNION ALL
    SELECT 'Session', session_id, last_position FROM sessions WHERE session_id = ANY($3)
    UNION ALL
    SELECT 'ApiKey', key_id, last_position FROM api_keys WHERE key_id = ANY($4)
    UNION ALL
    SELECT 'ServiceAccount', account_id, last_position FROM service_accounts
     WHERE account_id = ANY($5)";

/// What applying one event did to its aggregate's main row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The event was applied already: nothing changed.
    PassedOver,
    /// The row now stands at the event.
    Applied,
    /// The row now stands at the event, which changed a member or a custom role of the
    /// tenant: its effective permissions are out of date.
    RolesChanged,
}

/// A batch being applied: where the main row of each aggregate it touches stands, read once
/// before its first event and moved with each event applied, and the tenants whose effective
/// permissions it must rewrite after its last event.
struct Batch<'e> {
    last: HashMap<(Aggregate, Uuid), i64>,
    /// Each tenant with the last of the batch's events that changed its members or roles.
    roles_changed: BTreeMap<Uuid, &'e RecordedEvent>,
}

impl<'e> Batch<'e> {
    /// Reads the `last_position` of every aggregate of `events` in one query. An event whose
    /// aggregate is not one the model reads fails later, in its turn.
    async fn read(
        conn: &mut PgConnection,
        events: &[&'e RecordedEvent],
    ) -> Result<Self, ApplyError> {
        let mut batch = Self {
            last: HashMap::new(),
            roles_changed: BTreeMap::new(),
        };
        let mut ids: [Vec<Uuid>; 5] = Default::default();
        let mut first = None;
        for event in events {
            let (Ok(id), Some(aggregate)) =
                (aggregate_uuid(event), Aggregate::of(&event.aggregate_type))
            else {
                continue;
            };
            first.get_or_insert(*event);
            if let Some(of_aggregate) = ids.get_mut(aggregate.index()) {
                of_aggregate.push(id);
            }
        }
        // Nothing to read: every event fails in its turn.
        let Some(first) = first else {
            return Ok(batch);
        };
        for of_aggregate in &mut ids {
            of_aggregate.sort_unstable();
            of_aggregate.dedup();
        }
        let [tenants, users, sessions, keys, accounts] = ids;
        let rows: Vec<(String, Uuid, i64)> = sqlx::query_as(LAST_POSITIONS)
            .bind(tenants)
            .bind(users)
            .bind(sessions)
            .bind(keys)
            .bind(accounts)
            .fetch_all(&mut *conn)
            .await
            // The first event that needed them names the failure.
            .map_err(|err| ApplyError::of(first, Problem::Database(err)))?;
        for (aggregate_type, id, last) in rows {
            let aggregate = Aggregate::of(&aggregate_type).ok_or_else(|| {
                ApplyError::of(
                    first,
                    Problem::Inconsistent(format!(
                        "a position was read for aggregate type `{aggregate_type}`"
                    )),
                )
            })?;
            batch.last.insert((aggregate, id), last);
        }
        Ok(batch)
    }

    /// Applies one event and keeps where its aggregate stands.
    async fn apply(&mut self, conn: &mut PgConnection, event: &'e RecordedEvent) -> Step {
        let id = aggregate_uuid(event).map_err(Problem::Inconsistent)?;
        let Some(aggregate) = Aggregate::of(&event.aggregate_type) else {
            return Err(Problem::Inconsistent(format!(
                "aggregate type `{}` is not read by this model",
                event.aggregate_type
            )));
        };
        let last = self.last.get(&(aggregate, id)).copied();
        let outcome = match aggregate {
            Aggregate::Tenant => tenant(conn, event, id, last).await?,
            Aggregate::User => user(conn, event, id, last).await?,
            Aggregate::Session => session(conn, event, id, last).await?,
            Aggregate::ApiKey => api_key(conn, event, id, last).await?,
            Aggregate::ServiceAccount => service_account(conn, event, id, last).await?,
        };
        if outcome != Outcome::PassedOver {
            self.last.insert((aggregate, id), event.global_position);
        }
        if outcome == Outcome::RolesChanged {
            self.roles_changed.insert(id, event);
        }
        Ok(())
    }

    /// Rewrites the effective permissions of every member of each tenant whose members or
    /// custom roles the batch changed, from its memberships and custom roles as they stand
    /// after the batch: the union of the permissions of each member's roles. Like the
    /// domain's `Tenant::effective_permissions`, it holds whatever the roles grant, whether
    /// the tenant is active or not and whether the principal can sign in or not; those are
    /// other columns. A failure names the last event that changed the tenant's roles (the
    /// batch's last such event when it is no one tenant's).
    async fn recompute_permissions(self, conn: &mut PgConnection) -> Result<(), ApplyError> {
        let Some(last) = self
            .roles_changed
            .values()
            .copied()
            .max_by_key(|event| event.global_position)
        else {
            return Ok(());
        };
        let failed = |err: sqlx::Error| ApplyError::of(last, Problem::Database(err));
        let tenants: Vec<Uuid> = self.roles_changed.keys().copied().collect();
        let defined: Vec<(Uuid, String, Vec<String>)> = sqlx::query_as(
            "SELECT tenant_id, name, permissions FROM custom_roles WHERE tenant_id = ANY($1)",
        )
        .bind(&tenants)
        .fetch_all(&mut *conn)
        .await
        .map_err(failed)?;
        let mut custom: BTreeMap<Uuid, BTreeMap<String, PermissionSet>> = BTreeMap::new();
        for (tenant, name, permissions) in defined {
            let set = permissions
                .iter()
                .map(|permission| permission.parse::<Permission>())
                .collect::<Result<PermissionSet, _>>()
                .map_err(|err| {
                    let event = self.roles_changed.get(&tenant).copied().unwrap_or(last);
                    ApplyError::of(
                        event,
                        Problem::Inconsistent(format!("custom role `{name}`: {err}")),
                    )
                })?;
            custom.entry(tenant).or_default().insert(name, set);
        }
        let members: Vec<(Uuid, String, Vec<String>)> = sqlx::query_as(
            "SELECT tenant_id, principal, roles FROM memberships WHERE tenant_id = ANY($1)",
        )
        .bind(&tenants)
        .fetch_all(&mut *conn)
        .await
        .map_err(failed)?;
        let mut of_tenant = Vec::with_capacity(members.len());
        let mut principals = Vec::with_capacity(members.len());
        let mut permissions = Vec::with_capacity(members.len());
        for (tenant, principal, roles) in members {
            let builtin = roles.iter().filter_map(|role| BuiltinRole::from_name(role));
            // A role that is neither built in nor defined grants nothing, as in the domain
            // (whose rules keep every held role defined).
            let defined = roles.iter().filter_map(|role| {
                custom
                    .get(&tenant)
                    .and_then(|roles| roles.get(role.as_str()))
            });
            let set = rbac::effective_permissions(builtin, defined);
            of_tenant.push(tenant);
            principals.push(principal);
            permissions.push(permission_strings(set).join(","));
        }
        sqlx::query("DELETE FROM effective_permissions WHERE tenant_id = ANY($1)")
            .bind(&tenants)
            .execute(&mut *conn)
            .await
            .map_err(failed)?;
        sqlx::query(
            "INSERT INTO effective_permissions (tenant_id, principal, permissions)
             SELECT tenant_id, principal, string_to_array(permissions, ',')
               FROM unnest($1::uuid[], $2::text[], $3::text[])
                 AS member(tenant_id, principal, permissions)",
        )
        .bind(of_tenant)
        .bind(principals)
        .bind(permissions)
        .execute(&mut *conn)
        .await
        .map_err(failed)?;
        Ok(())
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// A statement that stamps the main row of the event's aggregate (`updated_at` and
/// `last_position`) as it changes it: `$1` is the aggregate's id, `$2` the event's
/// `recorded_at` and `$3` its position; the change's own parameters follow from `$4`.
fn stamping<'q>(sql: &'q str, id: Uuid, event: &RecordedEvent) -> PgQuery<'q> {
    sqlx::query(sql)
        .bind(id)
        .bind(event.recorded_at)
        .bind(event.global_position)
}

/// A statement on a tenant's members or custom roles that stamps the tenant's row in the
/// same round trip, with the parameters of [`stamping`].
macro_rules! stamping_tenant {
    ($sql:literal) => {
        concat!(
            "WITH stamp AS (UPDATE tenants SET updated_at = $2, last_position = $3
                             WHERE tenant_id = $1) ",
            $sql
        )
    };
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

/// Refuses a change of roles that matched no membership (the key matches one at most).
fn a_member(rows: u64, principal: &Principal) -> Step {
    if rows == 0 {
        Err(Problem::Inconsistent(format!(
            "{principal} is not a member of the tenant"
        )))
    } else {
        Ok(())
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
// Tenants: the tenants row, memberships, custom roles and effective permissions (rewritten
// by `Batch::recompute_permissions`).

async fn tenant(
    conn: &mut PgConnection,
    event: &RecordedEvent,
    id: Uuid,
    last: Option<i64>,
) -> Result<Outcome, Problem> {
    let change: TenantEvent = decode(event, "Tenant")?;
    let creates = matches!(change, TenantEvent::TenantCreated { .. });
    if !is_new("tenant", creates, last, event.global_position)? {
        return Ok(Outcome::PassedOver);
    }
    let outcome = match change {
        TenantEvent::TenantCreated {
            tenant_id,
            name,
            plan,
            owner,
            created_at,
        } => {
            same_id("tenant", tenant_id.as_uuid(), id)?;
            let owner = Principal::User(owner);
            let (kind, principal_id) = kind_of(&owner);
            stamping(
                "WITH tenant AS (
                     INSERT INTO tenants (tenant_id, name, plan, status, created_at, updated_at,
                                          last_position)
                     VALUES ($1, $4, $5, 'active', $6, $2, $3))
                 INSERT INTO memberships (tenant_id, principal, principal_kind, principal_id,
                                          roles, added_at)
                 VALUES ($1, $7, $8, $9, $10, $6)",
                id,
                event,
            )
            .bind(name.as_str())
            .bind(plan.as_str())
            .bind(created_at)
            .bind(owner.to_string())
            .bind(kind)
            .bind(principal_id)
            .bind(sorted([BuiltinRole::Owner.as_str()]))
            .execute(&mut *conn)
            .await?;
            Outcome::RolesChanged
        }
        TenantEvent::TenantRenamed {
            name,
            renamed_at: _,
        } => {
            stamping(
                "UPDATE tenants SET name = $4, updated_at = $2, last_position = $3
                  WHERE tenant_id = $1",
                id,
                event,
            )
            .bind(name.as_str())
            .execute(&mut *conn)
            .await?;
            Outcome::Applied
        }
        TenantEvent::PlanChanged {
            plan,
            previous: _,
            changed_at: _,
        } => {
            stamping(
                "UPDATE tenants SET plan = $4, updated_at = $2, last_position = $3
                  WHERE tenant_id = $1",
                id,
                event,
            )
            .bind(plan.as_str())
            .execute(&mut *conn)
            .await?;
            Outcome::Applied
        }
        TenantEvent::TenantSuspended {
            reason,
            suspended_at,
        } => {
            set_status(conn, event, id, "suspended", Some(&reason), suspended_at).await?;
            Outcome::Applied
        }
        TenantEvent::TenantReactivated { reactivated_at } => {
            set_status(conn, event, id, "active", None, reactivated_at).await?;
            Outcome::Applied
        }
        TenantEvent::TenantClosed { reason, closed_at } => {
            set_status(conn, event, id, "closed", Some(&reason), closed_at).await?;
            Outcome::Applied
        }
        TenantEvent::MemberAdded {
            principal,
            roles,
            added_at,
        } => {
            let (kind, principal_id) = kind_of(&principal);
            stamping(
                stamping_tenant!(
                    "INSERT INTO memberships (tenant_id, principal, principal_kind, principal_id,
                                              roles, added_at)
                     VALUES ($1, $4, $5, $6, $7, $8)"
                ),
                id,
                event,
            )
            .bind(principal.to_string())
            .bind(kind)
            .bind(principal_id)
            .bind(sorted(roles.iter().map(RoleRef::as_str)))
            .bind(added_at)
            .execute(&mut *conn)
            .await?;
            Outcome::RolesChanged
        }
        TenantEvent::MemberRemoved {
            principal,
            removed_at: _,
        } => {
            let done = stamping(
                stamping_tenant!("DELETE FROM memberships WHERE tenant_id = $1 AND principal = $4"),
                id,
                event,
            )
            .bind(principal.to_string())
            .execute(&mut *conn)
            .await?;
            one_row(done.rows_affected(), || {
                format!("{principal} is not a member to remove")
            })?;
            Outcome::RolesChanged
        }
        // A member's roles stay sorted bytewise (`COLLATE "C"`), without duplicates.
        TenantEvent::RoleAssigned {
            principal,
            role,
            assigned_at: _,
        } => {
            let done = stamping(
                stamping_tenant!(
                    r#"UPDATE memberships
                          SET roles = ARRAY(SELECT role FROM unnest(array_append(roles, $5))
                                                          AS held(role)
                                             GROUP BY role ORDER BY role COLLATE "C")
                        WHERE tenant_id = $1 AND principal = $4"#
                ),
                id,
                event,
            )
            .bind(principal.to_string())
            .bind(role.as_str())
            .execute(&mut *conn)
            .await?;
            a_member(done.rows_affected(), &principal)?;
            Outcome::RolesChanged
        }
        TenantEvent::RoleUnassigned {
            principal,
            role,
            unassigned_at: _,
        } => {
            let done = stamping(
                stamping_tenant!(
                    r#"UPDATE memberships
                          SET roles = ARRAY(SELECT role FROM unnest(roles) AS held(role)
                                             WHERE role <> $5
                                             GROUP BY role ORDER BY role COLLATE "C")
                        WHERE tenant_id = $1 AND principal = $4"#
                ),
                id,
                event,
            )
            .bind(principal.to_string())
            .bind(role.as_str())
            .execute(&mut *conn)
            .await?;
            a_member(done.rows_affected(), &principal)?;
            Outcome::RolesChanged
        }
        TenantEvent::RoleDefined {
            name,
            permissions,
            defined_at,
        } => {
            stamping(
                stamping_tenant!(
                    "INSERT INTO custom_roles (tenant_id, name, permissions, defined_at)
                     VALUES ($1, $4, $5, $6)"
                ),
                id,
                event,
            )
            .bind(name.as_str())
            .bind(permission_strings(permissions))
            .bind(defined_at)
            .execute(&mut *conn)
            .await?;
            Outcome::RolesChanged
        }
        TenantEvent::RoleRedefined {
            name,
            permissions,
            previous: _,
            redefined_at,
        } => {
            let done = stamping(
                stamping_tenant!(
                    "UPDATE custom_roles SET permissions = $5, redefined_at = $6
                      WHERE tenant_id = $1 AND name = $4"
                ),
                id,
                event,
            )
            .bind(name.as_str())
            .bind(permission_strings(permissions))
            .bind(redefined_at)
            .execute(&mut *conn)
            .await?;
            one_row(done.rows_affected(), || {
                format!("there is no custom role `{name}` to redefine")
            })?;
            Outcome::RolesChanged
        }
        TenantEvent::RoleDeleted {
            name,
            deleted_at: _,
        } => {
            let done = stamping(
                stamping_tenant!("DELETE FROM custom_roles WHERE tenant_id = $1 AND name = $4"),
                id,
                event,
            )
            .bind(name.as_str())
            .execute(&mut *conn)
            .await?;
            one_row(done.rows_affected(), || {
                format!("there is no custom role `{name}` to delete")
            })?;
            Outcome::RolesChanged
        }
    };
    Ok(outcome)
}

async fn set_status(
    conn: &mut PgConnection,
    event: &RecordedEvent,
    tenant: Uuid,
    status: &str,
    reason: Option<&str>,
    at: DateTime<Utc>,
) -> Step {
    stamping(
        "UPDATE tenants SET status = $4, status_reason = $5, status_changed_at = $6,
                            updated_at = $2, last_position = $3
          WHERE tenant_id = $1",
        tenant,
        event,
    )
    .bind(status)
    .bind(reason)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Users.

async fn user(
    conn: &mut PgConnection,
    event: &RecordedEvent,
    id: Uuid,
    last: Option<i64>,
) -> Result<Outcome, Problem> {
    let change: UserEvent = decode(event, "User")?;
    let creates = matches!(
        change,
        UserEvent::UserRegistered { .. } | UserEvent::UserInvited { .. }
    );
    if !is_new("user", creates, last, event.global_position)? {
        return Ok(Outcome::PassedOver);
    }
    /// Stamps the row alone, for an event that changes nothing else in it.
    const STAMP: &str = "UPDATE users SET updated_at = $2, last_position = $3 WHERE user_id = $1";
    let statement = match change {
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
            stamping(
                "INSERT INTO users (user_id, tenant_id, status, email_sealed, email_index,
                                    email_verified, name_sealed, mfa_enabled,
                                    recovery_codes_left, failed_logins, lockouts, created_at,
                                    activated_at, updated_at, last_position)
                 VALUES ($1, $4, 'active', $5, $6, false, $7, false, 0, 0, 0, $8, $8, $2, $3)",
                id,
                event,
            )
            .bind(tenant_id.as_uuid())
            .bind(sealed(&email)?)
            .bind(email_index.as_str().to_owned())
            .bind(sealed(&name)?)
            .bind(registered_at)
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
            stamping(
                "INSERT INTO users (user_id, tenant_id, status, email_sealed, email_index,
                                    email_verified, invited_by, invitation_expires_at,
                                    mfa_enabled, recovery_codes_left, failed_logins, lockouts,
                                    created_at, updated_at, last_position)
                 VALUES ($1, $4, 'invited', $5, $6, false, $7, $8, false, 0, 0, 0, $9, $2, $3)",
                id,
                event,
            )
            .bind(tenant_id.as_uuid())
            .bind(sealed(&email)?)
            .bind(email_index.as_str().to_owned())
            .bind(invited_by.as_uuid())
            .bind(expires_at)
            .bind(invited_at)
        }
        UserEvent::InvitationAccepted {
            name,
            password: _,
            accepted_at,
        } => stamping(
            "UPDATE users SET status = 'active', name_sealed = $4, activated_at = $5,
                              invitation_expires_at = NULL, updated_at = $2, last_position = $3
              WHERE user_id = $1",
            id,
            event,
        )
        .bind(sealed(&name)?)
        .bind(accepted_at),
        // A token's hash and expiry are for the aggregate alone.
        UserEvent::EmailVerificationIssued {
            token: _,
            expires_at: _,
        } => stamping(STAMP, id, event),
        UserEvent::EmailVerified { verified_at: _ } => stamping(
            "UPDATE users SET email_verified = true, updated_at = $2, last_position = $3
              WHERE user_id = $1",
            id,
            event,
        ),
        UserEvent::EmailChanged {
            email,
            email_index,
            previous_index: _,
            changed_at: _,
        } => stamping(
            "UPDATE users SET email_sealed = $4, email_index = $5, email_verified = false,
                              updated_at = $2, last_position = $3
              WHERE user_id = $1",
            id,
            event,
        )
        .bind(sealed(&email)?)
        .bind(email_index.as_str().to_owned()),
        UserEvent::PasswordChanged {
            password: _,
            changed_at,
        } => stamping(
            "UPDATE users SET password_changed_at = $4,
                              sessions_valid_after = GREATEST(sessions_valid_after, $4),
                              updated_at = $2, last_position = $3
              WHERE user_id = $1",
            id,
            event,
        )
        .bind(changed_at),
        UserEvent::UserDeactivated { deactivated_at } => stamping(
            "UPDATE users SET status = 'deactivated', deactivated_at = $4,
                              invitation_expires_at = NULL, updated_at = $2, last_position = $3
              WHERE user_id = $1",
            id,
            event,
        )
        .bind(deactivated_at),
        // A failure while locked does not count.
        UserEvent::LoginFailed {
            at: _,
            consecutive_failures: _,
            while_locked: true,
        } => stamping(STAMP, id, event),
        UserEvent::LoginFailed {
            at: _,
            consecutive_failures,
            while_locked: false,
        } => stamping(
            "UPDATE users SET failed_logins = $4, updated_at = $2, last_position = $3
              WHERE user_id = $1",
            id,
            event,
        )
        .bind(to_i32(consecutive_failures, "a failure count")?),
        UserEvent::AccountLocked { until, lockout } => stamping(
            "UPDATE users SET locked_until = $4, lockouts = $5, failed_logins = 0,
                              updated_at = $2, last_position = $3
              WHERE user_id = $1",
            id,
            event,
        )
        .bind(until)
        .bind(to_i32(lockout, "a lockout count")?),
        UserEvent::LoginSucceeded {
            session_id: _,
            at,
            mfa_used: _,
        } => stamping(
            "UPDATE users SET failed_logins = 0, last_login_at = $4,
                              updated_at = $2, last_position = $3
              WHERE user_id = $1",
            id,
            event,
        )
        .bind(at),
        // The sealed TOTP secret stays in the log: a pending enrollment does not turn MFA on.
        UserEvent::TotpEnrollmentStarted { secret: _ } => stamping(STAMP, id, event),
        UserEvent::TotpConfirmed {
            step: _,
            recovery_codes,
            confirmed_at: _,
        } => stamping(
            "UPDATE users SET mfa_enabled = true, recovery_codes_left = $4,
                              updated_at = $2, last_position = $3
              WHERE user_id = $1",
            id,
            event,
        )
        .bind(to_i32(recovery_codes.len(), "a number of recovery codes")?),
        UserEvent::TotpCodeUsed { step: _ } => stamping(STAMP, id, event),
        // The domain accepts each recovery code once, so each use is one code fewer.
        UserEvent::RecoveryCodeUsed { code: _ } => stamping(
            "UPDATE users SET recovery_codes_left = GREATEST(recovery_codes_left - 1, 0),
                              updated_at = $2, last_position = $3
              WHERE user_id = $1",
            id,
            event,
        ),
        UserEvent::MfaDisabled {
            step: _,
            disabled_at: _,
        } => stamping(
            "UPDATE users SET mfa_enabled = false, recovery_codes_left = 0,
                              updated_at = $2, last_position = $3
              WHERE user_id = $1",
            id,
            event,
        ),
        UserEvent::AllSessionsRevoked { at } => stamping(
            "UPDATE users SET sessions_valid_after = GREATEST(sessions_valid_after, $4),
                              updated_at = $2, last_position = $3
              WHERE user_id = $1",
            id,
            event,
        )
        .bind(at),
        // The sealed fields stay as the events hold them: with the key destroyed, nothing
        // opens them any more. A user deactivated earlier keeps that time.
        UserEvent::SubjectForgotten {
            user_id,
            forgotten_at,
        } => {
            same_id("user", user_id.as_uuid(), id)?;
            stamping(
                "UPDATE users SET status = 'deactivated', forgotten_at = $4,
                                  deactivated_at = COALESCE(deactivated_at, $4),
                                  invitation_expires_at = NULL,
                                  mfa_enabled = false, recovery_codes_left = 0,
                                  sessions_valid_after = GREATEST(sessions_valid_after, $4),
                                  updated_at = $2, last_position = $3
                  WHERE user_id = $1",
                id,
                event,
            )
            .bind(forgotten_at)
        }
    };
    statement.execute(&mut *conn).await?;
    Ok(Outcome::Applied)
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

async fn session(
    conn: &mut PgConnection,
    event: &RecordedEvent,
    id: Uuid,
    last: Option<i64>,
) -> Result<Outcome, Problem> {
    let change: SessionEvent = decode(event, "Session")?;
    let creates = matches!(change, SessionEvent::SessionOpened { .. });
    if !is_new("session", creates, last, event.global_position)? {
        return Ok(Outcome::PassedOver);
    }
    /// Ends the session, with its status, its reason (`$5`, when revoked) and its time.
    const END: &str = "UPDATE sessions SET status = $4, revoke_reason = $5, ended_at = $6,
                                           updated_at = $2, last_position = $3
                        WHERE session_id = $1";
    let statement = match change {
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
            stamping(
                "INSERT INTO sessions (session_id, user_id, tenant_id, status, mfa, generation,
                                       opened_at, expires_at, updated_at, last_position)
                 VALUES ($1, $4, $5, 'active', $6, 1, $7, $8, $2, $3)",
                id,
                event,
            )
            .bind(user_id.as_uuid())
            .bind(tenant_id.as_uuid())
            .bind(mfa)
            .bind(opened_at)
            .bind(expires_at)
        }
        SessionEvent::RefreshTokenRotated {
            generation,
            refresh: _,
            rotated_at,
        } => stamping(
            "UPDATE sessions SET generation = $4, last_refreshed_at = $5,
                                 updated_at = $2, last_position = $3
              WHERE session_id = $1",
            id,
            event,
        )
        .bind(to_i64(generation, "a token generation")?)
        .bind(rotated_at),
        SessionEvent::RefreshTokenReused {
            presented_generation: _,
            detected_at,
        } => stamping(
            "UPDATE sessions SET reuse_detected_at = $4, updated_at = $2, last_position = $3
              WHERE session_id = $1",
            id,
            event,
        )
        .bind(detected_at),
        SessionEvent::SessionRevoked { reason, revoked_at } => stamping(END, id, event)
            .bind("revoked")
            .bind(Some(revocation_reason(reason)))
            .bind(revoked_at),
        SessionEvent::SessionEnded {
            reason: EndReason::Logout,
            ended_at,
        } => stamping(END, id, event)
            .bind("ended")
            .bind(None::<&str>)
            .bind(ended_at),
        SessionEvent::SessionExpired { expired_at } => stamping(END, id, event)
            .bind("expired")
            .bind(None::<&str>)
            .bind(expired_at),
    };
    statement.execute(&mut *conn).await?;
    Ok(Outcome::Applied)
}

// ---------------------------------------------------------------------------------------
// API keys.

async fn api_key(
    conn: &mut PgConnection,
    event: &RecordedEvent,
    id: Uuid,
    last: Option<i64>,
) -> Result<Outcome, Problem> {
    let change: ApiKeyEvent = decode(event, "ApiKey")?;
    let creates = matches!(change, ApiKeyEvent::ApiKeyCreated { .. });
    if !is_new("API key", creates, last, event.global_position)? {
        return Ok(Outcome::PassedOver);
    }
    let statement = match change {
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
            stamping(
                "INSERT INTO api_keys (key_id, tenant_id, owner, name, display_prefix, scopes,
                                       expires_at, created_at, updated_at, last_position)
                 VALUES ($1, $4, $5, $6, $7, $8, $9, $10, $2, $3)",
                id,
                event,
            )
            .bind(tenant_id.as_uuid())
            .bind(owner.to_string())
            .bind(name)
            .bind(display_prefix)
            .bind(permission_strings(scopes))
            .bind(expires_at)
            .bind(created_at)
        }
        ApiKeyEvent::ApiKeyRevoked { revoked_at } => stamping(
            "UPDATE api_keys SET revoked_at = $4, updated_at = $2, last_position = $3
              WHERE key_id = $1",
            id,
            event,
        )
        .bind(revoked_at),
    };
    statement.execute(&mut *conn).await?;
    Ok(Outcome::Applied)
}

// ---------------------------------------------------------------------------------------
// Service accounts.

async fn service_account(
    conn: &mut PgConnection,
    event: &RecordedEvent,
    id: Uuid,
    last: Option<i64>,
) -> Result<Outcome, Problem> {
    let change: ServiceAccountEvent = decode(event, "ServiceAccount")?;
    let creates = matches!(change, ServiceAccountEvent::ServiceAccountCreated { .. });
    if !is_new("service account", creates, last, event.global_position)? {
        return Ok(Outcome::PassedOver);
    }
    let statement = match change {
        ServiceAccountEvent::ServiceAccountCreated {
            account_id,
            tenant_id,
            name,
            created_by,
            created_at,
        } => {
            same_id("service account", account_id.as_uuid(), id)?;
            stamping(
                "INSERT INTO service_accounts (account_id, tenant_id, name, enabled, created_by,
                                               created_at, active_secret_ids, updated_at,
                                               last_position)
                 VALUES ($1, $4, $5, true, $6, $7, '{}', $2, $3)",
                id,
                event,
            )
            .bind(tenant_id.as_uuid())
            .bind(name)
            .bind(created_by.to_string())
            .bind(created_at)
        }
        ServiceAccountEvent::ServiceAccountRenamed {
            name,
            renamed_at: _,
        } => stamping(
            "UPDATE service_accounts SET name = $4, updated_at = $2, last_position = $3
              WHERE account_id = $1",
            id,
            event,
        )
        .bind(name),
        ServiceAccountEvent::ServiceAccountDisabled { disabled_at: _ } => stamping(
            "UPDATE service_accounts SET enabled = false, updated_at = $2, last_position = $3
              WHERE account_id = $1",
            id,
            event,
        ),
        ServiceAccountEvent::ServiceAccountEnabled { enabled_at: _ } => stamping(
            "UPDATE service_accounts SET enabled = true, updated_at = $2, last_position = $3
              WHERE account_id = $1",
            id,
            event,
        ),
        ServiceAccountEvent::ClientSecretIssued {
            secret_id,
            hash: _,
            issued_at: _,
        } => stamping(
            "UPDATE service_accounts SET active_secret_ids = array_append(active_secret_ids, $4),
                                         updated_at = $2, last_position = $3
              WHERE account_id = $1",
            id,
            event,
        )
        .bind(secret_id),
        ServiceAccountEvent::ClientSecretRevoked {
            secret_id,
            revoked_at: _,
        } => stamping(
            "UPDATE service_accounts SET active_secret_ids = array_remove(active_secret_ids, $4),
                                         updated_at = $2, last_position = $3
              WHERE account_id = $1",
            id,
            event,
        )
        .bind(secret_id),
    };
    statement.execute(&mut *conn).await?;
    Ok(Outcome::Applied)
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
