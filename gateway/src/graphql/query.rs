//! Queries over the identity read model. Every resolver checks a permission, takes the
//! tenant from the caller, and reads through a transaction that row-level security binds
//! to that tenant. Lists are Relay connections over the rows' ids (UUIDv7, so in order of
//! creation), with opaque cursors and clamped page sizes.

use async_graphql::connection::{Connection, Edge, OpaqueCursor};
use async_graphql::{Context, Object, SimpleObject};
use domain::identity::principal::Principal;
use domain::identity::rbac::{BuiltinRole, Permission};
use uuid::Uuid;

use super::Request;
use super::history::{self, AsOf};
use super::types::{
    ApiKey, Role, ServiceAccount, Session, Tenant, USER_COLUMNS, USER_FROM, User, UserRow,
    open_users,
};
use crate::error::{ApiError, ApiResult};

/// A page of a list.
pub type Page<T> = Connection<OpaqueCursor<Uuid>, T>;

/// The root of every query.
#[derive(Debug, Default)]
pub struct QueryRoot;

/// The signed-in caller.
#[derive(Debug, Clone, SimpleObject)]
pub struct Me {
    /// `user:<id>` or `service_account:<id>`.
    pub principal: String,
    /// The caller's tenant.
    pub tenant_id: Uuid,
    /// The user, for a person.
    pub user: Option<User>,
    /// The caller's effective permissions (an API key's are narrowed to its scopes).
    pub permissions: Vec<String>,
}

fn after_id(after: Option<String>) -> ApiResult<Option<Uuid>> {
    after
        .map(|cursor| {
            <OpaqueCursor<Uuid> as async_graphql::connection::CursorType>::decode_cursor(&cursor)
                .map(|cursor| cursor.0)
                .map_err(|_| ApiError::bad_input("after", "is not a cursor of this list"))
        })
        .transpose()
}

/// Builds a connection from up to `size + 1` rows.
fn connection<T: async_graphql::OutputType>(
    mut rows: Vec<(Uuid, T)>,
    size: usize,
    after: Option<Uuid>,
) -> Page<T> {
    let has_next = rows.len() > size;
    rows.truncate(size);
    let mut page = Connection::new(after.is_some(), has_next);
    page.edges.extend(
        rows.into_iter()
            .map(|(id, node)| Edge::new(OpaqueCursor(id), node)),
    );
    page
}

fn limit(size: usize) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX).saturating_add(1)
}

/// A page of the rows `sql` selects (in order of their ids, after `$1`, at most `$2`), read
/// by a caller holding `permission`, under the caller's tenant.
async fn page_of<T>(
    request: &Request<'_>,
    permission: Permission,
    sql: &'static str,
    first: Option<i32>,
    after: Option<String>,
    id: impl Fn(&T) -> Uuid,
) -> ApiResult<Page<T>>
where
    T: async_graphql::OutputType + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let caller = request.require(permission).await?;
    let size = request.page_size(first)?;
    let after = after_id(after)?;
    let mut tx = request.read(caller.tenant_id).await?;
    let rows: Vec<T> = sqlx::query_as(sql)
        .bind(after)
        .bind(limit(size))
        .fetch_all(&mut *tx)
        .await
        .map_err(ApiError::internal)?;
    Ok(connection(
        rows.into_iter().map(|row| (id(&row), row)).collect(),
        size,
        after,
    ))
}

#[Object(name = "Query")]
impl QueryRoot {
    /// The caller: principal, tenant, user and effective permissions.
    async fn me(&self, ctx: &Context<'_>) -> ApiResult<Me> {
        let request = Request::of(ctx)?;
        let caller = request.context.caller.require()?;
        let permissions = request.permissions().await?;
        let user = match caller.principal {
            Principal::User(id) => {
                let mut tx = request.read(caller.tenant_id).await?;
                let row: Option<UserRow> = sqlx::query_as(&format!(
                    "SELECT {USER_COLUMNS} FROM {USER_FROM} WHERE u.user_id = $1"
                ))
                .bind(id.as_uuid())
                .fetch_optional(&mut *tx)
                .await
                .map_err(ApiError::internal)?;
                match row {
                    Some(row) => open_users(&mut tx, &request.services.keys, vec![row])
                        .await?
                        .pop(),
                    None => None,
                }
            }
            Principal::ServiceAccount(_) => None,
        };
        Ok(Me {
            principal: caller.principal.to_string(),
            tenant_id: caller.tenant_id,
            user,
            permissions: permissions.iter().map(|p| p.as_str().to_owned()).collect(),
        })
    }

    /// The caller's tenant. Needs `tenants:read`.
    ///
    /// With `asOf`, the tenant as it was at that position or time, rebuilt from its events
    /// (`NOT_FOUND` before it was created).
    async fn tenant(&self, ctx: &Context<'_>, as_of: Option<AsOf>) -> ApiResult<Tenant> {
        let request = Request::of(ctx)?;
        let caller = request.require(Permission::TenantsRead).await?;
        let mut tx = request.read(caller.tenant_id).await?;
        if let Some(as_of) = as_of {
            let position = history::position(&mut tx, as_of).await?;
            return history::tenant(&mut tx, caller.tenant_id, position).await;
        }
        sqlx::query_as(
            "SELECT tenant_id, name, plan, status, created_at FROM tenants WHERE tenant_id = $1",
        )
        .bind(caller.tenant_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("tenant"))
    }

    /// One user of the caller's tenant. Needs `users:read`.
    ///
    /// With `asOf`, the user as they were at that position or time, rebuilt from their
    /// events, with the roles they held then (`NOT_FOUND` before they were created). Personal
    /// fields open with today's keys: a person forgotten since is redacted in the past too.
    async fn user(&self, ctx: &Context<'_>, id: Uuid, as_of: Option<AsOf>) -> ApiResult<User> {
        let request = Request::of(ctx)?;
        let caller = request.require(Permission::UsersRead).await?;
        let mut tx = request.read(caller.tenant_id).await?;
        if let Some(as_of) = as_of {
            let position = history::position(&mut tx, as_of).await?;
            return history::user(
                &mut tx,
                &request.services.keys,
                caller.tenant_id,
                id,
                position,
            )
            .await;
        }
        let row: UserRow = sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS} FROM {USER_FROM} WHERE u.user_id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("user"))?;
        open_users(&mut tx, &request.services.keys, vec![row])
            .await?
            .pop()
            .ok_or_else(|| ApiError::not_found("user"))
    }

    /// The users of the caller's tenant, oldest first. Needs `users:read`.
    #[graphql(complexity = "first.unwrap_or(20).clamp(0, 100) as usize * child_complexity")]
    async fn users(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Page<User>> {
        let request = Request::of(ctx)?;
        let caller = request.require(Permission::UsersRead).await?;
        let size = request.page_size(first)?;
        let after = after_id(after)?;
        let mut tx = request.read(caller.tenant_id).await?;
        let rows: Vec<UserRow> = sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS} FROM {USER_FROM}
              WHERE u.user_id > COALESCE($1, '00000000-0000-0000-0000-000000000000'::uuid)
              ORDER BY u.user_id LIMIT $2"
        ))
        .bind(after)
        .bind(limit(size))
        .fetch_all(&mut *tx)
        .await
        .map_err(ApiError::internal)?;
        let users = open_users(&mut tx, &request.services.keys, rows).await?;
        Ok(connection(
            users.into_iter().map(|user| (user.id, user)).collect(),
            size,
            after,
        ))
    }

    /// The built-in roles and the tenant's own. Needs `roles:read`.
    async fn roles(&self, ctx: &Context<'_>) -> ApiResult<Vec<Role>> {
        let request = Request::of(ctx)?;
        let caller = request.require(Permission::RolesRead).await?;
        let mut roles: Vec<Role> = BuiltinRole::ALL
            .iter()
            .map(|role| Role {
                name: role.as_str().to_owned(),
                builtin: true,
                permissions: role
                    .permissions()
                    .iter()
                    .map(|p| p.as_str().to_owned())
                    .collect(),
            })
            .collect();
        let mut tx = request.read(caller.tenant_id).await?;
        let custom: Vec<(String, Vec<String>)> =
            sqlx::query_as("SELECT name, permissions FROM custom_roles ORDER BY name")
                .fetch_all(&mut *tx)
                .await
                .map_err(ApiError::internal)?;
        roles.extend(custom.into_iter().map(|(name, permissions)| Role {
            name,
            builtin: false,
            permissions,
        }));
        Ok(roles)
    }

    /// Every permission the platform knows, with what it allows.
    async fn permissions(&self, ctx: &Context<'_>) -> ApiResult<Vec<String>> {
        let request = Request::of(ctx)?;
        request.context.caller.require()?;
        Ok(Permission::ALL
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect())
    }

    /// The tenant's sessions, oldest first. Needs `sessions:read`.
    #[graphql(complexity = "first.unwrap_or(20).clamp(0, 100) as usize * child_complexity")]
    async fn sessions(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Page<Session>> {
        let request = Request::of(ctx)?;
        page_of(
            &request,
            Permission::SessionsRead,
            "SELECT session_id, user_id, status, mfa, opened_at, expires_at FROM sessions
              WHERE session_id > COALESCE($1, '00000000-0000-0000-0000-000000000000'::uuid)
              ORDER BY session_id LIMIT $2",
            first,
            after,
            |row: &Session| row.id,
        )
        .await
    }

    /// The tenant's API keys, oldest first; never the keys themselves. Needs `api_keys:read`.
    #[graphql(complexity = "first.unwrap_or(20).clamp(0, 100) as usize * child_complexity")]
    async fn api_keys(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Page<ApiKey>> {
        let request = Request::of(ctx)?;
        page_of(
            &request,
            Permission::ApiKeysRead,
            "SELECT k.key_id, k.name, k.display_prefix, k.owner, k.scopes, k.expires_at,
                    k.revoked_at, k.created_at, u.last_used_at
               FROM api_keys k LEFT JOIN public.api_key_usage u ON u.key_id = k.key_id
              WHERE k.key_id > COALESCE($1, '00000000-0000-0000-0000-000000000000'::uuid)
              ORDER BY k.key_id LIMIT $2",
            first,
            after,
            |row: &ApiKey| row.id,
        )
        .await
    }

    /// The tenant's service accounts, oldest first. Needs `service_accounts:read`.
    #[graphql(complexity = "first.unwrap_or(20).clamp(0, 100) as usize * child_complexity")]
    async fn service_accounts(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Page<ServiceAccount>> {
        let request = Request::of(ctx)?;
        page_of(
            &request,
            Permission::ServiceAccountsRead,
            "SELECT account_id, name, enabled, created_at FROM service_accounts
              WHERE account_id > COALESCE($1, '00000000-0000-0000-0000-000000000000'::uuid)
              ORDER BY account_id LIMIT $2",
            first,
            after,
            |row: &ServiceAccount| row.id,
        )
        .await
    }
}
