//! Who is calling: access tokens, API keys and service accounts, resolved into a [`Caller`].
//!
//! A request proves who it is with `Authorization: Bearer <token>` (an access JWT, or an API
//! key, which is recognisable by its `pck_` prefix and checksum) or with `x-api-key: <key>`.
//! Revocation is looked up in Redis first (the `identity_hot` model) and in PostgreSQL when
//! Redis has no live model or does not know the session or key yet, so a revoked session or key stops working as soon as the models
//! have applied the revocation, which is well under a second.
//!
//! What a credential proved (the caller and its permissions) is remembered for a moment
//! ([`Authenticator::with_memory`]), stamped with its tenant's generation
//! ([`crate::freshness`]): an event of the tenant (a revocation, a role change) or the
//! time to live ends it, so a repeated request costs no round trip to Redis or PostgreSQL and
//! a revocation still takes effect as soon as the models apply it.
//!
//! The key decision: the tenant always comes from the credential. Resolvers take it from
//! the [`Caller`], never from an argument, and every permission is checked against the
//! caller's effective permissions in that tenant (narrowed to an API key's scopes).

pub mod jwt;
pub mod keys;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use commands::bus::{EventLog, UnitOfWork};
use commands::security::api_key::ApiKeySecret;
use domain::ActorKind;
use domain::identity::api_key::ApiKey;
use domain::identity::principal::Principal;
use domain::identity::rbac::{Permission, PermissionSet};
use eventstore::KeyUsage;
use projections::identity_hot::IdentityHot;
use projections::redis::Lookup;
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::ApiError;
use crate::freshness::{Freshness, Stamp};
use domain::identity::values::{ServiceAccountId, UserId};
use jwt::{AccessGrant, PrincipalKind};
use keys::Keyring;

/// How a caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// An access token of a session (users) or of a client-credentials grant (service
    /// accounts).
    AccessToken {
        /// The session, for users.
        session_id: Option<Uuid>,
        /// Whether the session was opened with a second factor.
        mfa: bool,
    },
    /// An API key, which acts for its owner within its scopes.
    ApiKey {
        /// The key's id.
        key_id: Uuid,
        /// What the key may do, at most.
        scopes: PermissionSet,
    },
}

/// A caller who proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The user or service account.
    pub principal: Principal,
    /// The tenant the credential belongs to; the only tenant the caller acts in.
    pub tenant_id: Uuid,
    /// How it proved it.
    pub credential: Credential,
}

impl Authenticated {
    /// The principal's kind, for command metadata.
    pub fn actor_kind(&self) -> ActorKind {
        match self.principal {
            Principal::User(_) => ActorKind::User,
            Principal::ServiceAccount(_) => ActorKind::ServiceAccount,
        }
    }

    /// The principal's id, for command metadata.
    pub fn actor_id(&self) -> String {
        match self.principal {
            Principal::User(id) => id.to_string(),
            Principal::ServiceAccount(id) => id.to_string(),
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credential was presented.
    Anonymous,
    /// A credential was presented and holds.
    Authenticated(Authenticated),
}

impl Caller {
    /// The authenticated caller, or UNAUTHENTICATED.
    pub fn require(&self) -> Result<&Authenticated, ApiError> {
        match self {
            Self::Authenticated(caller) => Ok(caller),
            Self::Anonymous => Err(ApiError::unauthenticated(
                "no_credential",
                "sign in first: send `Authorization: Bearer <access token or API key>`",
            )),
        }
    }
}

/// Resolves credentials and permissions.
#[derive(Clone)]
pub struct Authenticator<L> {
    keyring: Keyring,
    usage: KeyUsage,
    hot: IdentityHot,
    pool: PgPool,
    log: L,
    clock: Arc<dyn commands::identity::Clock>,
    memory: Option<Memory>,
}

/// How many credentials an authenticator remembers.
const REMEMBERED_CREDENTIALS: usize = 16_384;

/// What identifies a credential in memory: an access token's id (its `jti`, signed, so only
/// a token that verified has it), or an API key's hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CredentialKey {
    Token(Uuid),
    ApiKey(domain::identity::credentials::SecretHash),
}

/// What a credential proved, under the stamp taken before its reads.
struct Proved {
    caller: Authenticated,
    permissions: PermissionSet,
    stamp: Stamp,
}

/// Credentials proved a moment ago.
#[derive(Clone)]
struct Memory {
    proved: Arc<quick_cache::sync::Cache<CredentialKey, Arc<Proved>>>,
    freshness: Freshness,
    ttl: Duration,
}

impl Memory {
    fn recall(&self, key: &CredentialKey) -> Option<Arc<Proved>> {
        self.proved
            .get(key)
            .filter(|proved| proved.stamp.age() < self.ttl && self.freshness.holds(&proved.stamp))
    }

    fn keep(
        &self,
        key: CredentialKey,
        caller: &Authenticated,
        permissions: PermissionSet,
        stamp: Stamp,
    ) {
        // A change that came during the reads ends the entry before it is kept.
        if self.freshness.holds(&stamp) && stamp.age() < self.ttl {
            self.proved.insert(
                key,
                Arc::new(Proved {
                    caller: caller.clone(),
                    permissions,
                    stamp,
                }),
            );
        }
    }
}

impl<L> std::fmt::Debug for Authenticator<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

/// The credential a request presents, before it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// None.
    Nothing,
    /// A bearer token: an access JWT.
    Token(String),
    /// An API key.
    ApiKey(String),
}

impl Presented {
    /// Reads `Authorization` and `x-api-key`. Presenting both is refused as ambiguous.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Result<Self, ApiError> {
        let bearer = match headers.get(axum::http::header::AUTHORIZATION) {
            None => None,
            Some(value) => {
                let text = value.to_str().map_err(|_| malformed())?;
                let (scheme, token) = text.split_once(' ').ok_or_else(malformed)?;
                if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                    return Err(malformed());
                }
                Some(token.trim().to_owned())
            }
        };
        let api_key = match headers.get("x-api-key") {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| malformed())?.trim().to_owned()),
        };
        Ok(match (bearer, api_key) {
            (Some(_), Some(_)) => {
                return Err(ApiError::unauthenticated(
                    "ambiguous_credential",
                    "send either `Authorization` or `x-api-key`, not both",
                ));
            }
            (Some(token), None) if token.starts_with(commands::security::api_key::PREFIX) => {
                Self::ApiKey(token)
            }
            (Some(token), None) => Self::Token(token),
            (None, Some(key)) => Self::ApiKey(key),
            (None, None) => Self::Nothing,
        })
    }
}

fn parse_api_key(text: &str) -> Result<ApiKeySecret, ApiError> {
    ApiKeySecret::parse(text)
        .map_err(|err| ApiError::unauthenticated("malformed_api_key", format!("the API key {err}")))
}

fn malformed() -> ApiError {
    ApiError::unauthenticated(
        "malformed_credential",
        "the `Authorization` header must be `Bearer <access token or API key>`",
    )
}

fn revoked(what: &str) -> ApiError {
    ApiError::unauthenticated("revoked", format!("this {what} was revoked or has ended"))
}

/// Converts a model's microsecond timestamp.
fn micros(us: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
}

impl<L: EventLog + Clone> Authenticator<L> {
    /// An authenticator over the keyring, the hot model, the read models and the log.
    pub fn new(
        keyring: Keyring,
        hot: IdentityHot,
        pool: PgPool,
        log: L,
        clock: Arc<dyn commands::identity::Clock>,
    ) -> Self {
        Self {
            usage: KeyUsage::new(pool.clone()),
            keyring,
            hot,
            pool,
            log,
            clock,
            memory: None,
        }
    }

    /// The same authenticator, remembering what each credential proved for at most `ttl`,
    /// while `freshness` shows no change of its tenant.
    #[must_use]
    pub fn with_memory(mut self, freshness: Freshness, ttl: Duration) -> Self {
        self.memory = (!ttl.is_zero()).then(|| Memory {
            proved: Arc::new(quick_cache::sync::Cache::new(REMEMBERED_CREDENTIALS)),
            freshness,
            ttl,
        });
        self
    }

    /// Where API keys' uses gather until they are written.
    pub fn key_usage(&self) -> &KeyUsage {
        &self.usage
    }

    /// The keyring that signs and checks access tokens.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Signs an access token for `principal` of `tenant`; returns it and its lifetime in
    /// seconds. A user's token belongs to a session.
    pub fn issue(
        &self,
        principal: Principal,
        tenant: Uuid,
        session: Option<Uuid>,
        mfa: bool,
    ) -> Result<(String, i64), ApiError> {
        let grant = match (principal, session) {
            (Principal::User(user), Some(session)) => {
                AccessGrant::user(user.as_uuid(), tenant, session, mfa)
            }
            (Principal::User(_), None) => {
                return Err(ApiError::internal("a user's access token needs a session"));
            }
            (Principal::ServiceAccount(account), session) => {
                AccessGrant::service_account(account.as_uuid(), tenant, session)
            }
        };
        let issued = self.keyring.sign(&grant).map_err(ApiError::internal)?;
        Ok((issued.token, issued.claims.exp - issued.claims.iat))
    }

    /// Checks a presented credential and finds the caller's permissions: what every request
    /// needs first. A credential proved a moment ago is answered from memory while its
    /// tenant has not changed. `alongside` (the rate limit) runs once the caller is known, at
    /// the same time as the permissions' look-up.
    pub async fn authorize<F, T>(
        &self,
        presented: &Presented,
        alongside: impl FnOnce(&Caller) -> F,
    ) -> Result<(Caller, Option<PermissionSet>, T), ApiError>
    where
        F: std::future::Future<Output = T>,
    {
        let memory = self.memory.as_ref();
        // The credential's key in memory, and the stamp to keep what it proves under.
        let (authenticated, kept) = match presented {
            Presented::Nothing => {
                let caller = Caller::Anonymous;
                let extra = alongside(&caller).await;
                return Ok((caller, None, extra));
            }
            Presented::Token(token) => {
                let claims = self
                    .keyring
                    .verify(token)
                    .map_err(|err| ApiError::unauthenticated(err.reason(), err.to_string()))?;
                let key = CredentialKey::Token(claims.jti);
                if let Some(proved) = memory.and_then(|memory| memory.recall(&key)) {
                    return Ok(Self::recalled(&proved, alongside).await);
                }
                // Stamped before the reads, so that a change during them ends the entry.
                let stamp = memory.and_then(|memory| memory.freshness.stamp(claims.tid));
                let caller = self.check_claims(claims).await?;
                (caller, stamp.map(|stamp| (key, stamp, None)))
            }
            Presented::ApiKey(text) => {
                let secret = parse_api_key(text)?;
                let key = CredentialKey::ApiKey(secret.hash());
                if let Some(proved) = memory.and_then(|memory| memory.recall(&key)) {
                    self.record_use(&proved.caller);
                    return Ok(Self::recalled(&proved, alongside).await);
                }
                // The key's tenant is known only once it is read: the entry is kept only if no
                // generation moved during the reads.
                let changes = memory.map(|memory| memory.freshness.changes());
                let caller = self.api_key_holder(&secret).await?;
                let stamp = memory.and_then(|memory| memory.freshness.stamp(caller.tenant_id));
                (
                    caller,
                    stamp
                        .zip(changes)
                        .map(|(stamp, changes)| (key, stamp, Some(changes))),
                )
            }
        };
        let caller = Caller::Authenticated(authenticated);
        let permissions = async {
            match &caller {
                Caller::Authenticated(authenticated) => {
                    self.permissions(authenticated).await.map(Some)
                }
                Caller::Anonymous => Ok(None),
            }
        };
        let (permissions, extra) = tokio::join!(permissions, alongside(&caller));
        let permissions = permissions?;
        if let (
            Some(memory),
            Some((key, stamp, changes)),
            Caller::Authenticated(authenticated),
            Some(permissions),
        ) = (memory, kept, &caller, permissions)
            && changes.is_none_or(|changes| memory.freshness.changes() == changes)
        {
            memory.keep(key, authenticated, permissions, stamp);
        }
        Ok((caller, permissions, extra))
    }

    async fn recalled<F, T>(
        proved: &Proved,
        alongside: impl FnOnce(&Caller) -> F,
    ) -> (Caller, Option<PermissionSet>, T)
    where
        F: std::future::Future<Output = T>,
    {
        let caller = Caller::Authenticated(proved.caller.clone());
        let extra = alongside(&caller).await;
        (caller, Some(proved.permissions), extra)
    }

    fn record_use(&self, caller: &Authenticated) {
        if let Credential::ApiKey { key_id, .. } = caller.credential {
            self.usage
                .record(key_id, caller.tenant_id, self.clock.now());
        }
    }

    /// An API key's caller, whose holder must still be active.
    async fn api_key_holder(&self, secret: &ApiKeySecret) -> Result<Authenticated, ApiError> {
        let caller = self.api_key(secret).await?;
        // The key's holder must still be active: a deactivated or forgotten user's keys stop
        // working with them.
        self.check_principal(&caller.principal, None).await?;
        self.record_use(&caller);
        Ok(caller)
    }

    /// The caller of verified claims, whose session and principal must still hold.
    async fn check_claims(&self, claims: jwt::AccessClaims) -> Result<Authenticated, ApiError> {
        let principal = match claims.pkind {
            PrincipalKind::User => Principal::User(UserId::from_uuid(claims.sub)),
            PrincipalKind::ServiceAccount => {
                Principal::ServiceAccount(ServiceAccountId::from_uuid(claims.sub))
            }
        };
        let now = self.clock.now();
        // Both lookups go out at once: the Redis connection pipelines them.
        let session = async {
            match claims.sid {
                Some(session) => self.check_session(session, now).await,
                None => Ok(()),
            }
        };
        let (session, holder) = tokio::join!(session, self.check_principal(&principal, claims.sid));
        session?;
        holder?;
        Ok(Authenticated {
            principal,
            tenant_id: claims.tid,
            credential: Credential::AccessToken {
                session_id: claims.sid,
                mfa: claims.mfa,
            },
        })
    }

    /// A session holds if the hot model shows it active. When the model does not know it
    /// (it was opened a moment ago and the model lags, or Redis has no live model), the
    /// session's aggregate in the log decides.
    async fn check_session(&self, session: Uuid, now: DateTime<Utc>) -> Result<(), ApiError> {
        match self.hot.session(session).await {
            Ok(Lookup::Found {
                value: Some(hot), ..
            }) => {
                let expired = micros(hot.expires_at_us).is_none_or(|at| at <= now);
                if hot.status != "active" || expired {
                    return Err(revoked("session"));
                }
                Ok(())
            }
            Ok(_) => self.check_session_in_log(session, now).await,
            Err(err) => {
                tracing::warn!("redis: {err}; checking the session in the log");
                self.check_session_in_log(session, now).await
            }
        }
    }

    async fn check_session_in_log(
        &self,
        session: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), ApiError> {
        let metadata = commands::CommandMetadata::new("gateway", ActorKind::System, None);
        let reader = UnitOfWork::new(&self.log, &metadata);
        let loaded = reader
            .load::<domain::identity::session::Session>(&session.to_string())
            .await
            .map_err(ApiError::internal)?;
        if loaded.state().is_active(now) {
            Ok(())
        } else {
            Err(revoked("session"))
        }
    }

    /// The principal must be active, and a user's session must be newer than their last
    /// "sign out everywhere" or password change.
    async fn check_principal(
        &self,
        principal: &Principal,
        session: Option<Uuid>,
    ) -> Result<(), ApiError> {
        if let Ok(Lookup::Found {
            value: Some(hot), ..
        }) = self.hot.principal(&principal.to_string()).await
        {
            if hot.status == "deactivated" || hot.status == "disabled" {
                return Err(ApiError::unauthenticated(
                    "principal_inactive",
                    "this account is deactivated",
                ));
            }
            if let (Some(valid_after), Some(session)) = (hot.sessions_valid_after_us, session)
                && let Ok(Lookup::Found {
                    value: Some(hot_session),
                    ..
                }) = self.hot.session(session).await
                && hot_session.opened_at_us <= valid_after
            {
                return Err(revoked("session"));
            }
        }
        Ok(())
    }

    async fn api_key(&self, secret: &ApiKeySecret) -> Result<Authenticated, ApiError> {
        let presented = secret.hash();
        let now = self.clock.now();
        let candidates = match self.hot.api_keys(&secret.display_prefix()).await {
            Ok(Lookup::Found { value, .. }) => Some(value.unwrap_or_default()),
            Ok(Lookup::Unavailable) => None,
            Err(err) => {
                tracing::warn!("redis: {err}; checking the API key in PostgreSQL");
                None
            }
        };
        match candidates {
            Some(candidates) => {
                let Some(key) = candidates.into_iter().find(|key| {
                    bool::from(key.hash.as_bytes().ct_eq(presented.to_string().as_bytes()))
                }) else {
                    // A key made a moment ago may not be in the hot model yet (a STRONG
                    // write waits for PostgreSQL's model only): the read model and the log
                    // decide, as for a session the model does not know.
                    return self.api_key_from_log(secret, now).await;
                };
                let expired = key
                    .expires_at_us
                    .and_then(micros)
                    .is_some_and(|at| at <= now);
                if key.status != "active" || expired {
                    return Err(revoked("API key"));
                }
                let principal: Principal = key
                    .owner
                    .parse()
                    .map_err(|_| ApiError::internal("an API key's owner is malformed"))?;
                let scopes = key
                    .scopes
                    .iter()
                    .filter_map(|scope| scope.parse::<Permission>().ok())
                    .collect();
                Ok(Authenticated {
                    principal,
                    tenant_id: key.tenant_id,
                    credential: Credential::ApiKey {
                        key_id: key.key_id,
                        scopes,
                    },
                })
            }
            None => self.api_key_from_log(secret, now).await,
        }
    }

    /// Without Redis: the read model finds the keys with the prefix, and each key's
    /// aggregate in the log holds its hash.
    async fn api_key_from_log(
        &self,
        secret: &ApiKeySecret,
        now: DateTime<Utc>,
    ) -> Result<Authenticated, ApiError> {
        let ids: Vec<Uuid> =
            sqlx::query_scalar("SELECT key_id FROM rm_identity.api_keys WHERE display_prefix = $1")
                .bind(secret.display_prefix())
                .fetch_all(&self.pool)
                .await
                .map_err(ApiError::internal)?;
        let presented = secret.hash();
        let metadata = commands::CommandMetadata::new("gateway", ActorKind::System, None);
        let reader = UnitOfWork::new(&self.log, &metadata);
        for id in ids {
            let loaded = reader
                .load::<ApiKey>(&id.to_string())
                .await
                .map_err(ApiError::internal)?;
            let key = loaded.state();
            let matches = key.hash().is_some_and(|hash| {
                bool::from(
                    hash.to_string()
                        .as_bytes()
                        .ct_eq(presented.to_string().as_bytes()),
                )
            });
            if !matches {
                continue;
            }
            if !key.is_usable(now) {
                return Err(revoked("API key"));
            }
            let (Some(principal), Some(tenant)) = (key.owner(), key.tenant()) else {
                return Err(revoked("API key"));
            };
            return Ok(Authenticated {
                principal,
                tenant_id: tenant.as_uuid(),
                credential: Credential::ApiKey {
                    key_id: id,
                    scopes: key.scopes(),
                },
            });
        }
        Err(ApiError::unauthenticated(
            "unknown_api_key",
            "this API key is not known",
        ))
    }

    /// The user, tenant and second-factor flag of a session, from its aggregate.
    pub async fn session_holder(
        &self,
        session: Uuid,
    ) -> Result<(domain::identity::values::UserId, Uuid, bool), ApiError> {
        let metadata = commands::CommandMetadata::new("gateway", ActorKind::System, None);
        let reader = UnitOfWork::new(&self.log, &metadata);
        let loaded = reader
            .load::<domain::identity::session::Session>(&session.to_string())
            .await
            .map_err(ApiError::internal)?;
        let state = loaded.state();
        match (state.user(), state.tenant()) {
            (Some(user), Some(tenant)) => Ok((user, tenant.as_uuid(), state.mfa())),
            _ => Err(revoked("session")),
        }
    }

    /// The caller's effective permissions in its tenant, narrowed to an API key's scopes.
    pub async fn permissions(&self, caller: &Authenticated) -> Result<PermissionSet, ApiError> {
        let principal = caller.principal.to_string();
        let names = match self.hot.permissions(caller.tenant_id, &principal).await {
            Ok(Lookup::Found { value, .. }) => value.unwrap_or_default(),
            Ok(Lookup::Unavailable) => self.permissions_in_postgres(caller, &principal).await?,
            Err(err) => {
                tracing::warn!("redis: {err}; reading permissions from PostgreSQL");
                self.permissions_in_postgres(caller, &principal).await?
            }
        };
        let held: PermissionSet = names
            .iter()
            .filter_map(|name| name.parse::<Permission>().ok())
            .collect();
        Ok(match &caller.credential {
            Credential::ApiKey { scopes, .. } => held.intersection(*scopes),
            Credential::AccessToken { .. } => held,
        })
    }

    async fn permissions_in_postgres(
        &self,
        caller: &Authenticated,
        principal: &str,
    ) -> Result<Vec<String>, ApiError> {
        let row: Option<Vec<String>> = sqlx::query_scalar(
            "SELECT permissions FROM rm_identity.effective_permissions
              WHERE tenant_id = $1 AND principal = $2",
        )
        .bind(caller.tenant_id)
        .bind(principal)
        .fetch_optional(&self.pool)
        .await
        .map_err(ApiError::internal)?;
        Ok(row.unwrap_or_default())
    }
}
