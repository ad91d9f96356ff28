//! Point-in-time reads: a tenant or a user as they were at a global position of the log, or
//! at a time (`asOf`).
//!
//! The state is rebuilt from the aggregate's own events with the domain's
//! `Aggregate::apply` ([`eventstore::History`]), not read from the read models, which hold
//! the present only. It is read in the same read-only transaction as every query, as
//! `platform_reader` bound to the caller's tenant, through views that show that role its
//! tenant's events only (migrations/0014_reader_history.sql): another tenant's aggregate has
//! no events there, so it answers `NOT_FOUND`, as it does in the present.
//!
//! What the aggregates do not keep (when a tenant or user was created, a user's last login)
//! is taken from the same events as they are applied, to the microsecond as the read models
//! store times. A user's roles come from the tenant aggregate as of the same position.
//!
//! Personal fields are opened with today's keys: a subject forgotten since is redacted in
//! the past too.
//!
//! `asOf` takes exactly one of `position` and `time`. A position is a prefix of the log:
//! 0 (before the first event) up to the head; a position beyond the head is refused rather
//! than clamped, because the state there is not known yet. A time is placed at the end of
//! the longest prefix of the tenant's events recorded at or before it (`recorded_at` is not
//! monotonic in the position; see [`eventstore::history`]), or at the head when every event
//! of the tenant was recorded by then. The answer's `asOfPosition` is the position the state
//! is as of.

use std::collections::BTreeSet;

use async_graphql::InputObject;
use chrono::{DateTime, SubsecRound, Utc};
use domain::identity::principal::Principal;
use domain::identity::rbac::RoleRef;
use domain::identity::tenant::{Tenant as TenantState, TenantEvent, TenantStatus};
use domain::identity::user::{MfaStatus, User as UserState, UserEvent, UserStatus};
use domain::identity::values::UserId;
use eventstore::{History, PgSubjectKeys, RecordedEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use super::types::{Tenant, User, UserRow, open_users};
use crate::error::{ApiError, ApiResult};

/// Where in the log's history to read: exactly one of `position` and `time`.
#[derive(Debug, Clone, Copy, InputObject)]
pub struct AsOf {
    /// A global position of the log, from 0 (before the first event) to the head: the
    /// state after every event at or below it.
    pub position: Option<i64>,
    /// A time: the state after every event of the tenant recorded at or before it, up to
    /// its first event recorded later.
    pub time: Option<DateTime<Utc>>,
}

/// The events whose payload tells when a tenant was created.
const TENANT_CREATED: &[&str] = &["TenantCreated"];
/// The events whose payload tells when a user was created.
const USER_CREATED: &[&str] = &["UserRegistered", "UserInvited"];
/// The event whose payload tells when a user last logged in.
const USER_LOGGED_IN: &[&str] = &["LoginSucceeded"];

/// The position `as_of` names, checked against the head of the log, in the read
/// transaction bound to the caller's tenant.
pub async fn position(conn: &mut PgConnection, as_of: AsOf) -> ApiResult<i64> {
    let history = History::BoundTenant;
    match (as_of.position, as_of.time) {
        (Some(_), Some(_)) => Err(ApiError::bad_input(
            "asOf",
            "give either a position or a time, not both",
        )),
        (None, None) => Err(ApiError::bad_input("asOf", "give a position or a time")),
        (Some(position), None) if position < 0 => {
            Err(ApiError::bad_input("asOf.position", "must not be negative"))
        }
        (Some(position), None) => {
            let head = history.head(conn).await.map_err(ApiError::internal)?;
            if position > head {
                return Err(ApiError::bad_input(
                    "asOf.position",
                    format!("{position} is beyond the head of the log ({head})"),
                ));
            }
            Ok(position)
        }
        (None, Some(time)) => history
            .position_at(conn, time)
            .await
            .map_err(ApiError::internal),
    }
}

/// The tenant `tenant_id` as of `position`.
pub async fn tenant(conn: &mut PgConnection, tenant_id: Uuid, position: i64) -> ApiResult<Tenant> {
    let (state, created_at) = tenant_state(conn, tenant_id, position).await?;
    let status = match state.status() {
        TenantStatus::Absent => return Err(ApiError::not_found("tenant")),
        TenantStatus::Active => "active",
        TenantStatus::Suspended => "suspended",
        TenantStatus::Closed => "closed",
    };
    let (Some(name), Some(plan), Some(created_at)) = (state.name(), state.plan(), created_at)
    else {
        return Err(ApiError::internal(format!(
            "tenant {tenant_id} as of {position} exists without its name, plan or creation"
        )));
    };
    Ok(Tenant {
        id: tenant_id,
        name: name.as_str().to_owned(),
        plan: plan.as_str().to_owned(),
        status: status.to_owned(),
        created_at: micros(created_at),
        as_of_position: Some(position),
    })
}

/// The user `user_id` of the tenant `tenant_id` as of `position`, with its personal fields
/// opened with today's keys.
pub async fn user(
    conn: &mut PgConnection,
    keys: &PgSubjectKeys,
    tenant_id: Uuid,
    user_id: Uuid,
    position: i64,
) -> ApiResult<User> {
    let history = History::BoundTenant;
    let id = UserId::from_uuid(user_id).to_string();
    let mut created_at = None;
    let mut last_login_at = None;
    let rebuilt = history
        .rebuild::<UserState>(conn, &id, position, |_, event| match event {
            UserEvent::UserRegistered { registered_at, .. } => created_at = Some(*registered_at),
            UserEvent::UserInvited { invited_at, .. } => created_at = Some(*invited_at),
            UserEvent::LoginSucceeded { at, .. } => last_login_at = Some(*at),
            _ => {}
        })
        .await
        .map_err(ApiError::internal)?;
    let state = rebuilt.state;
    let status = match state.status() {
        UserStatus::Unregistered => return Err(ApiError::not_found("user")),
        UserStatus::Invited => "invited",
        UserStatus::Active => "active",
        UserStatus::Deactivated => "deactivated",
    };
    // The views show the caller's tenant only; this holds whatever they show.
    if state.tenant().map(|tenant| tenant.as_uuid()) != Some(tenant_id) {
        return Err(ApiError::not_found("user"));
    }
    if rebuilt.snapshot.is_some() {
        if created_at.is_none() {
            created_at = fact(conn, "User", &id, USER_CREATED, position)
                .await?
                .and_then(|event| match event {
                    UserEvent::UserRegistered { registered_at, .. } => Some(registered_at),
                    UserEvent::UserInvited { invited_at, .. } => Some(invited_at),
                    _ => None,
                });
        }
        if last_login_at.is_none() {
            last_login_at = fact(conn, "User", &id, USER_LOGGED_IN, position)
                .await?
                .and_then(|event| match event {
                    UserEvent::LoginSucceeded { at, .. } => Some(at),
                    _ => None,
                });
        }
    }
    let (Some(email), Some(created_at)) = (state.email(), created_at) else {
        return Err(ApiError::internal(format!(
            "user {user_id} as of {position} exists without its email or creation"
        )));
    };
    let (tenant, _) = tenant_state(conn, tenant_id, position).await?;
    let roles = tenant
        .roles_of(&Principal::User(UserId::from_uuid(user_id)))
        // Sorted by byte, as the read model stores them.
        .map(|roles| {
            roles
                .iter()
                .map(RoleRef::as_str)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(str::to_owned)
                .collect()
        });
    let row = UserRow {
        user_id,
        email_sealed: sealed(email)?,
        name_sealed: state.name().map(sealed).transpose()?,
        status: status.to_owned(),
        email_verified: state.email_verified(),
        mfa_enabled: state.mfa_status() == MfaStatus::Enabled,
        roles,
        created_at: micros(created_at),
        last_login_at: last_login_at.map(micros),
    };
    let mut user = open_users(conn, keys, vec![row])
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal("opening one user gave none"))?;
    user.as_of_position = Some(position);
    Ok(user)
}

/// The tenant aggregate as of `position`, with when it was created.
async fn tenant_state(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    position: i64,
) -> ApiResult<(TenantState, Option<DateTime<Utc>>)> {
    let id = tenant_id.to_string();
    let mut created_at = None;
    let rebuilt = History::BoundTenant
        .rebuild::<TenantState>(conn, &id, position, |_, event| {
            if let TenantEvent::TenantCreated { created_at: at, .. } = event {
                created_at = Some(*at);
            }
        })
        .await
        .map_err(ApiError::internal)?;
    if rebuilt.snapshot.is_some() && created_at.is_none() {
        created_at = fact(conn, "Tenant", &id, TENANT_CREATED, position)
            .await?
            .and_then(|event| match event {
                TenantEvent::TenantCreated { created_at, .. } => Some(created_at),
                _ => None,
            });
    }
    Ok((rebuilt.state, created_at))
}

/// The last event of `event_types` of an aggregate at or below `position`, decoded: a fact
/// that a snapshot covered.
async fn fact<E: serde::de::DeserializeOwned>(
    conn: &mut PgConnection,
    aggregate_type: &str,
    aggregate_id: &str,
    event_types: &[&str],
    position: i64,
) -> ApiResult<Option<E>> {
    let event: Option<RecordedEvent> = History::BoundTenant
        .latest_of(conn, aggregate_type, aggregate_id, event_types, position)
        .await
        .map_err(ApiError::internal)?;
    event
        .map(|event| serde_json::from_value(event.payload))
        .transpose()
        .map_err(ApiError::internal)
}

/// A time as PostgreSQL stores it: to the microsecond (sqlx truncates).
fn micros(time: DateTime<Utc>) -> DateTime<Utc> {
    time.trunc_subsecs(6)
}

/// A sealed field as the read model stores it.
fn sealed(field: &domain::personal::PersonalData) -> ApiResult<String> {
    serde_json::to_string(field).map_err(ApiError::internal)
}
