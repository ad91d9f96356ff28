//! The identity hot model, `identity_hot`: what the gateway checks on every request, in
//! Redis, so that authentication and authorization cost one Redis round trip each.
//!
//! Keys, inside the model's live generation (see [`crate::redis`]), all hashes:
//!
//! | key | fields |
//! |---|---|
//! | `apikey:<display prefix>` | one per key with that prefix: key id → [`HotApiKey`] as JSON |
//! | `apikey_id:<key id>` | `prefix` |
//! | `session:<session id>` | [`HotSession`]'s fields; the key expires with the session |
//! | `principal:<user:id or service_account:id>` | `tenant`, `status`, `sessions_valid_after_us` (users) |
//! | `tenant:<tenant id>` | `status` |
//! | `perms:<tenant id>` | principal → its effective permissions, comma-separated and sorted |
//! | `tenant:<tenant id>:members`, `tenant:<tenant id>:roles` | the roles of each member and the permissions of each custom role, from which `perms` is computed |
//!
//! A revoked API key stays, marked `revoked`, so the answer for it needs no fallback; an
//! ended session stays until it would have expired anyway. Like the PostgreSQL identity
//! model, it copies what the events carry: a key's SHA-256 (the gateway compares the hash of
//! what it is given), never a secret, and no personal data at all. Times are Unix
//! microseconds.
//!
//! Redis is a cache here: losing it loses nothing, the runner rebuilds the model from the
//! log, and a reader told [`Lookup::Unavailable`] asks PostgreSQL meanwhile.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use domain::identity::api_key::ApiKeyEvent;
use domain::identity::principal::Principal;
use domain::identity::rbac::{self, BuiltinRole, Permission, PermissionSet, RoleRef};
use domain::identity::service_account::ServiceAccountEvent;
use domain::identity::session::{EndReason, SessionEvent};
use domain::identity::tenant::TenantEvent;
use domain::identity::user::UserEvent;
use domain::identity::values::{ServiceAccountId, UserId};
use eventstore::RecordedEvent;
use redis::aio::ConnectionManager;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ProjectionError;
use crate::identity::{AGGREGATE_TYPES, aggregate_uuid, permission_strings, revocation_reason};
use crate::pg::ApplyError;
use crate::redis::{Lookup, ModelReader, RedisProjection, Stage};

/// The identity hot model. See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityHotModel;

/// The model's name.
pub const NAME: &str = "identity_hot";

/// The model's version: the layout of its keys.
pub const VERSION: i32 = 1;

/// An API key as the gateway checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotApiKey {
    /// The key's id.
    pub key_id: Uuid,
    /// SHA-256 of the whole key, as hex.
    pub hash: String,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// Whose key it is (`user:<id>` or `service_account:<id>`).
    pub owner: String,
    /// Its scopes, sorted.
    pub scopes: Vec<String>,
    /// `active` or `revoked`.
    pub status: String,
    /// When it expires, if it does (Unix microseconds).
    pub expires_at_us: Option<i64>,
}

/// A session as the gateway checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotSession {
    /// Its user.
    pub user_id: Uuid,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// `active`, `revoked`, `ended` or `expired`.
    pub status: String,
    /// The generation of its current refresh token.
    pub generation: u64,
    /// When it was opened (Unix microseconds).
    pub opened_at_us: i64,
    /// When it ends at the latest (Unix microseconds).
    pub expires_at_us: i64,
}

/// A user or service account as the gateway checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotPrincipal {
    /// Its tenant.
    pub tenant_id: Uuid,
    /// Users: `invited`, `active` or `deactivated`; service accounts: `enabled` or
    /// `disabled`.
    pub status: String,
    /// Users: sessions opened before this instant are void (Unix microseconds).
    pub sessions_valid_after_us: Option<i64>,
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn decode<T: DeserializeOwned>(event: &RecordedEvent) -> Result<T, String> {
    T::deserialize(&event.payload).map_err(|err| {
        format!(
            "the payload does not decode as a {} event: {err}",
            event.aggregate_type
        )
    })
}

/// An identity event, decoded.
enum Change {
    Tenant(Uuid, TenantEvent),
    User(Uuid, UserEvent),
    Session(Uuid, SessionEvent),
    ApiKey(Uuid, ApiKeyEvent),
    ServiceAccount(Uuid, ServiceAccountEvent),
}

fn change_of(event: &RecordedEvent) -> Result<Change, String> {
    let id = aggregate_uuid(event)?;
    Ok(match event.aggregate_type.as_str() {
        "Tenant" => Change::Tenant(id, decode(event)?),
        "User" => Change::User(id, decode(event)?),
        "Session" => Change::Session(id, decode(event)?),
        "ApiKey" => Change::ApiKey(id, decode(event)?),
        "ServiceAccount" => Change::ServiceAccount(id, decode(event)?),
        other => {
            return Err(format!(
                "aggregate type `{other}` is not read by this model"
            ));
        }
    })
}

fn tenant_key(tenant: Uuid) -> String {
    format!("tenant:{tenant}")
}

fn members_key(tenant: Uuid) -> String {
    format!("tenant:{tenant}:members")
}

fn roles_key(tenant: Uuid) -> String {
    format!("tenant:{tenant}:roles")
}

fn perms_key(tenant: Uuid) -> String {
    format!("perms:{tenant}")
}

fn principal_key(principal: &str) -> String {
    format!("principal:{principal}")
}

fn session_key(session: Uuid) -> String {
    format!("session:{session}")
}

fn api_key_key(prefix: &str) -> String {
    format!("apikey:{prefix}")
}

fn api_key_id_key(key: Uuid) -> String {
    format!("apikey_id:{key}")
}

fn csv<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(",")
}

fn names(csv: &str) -> BTreeSet<String> {
    csv.split(',')
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The keys a batch reads, fetched in one round trip before it is planned.
fn reads(changes: &[(&RecordedEvent, Change)]) -> Vec<String> {
    let mut keys = Vec::new();
    for (_, change) in changes {
        match change {
            Change::Tenant(tenant, _) => {
                keys.push(members_key(*tenant));
                keys.push(roles_key(*tenant));
            }
            Change::User(
                user,
                UserEvent::PasswordChanged { .. }
                | UserEvent::AllSessionsRevoked { .. }
                | UserEvent::SubjectForgotten { .. },
            ) => keys.push(principal_key(
                &Principal::User(UserId::from_uuid(*user)).to_string(),
            )),
            Change::ApiKey(key, ApiKeyEvent::ApiKeyRevoked { .. }) => {
                keys.push(api_key_id_key(*key));
            }
            _ => {}
        }
    }
    keys
}

impl RedisProjection for IdentityHotModel {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> i32 {
        VERSION
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        AGGREGATE_TYPES.contains(&event.aggregate_type.as_str())
    }

    #[tracing::instrument(name = "identity_hot_apply", skip_all, fields(events = events.len()))]
    async fn apply(&self, stage: &mut Stage, events: &[&RecordedEvent]) -> Result<(), ApplyError> {
        let mut changes = Vec::with_capacity(events.len());
        for event in events {
            let change = change_of(event).map_err(|problem| ApplyError::of(event, problem))?;
            changes.push((*event, change));
        }
        stage.prefetch(&reads(&changes)).await?;
        let mut roles_changed = BTreeSet::new();
        for (event, change) in changes {
            let outcome = match change {
                Change::Tenant(tenant, change) => {
                    tenant_event(stage, tenant, change, &mut roles_changed).await
                }
                Change::User(user, change) => user_event(stage, user, change).await,
                Change::Session(session, change) => {
                    session_event(stage, session, &change);
                    Ok(())
                }
                Change::ApiKey(key, change) => api_key_event(stage, key, change).await,
                Change::ServiceAccount(account, change) => {
                    service_account_event(stage, account, &change);
                    Ok(())
                }
            };
            outcome.map_err(|problem| ApplyError::of(event, problem))?;
        }
        for tenant in roles_changed {
            recompute_permissions(stage, tenant).await?;
        }
        Ok(())
    }
}

type Step = Result<(), String>;

async fn tenant_event(
    stage: &mut Stage,
    tenant: Uuid,
    change: TenantEvent,
    roles_changed: &mut BTreeSet<Uuid>,
) -> Step {
    let members = members_key(tenant);
    match change {
        TenantEvent::TenantCreated {
            tenant_id, owner, ..
        } => {
            if tenant_id.as_uuid() != tenant {
                return Err(format!(
                    "the payload names tenant {}, not the aggregate's id",
                    tenant_id.as_uuid()
                ));
            }
            stage.set(&tenant_key(tenant), "status", "active");
            stage.set(
                &members,
                &Principal::User(owner).to_string(),
                BuiltinRole::Owner.as_str(),
            );
            roles_changed.insert(tenant);
        }
        TenantEvent::TenantRenamed { .. } | TenantEvent::PlanChanged { .. } => {}
        TenantEvent::TenantSuspended { .. } => {
            stage.set(&tenant_key(tenant), "status", "suspended")
        }
        TenantEvent::TenantReactivated { .. } => stage.set(&tenant_key(tenant), "status", "active"),
        TenantEvent::TenantClosed { .. } => stage.set(&tenant_key(tenant), "status", "closed"),
        TenantEvent::MemberAdded {
            principal, roles, ..
        } => {
            stage.set(
                &members,
                &principal.to_string(),
                csv(roles.iter().map(RoleRef::as_str)),
            );
            roles_changed.insert(tenant);
        }
        TenantEvent::MemberRemoved { principal, .. } => {
            let principal = principal.to_string();
            if stage.field(&members, &principal).await?.is_none() {
                return Err(format!("{principal} is not a member to remove"));
            }
            stage.remove(&members, &principal);
            roles_changed.insert(tenant);
        }
        TenantEvent::RoleAssigned {
            principal, role, ..
        } => {
            change_roles(stage, tenant, &principal, |roles| {
                roles.insert(role.as_str().to_owned());
            })
            .await?;
            roles_changed.insert(tenant);
        }
        TenantEvent::RoleUnassigned {
            principal, role, ..
        } => {
            change_roles(stage, tenant, &principal, |roles| {
                roles.remove(role.as_str());
            })
            .await?;
            roles_changed.insert(tenant);
        }
        TenantEvent::RoleDefined {
            name, permissions, ..
        }
        | TenantEvent::RoleRedefined {
            name, permissions, ..
        } => {
            stage.set(
                &roles_key(tenant),
                name.as_str(),
                permission_strings(permissions).join(","),
            );
            roles_changed.insert(tenant);
        }
        TenantEvent::RoleDeleted { name, .. } => {
            stage.remove(&roles_key(tenant), name.as_str());
            roles_changed.insert(tenant);
        }
    }
    Ok(())
}

async fn change_roles(
    stage: &mut Stage,
    tenant: Uuid,
    principal: &Principal,
    change: impl FnOnce(&mut BTreeSet<String>),
) -> Step {
    let members = members_key(tenant);
    let principal = principal.to_string();
    let Some(roles) = stage.field(&members, &principal).await? else {
        return Err(format!("{principal} is not a member of the tenant"));
    };
    let mut roles = names(&roles);
    change(&mut roles);
    stage.set(&members, &principal, csv(roles.iter().map(String::as_str)));
    Ok(())
}

/// Rewrites `perms:<tenant>` from the tenant's members and custom roles, as the PostgreSQL
/// identity model and the domain compute effective permissions.
async fn recompute_permissions(stage: &mut Stage, tenant: Uuid) -> Result<(), ApplyError> {
    let defined = stage.hash(&roles_key(tenant)).await?.clone();
    let mut custom = BTreeMap::new();
    for (name, permissions) in defined {
        let set = names(&permissions)
            .iter()
            .map(|permission| permission.parse::<Permission>())
            .collect::<Result<PermissionSet, _>>()
            .map_err(|err| ApplyError {
                position: None,
                message: format!("custom role `{name}` of tenant {tenant}: {err}"),
            })?;
        custom.insert(name, set);
    }
    let members = stage.hash(&members_key(tenant)).await?.clone();
    let perms = perms_key(tenant);
    stage.delete(&perms);
    for (principal, roles) in members {
        let roles = names(&roles);
        let builtin = roles.iter().filter_map(|role| BuiltinRole::from_name(role));
        let defined = roles.iter().filter_map(|role| custom.get(role));
        let set = rbac::effective_permissions(builtin, defined);
        stage.set(&perms, &principal, permission_strings(set).join(","));
    }
    Ok(())
}

async fn user_event(stage: &mut Stage, user: Uuid, change: UserEvent) -> Step {
    let key = principal_key(&Principal::User(UserId::from_uuid(user)).to_string());
    match change {
        UserEvent::UserRegistered { tenant_id, .. } => {
            stage.set(&key, "tenant", tenant_id.as_uuid().to_string());
            stage.set(&key, "status", "active");
        }
        UserEvent::UserInvited { tenant_id, .. } => {
            stage.set(&key, "tenant", tenant_id.as_uuid().to_string());
            stage.set(&key, "status", "invited");
        }
        UserEvent::InvitationAccepted { .. } => stage.set(&key, "status", "active"),
        UserEvent::UserDeactivated { .. } => stage.set(&key, "status", "deactivated"),
        UserEvent::PasswordChanged { changed_at: at, .. }
        | UserEvent::AllSessionsRevoked { at } => void_sessions_before(stage, &key, at).await?,
        // A forgotten person is a deactivated principal whose sessions all ended; the model
        // held nothing personal of theirs to erase.
        UserEvent::SubjectForgotten { forgotten_at, .. } => {
            stage.set(&key, "status", "deactivated");
            void_sessions_before(stage, &key, forgotten_at).await?;
        }
        UserEvent::EmailVerificationIssued { .. }
        | UserEvent::EmailVerified { .. }
        | UserEvent::EmailChanged { .. }
        | UserEvent::LoginFailed { .. }
        | UserEvent::AccountLocked { .. }
        | UserEvent::LoginSucceeded { .. }
        | UserEvent::TotpEnrollmentStarted { .. }
        | UserEvent::TotpConfirmed { .. }
        | UserEvent::TotpCodeUsed { .. }
        | UserEvent::RecoveryCodeUsed { .. }
        | UserEvent::MfaDisabled { .. } => {}
    }
    Ok(())
}

/// Moves a user's `sessions_valid_after_us` forward to `at` (never backwards).
async fn void_sessions_before(stage: &mut Stage, key: &str, at: DateTime<Utc>) -> Step {
    let earlier = stage
        .field(key, "sessions_valid_after_us")
        .await?
        .and_then(|us| us.parse::<i64>().ok());
    let after = earlier.map_or(micros(at), |earlier| earlier.max(micros(at)));
    stage.set(key, "sessions_valid_after_us", after.to_string());
    Ok(())
}

fn session_event(stage: &mut Stage, session: Uuid, change: &SessionEvent) {
    let key = session_key(session);
    match change {
        SessionEvent::SessionOpened {
            user_id,
            tenant_id,
            expires_at,
            opened_at,
            ..
        } => {
            stage.set(&key, "user", user_id.as_uuid().to_string());
            stage.set(&key, "tenant", tenant_id.as_uuid().to_string());
            stage.set(&key, "status", "active");
            stage.set(&key, "generation", "1");
            stage.set(&key, "opened_at_us", micros(*opened_at).to_string());
            stage.set(&key, "expires_at_us", micros(*expires_at).to_string());
            stage.expire_at(&key, expires_at.timestamp_millis());
        }
        // A session's key lives until the session would have expired; later events of a
        // session whose key is gone change nothing a reader could see.
        SessionEvent::RefreshTokenRotated { generation, .. } => {
            stage.set_if_exists(&key, "generation", generation.to_string());
        }
        SessionEvent::RefreshTokenReused { .. } => {}
        SessionEvent::SessionRevoked { reason, .. } => {
            stage.set_if_exists(&key, "status", "revoked");
            stage.set_if_exists(&key, "reason", revocation_reason(*reason));
        }
        SessionEvent::SessionEnded {
            reason: EndReason::Logout,
            ..
        } => stage.set_if_exists(&key, "status", "ended"),
        SessionEvent::SessionExpired { .. } => stage.set_if_exists(&key, "status", "expired"),
    }
}

async fn api_key_event(stage: &mut Stage, key: Uuid, change: ApiKeyEvent) -> Step {
    match change {
        ApiKeyEvent::ApiKeyCreated {
            key_id,
            tenant_id,
            owner,
            hash,
            display_prefix,
            scopes,
            expires_at,
            ..
        } => {
            if key_id.as_uuid() != key {
                return Err(format!(
                    "the payload names API key {}, not the aggregate's id",
                    key_id.as_uuid()
                ));
            }
            let hot = HotApiKey {
                key_id: key,
                hash: hash.to_string(),
                tenant_id: tenant_id.as_uuid(),
                owner: owner.to_string(),
                scopes: permission_strings(scopes),
                status: "active".to_owned(),
                expires_at_us: expires_at.map(micros),
            };
            let json = serde_json::to_string(&hot).map_err(|err| err.to_string())?;
            stage.set(&api_key_key(&display_prefix), &key.to_string(), json);
            stage.set(&api_key_id_key(key), "prefix", display_prefix);
        }
        ApiKeyEvent::ApiKeyRevoked { .. } => {
            let Some(prefix) = stage.field(&api_key_id_key(key), "prefix").await? else {
                return Err("no API key with this id was created before this event".to_owned());
            };
            let holder = api_key_key(&prefix);
            let Some(json) = stage.field(&holder, &key.to_string()).await? else {
                return Err(format!("the API key is missing from {holder}"));
            };
            let mut hot: HotApiKey = serde_json::from_str(&json)
                .map_err(|err| format!("{holder} holds an unreadable key: {err}"))?;
            hot.status = "revoked".to_owned();
            let json = serde_json::to_string(&hot).map_err(|err| err.to_string())?;
            stage.set(&holder, &key.to_string(), json);
        }
    }
    Ok(())
}

fn service_account_event(stage: &mut Stage, account: Uuid, change: &ServiceAccountEvent) {
    let key =
        principal_key(&Principal::ServiceAccount(ServiceAccountId::from_uuid(account)).to_string());
    match change {
        ServiceAccountEvent::ServiceAccountCreated { tenant_id, .. } => {
            stage.set(&key, "tenant", tenant_id.as_uuid().to_string());
            stage.set(&key, "status", "enabled");
        }
        ServiceAccountEvent::ServiceAccountDisabled { .. } => stage.set(&key, "status", "disabled"),
        ServiceAccountEvent::ServiceAccountEnabled { .. } => stage.set(&key, "status", "enabled"),
        ServiceAccountEvent::ServiceAccountRenamed { .. }
        | ServiceAccountEvent::ClientSecretIssued { .. }
        | ServiceAccountEvent::ClientSecretRevoked { .. } => {}
    }
}

impl From<ApplyError> for String {
    fn from(err: ApplyError) -> Self {
        err.message
    }
}

/// Reads the live identity hot model: what the gateway asks on every request.
#[derive(Debug, Clone)]
pub struct IdentityHot {
    reader: ModelReader,
}

impl IdentityHot {
    /// A reader of the model under the key prefix `prefix`.
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            reader: ModelReader::new(conn, prefix, NAME, VERSION),
        }
    }

    /// The position the live model stands at; `None` while Redis holds no live model.
    pub async fn position(&self) -> Result<Option<i64>, ProjectionError> {
        self.reader.position().await
    }

    /// The API keys whose display prefix (the key's first 12 characters) is `prefix`.
    pub async fn api_keys(&self, prefix: &str) -> Result<Lookup<Vec<HotApiKey>>, ProjectionError> {
        Ok(match self.reader.hash(&api_key_key(prefix)).await? {
            Lookup::Unavailable => Lookup::Unavailable,
            Lookup::Found { position, value } => {
                let mut keys = Vec::new();
                for json in value.unwrap_or_default().values() {
                    keys.push(serde_json::from_str(json).map_err(|err| {
                        ProjectionError::Redis(format!("an unreadable API key: {err}"))
                    })?);
                }
                Lookup::Found {
                    position,
                    value: (!keys.is_empty()).then_some(keys),
                }
            }
        })
    }

    /// A session.
    pub async fn session(&self, session: Uuid) -> Result<Lookup<HotSession>, ProjectionError> {
        Ok(match self.reader.hash(&session_key(session)).await? {
            Lookup::Unavailable => Lookup::Unavailable,
            Lookup::Found { position, value } => Lookup::Found {
                position,
                value: value.and_then(|hash| {
                    Some(HotSession {
                        user_id: hash.get("user")?.parse().ok()?,
                        tenant_id: hash.get("tenant")?.parse().ok()?,
                        status: hash.get("status")?.clone(),
                        generation: hash.get("generation")?.parse().ok()?,
                        opened_at_us: hash.get("opened_at_us")?.parse().ok()?,
                        expires_at_us: hash.get("expires_at_us")?.parse().ok()?,
                    })
                }),
            },
        })
    }

    /// A user or service account (`user:<id>`, `service_account:<id>`).
    pub async fn principal(
        &self,
        principal: &str,
    ) -> Result<Lookup<HotPrincipal>, ProjectionError> {
        Ok(match self.reader.hash(&principal_key(principal)).await? {
            Lookup::Unavailable => Lookup::Unavailable,
            Lookup::Found { position, value } => Lookup::Found {
                position,
                value: value.and_then(|hash| {
                    Some(HotPrincipal {
                        tenant_id: hash.get("tenant")?.parse().ok()?,
                        status: hash.get("status")?.clone(),
                        sessions_valid_after_us: hash
                            .get("sessions_valid_after_us")
                            .and_then(|us| us.parse().ok()),
                    })
                }),
            },
        })
    }

    /// A tenant's status: `active`, `suspended` or `closed`.
    pub async fn tenant_status(&self, tenant: Uuid) -> Result<Lookup<String>, ProjectionError> {
        self.reader.field(&tenant_key(tenant), "status").await
    }

    /// The effective permissions of `principal` in `tenant`, sorted; `None` when it is not
    /// a member.
    pub async fn permissions(
        &self,
        tenant: Uuid,
        principal: &str,
    ) -> Result<Lookup<Vec<String>>, ProjectionError> {
        Ok(
            match self.reader.field(&perms_key(tenant), principal).await? {
                Lookup::Unavailable => Lookup::Unavailable,
                Lookup::Found { position, value } => Lookup::Found {
                    position,
                    value: value.map(|csv| names(&csv).into_iter().collect()),
                },
            },
        )
    }
}
