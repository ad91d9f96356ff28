//! The object types of the API, read from the identity read model.
//!
//! Personal fields (a user's email and name) are sealed in the read model exactly as the
//! events hold them; they are opened here, with the subject's key, for a caller allowed to
//! see them. A forgotten subject's fields read as `null` with `redacted: true`.

use async_graphql::{Enum, SimpleObject};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

use commands::privacy::{DataKey, Opened, open};
use domain::personal::{PersonalData, SubjectId};
use eventstore::PgSubjectKeys;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

/// A tenant: an organisation using the platform.
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
pub struct Tenant {
    /// Its id.
    #[sqlx(rename = "tenant_id")]
    pub id: Uuid,
    /// Its display name.
    pub name: String,
    /// The plan it is on.
    pub plan: String,
    /// `active`, `suspended` or `closed`.
    pub status: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The global position of the log this state is as of, when it was read with `asOf`;
    /// `null` for the current state, read from the read model.
    #[sqlx(skip)]
    pub as_of_position: Option<i64>,
}

/// A user of a tenant.
#[derive(Debug, Clone, SimpleObject)]
pub struct User {
    /// Its id.
    pub id: Uuid,
    /// The email address; `null` when the person was forgotten.
    pub email: Option<String>,
    /// The display name; `null` when unset or forgotten.
    pub name: Option<String>,
    /// Whether the person's personal data was erased.
    pub redacted: bool,
    /// `invited`, `active` or `deactivated`.
    pub status: String,
    /// Whether the email address was verified.
    pub email_verified: bool,
    /// Whether TOTP is enabled.
    pub mfa_enabled: bool,
    /// The roles the user holds in the tenant.
    pub roles: Vec<String>,
    /// When the user was created.
    pub created_at: DateTime<Utc>,
    /// The last successful login.
    pub last_login_at: Option<DateTime<Utc>>,
    /// The global position of the log this state is as of, when it was read with `asOf`;
    /// `null` for the current state, read from the read model.
    pub as_of_position: Option<i64>,
}

/// A user row as stored, before its personal fields are opened.
#[derive(Debug, sqlx::FromRow)]
pub struct UserRow {
    pub user_id: Uuid,
    pub email_sealed: String,
    pub name_sealed: Option<String>,
    pub status: String,
    pub email_verified: bool,
    pub mfa_enabled: bool,
    pub roles: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

/// The columns of [`UserRow`], with the user's roles in the tenant.
pub const USER_COLUMNS: &str = "u.user_id, u.email_sealed, u.name_sealed, u.status, \
     u.email_verified, u.mfa_enabled, m.roles, u.created_at, u.last_login_at";

/// The tables of [`USER_COLUMNS`].
pub const USER_FROM: &str = "users u LEFT JOIN memberships m \
     ON m.tenant_id = u.tenant_id AND m.principal = 'user:' || u.user_id::text";

impl UserRow {
    /// The subject whose key opens this row's personal fields.
    pub fn subject(&self) -> ApiResult<SubjectId> {
        Ok(parse_sealed(&self.email_sealed)?.subject())
    }

    /// Opens the personal fields with the subjects' keys (`keys` holds the live ones).
    pub fn open(self, keys: &HashMap<SubjectId, DataKey>) -> ApiResult<User> {
        let email_data = parse_sealed(&self.email_sealed)?;
        let key = keys.get(&email_data.subject());
        let email = opened(open(key, &email_data, "email"))?;
        let name = match &self.name_sealed {
            Some(sealed) => opened(open(key, &parse_sealed(sealed)?, "name"))?,
            None => None,
        };
        Ok(User {
            id: self.user_id,
            redacted: key.is_none(),
            email,
            name,
            status: self.status,
            email_verified: self.email_verified,
            mfa_enabled: self.mfa_enabled,
            roles: self.roles.unwrap_or_default(),
            created_at: self.created_at,
            last_login_at: self.last_login_at,
            as_of_position: None,
        })
    }
}

/// Opens the personal fields of `rows` with their subjects' keys, read in one query on the
/// read transaction's own connection.
pub async fn open_users(
    conn: &mut sqlx::PgConnection,
    keys: &PgSubjectKeys,
    rows: Vec<UserRow>,
) -> ApiResult<Vec<User>> {
    let subjects = rows
        .iter()
        .map(UserRow::subject)
        .collect::<ApiResult<Vec<_>>>()?;
    let found = keys
        .find_many(conn, &subjects)
        .await
        .map_err(ApiError::internal)?;
    rows.into_iter().map(|row| row.open(&found)).collect()
}

fn parse_sealed(text: &str) -> ApiResult<PersonalData> {
    serde_json::from_str(text).map_err(ApiError::internal)
}

fn opened(result: Result<Opened, commands::privacy::PrivacyError>) -> ApiResult<Option<String>> {
    match result.map_err(ApiError::internal)? {
        Opened::Plain(text) => Ok(Some(text)),
        Opened::Forgotten => Ok(None),
    }
}

/// A role: built in, or defined by the tenant.
#[derive(Debug, Clone, SimpleObject)]
pub struct Role {
    /// Its name.
    pub name: String,
    /// Whether the platform defines it.
    pub builtin: bool,
    /// The permissions it grants.
    pub permissions: Vec<String>,
}

/// A signed-in session.
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
pub struct Session {
    /// Its id.
    #[sqlx(rename = "session_id")]
    pub id: Uuid,
    /// The user.
    pub user_id: Uuid,
    /// `active`, `revoked`, `ended` or `expired`.
    pub status: String,
    /// Whether it was opened with a second factor.
    pub mfa: bool,
    /// When it was opened.
    pub opened_at: DateTime<Utc>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

/// An API key's metadata; never the key.
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
pub struct ApiKey {
    /// Its id.
    #[sqlx(rename = "key_id")]
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its first characters, to recognise it.
    pub display_prefix: String,
    /// The principal it acts for (`user:<id>` or `service_account:<id>`).
    pub owner: String,
    /// The permissions it may use.
    pub scopes: Vec<String>,
    /// When it expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used, to within a few seconds; `null` if never.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A service account: a machine identity of the tenant.
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
pub struct ServiceAccount {
    /// Its id, which is also its OAuth client id.
    #[sqlx(rename = "account_id")]
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Whether it may authenticate.
    pub enabled: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// How long a mutation waits before it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Default)]
pub enum Consistency {
    /// Answer as soon as the events are stored.
    #[default]
    Eventual,
    /// Answer once the read models include the mutation's events (read-your-writes).
    Strong,
}

/// What every mutation answers.
#[derive(Debug, Clone, SimpleObject)]
pub struct Outcome {
    /// The global position of the mutation's last event; `null` when nothing changed.
    pub position: Option<i64>,
    /// Whether the read models already include it (always true for `STRONG` unless the
    /// wait timed out).
    pub consistent: bool,
}
