//! The GraphQL API: the schema, its limits, and what every resolver shares.
//!
//! Each request carries a [`RequestContext`]: its id, where it came from, its idempotency
//! key, and the [`Caller`] its credential proved. Resolvers get the tenant from the caller
//! only, and check a permission before they read or change anything ([`Request::require`]).
//! The read models are read as `platform_reader` in a transaction bound to the caller's
//! tenant, so PostgreSQL's row-level security holds even if a resolver forgot a filter.

pub mod history;
pub mod limits;
pub mod mutation;
pub mod query;
pub mod subscription;
pub mod telemetry;
pub mod types;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::{Context, Schema};
use commands::identity::Identity;
use commands::{ClientIp, CommandMetadata, UserAgent};
use domain::identity::rbac::{Permission, PermissionSet};
use eventstore::{EventRepository, PgSubjectKeys};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::answers::Answers;
use crate::auth::{Authenticated, Authenticator, Caller};
use crate::error::{ApiError, ApiResult};
use crate::feed::Feed;
use crate::freshness::Freshness;
use crate::metrics::Metrics;
use crate::ratelimit::{Limits, RateLimiter};

pub use mutation::MutationRoot;
pub use query::QueryRoot;
pub use subscription::SubscriptionRoot;

/// The schema the gateway serves.
pub type ApiSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// The identity service over the platform's log and key store.
pub type IdentityService = Identity<EventRepository, PgSubjectKeys>;

/// How the API behaves.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Answer introspection queries (off in production).
    pub introspection: bool,
    /// Deepest selection allowed.
    pub max_depth: usize,
    /// Highest complexity (one per field, times page sizes for lists) allowed.
    pub max_complexity: usize,
    /// Most aliased fields in one document.
    pub max_aliases: usize,
    /// Most directives in one document.
    pub max_directives: usize,
    /// Largest page a list returns; larger `first` values are clamped to it.
    pub max_page: usize,
    /// The page a list returns when `first` is absent.
    pub default_page: usize,
    /// How long a mutation with `consistency: STRONG` waits for the read models.
    pub consistency_timeout: Duration,
    /// `iss` and `aud` of access tokens, and the lifetime of a new one.
    pub access_token_lifetime: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            introspection: true,
            max_depth: 12,
            max_complexity: 1_000,
            max_aliases: 30,
            max_directives: 50,
            max_page: 100,
            default_page: 20,
            consistency_timeout: Duration::from_secs(5),
            access_token_lifetime: Duration::from_secs(15 * 60),
        }
    }
}

/// What every request shares: the services behind the API.
pub struct Services {
    /// The identity commands.
    pub identity: IdentityService,
    /// Credentials and permissions.
    pub auth: Authenticator<EventRepository>,
    /// The application role's pool.
    pub pool: PgPool,
    /// Subjects' data keys, to open personal fields.
    pub keys: PgSubjectKeys,
    /// The key that seals what the gateway keeps for later (idempotent answers).
    pub secrets: commands::privacy::DataKey,
    /// Rate limits, and their policies.
    pub limiter: RateLimiter,
    /// The policies the limiter applies.
    pub limits: Limits,
    /// Metrics.
    pub metrics: Metrics,
    /// The event feed behind subscriptions.
    pub feed: Feed,
    /// Which remembered answers still hold.
    pub freshness: Freshness,
    /// Query answers remembered for a moment; `None` when turned off.
    pub answers: Option<Answers>,
    /// How the API behaves.
    pub config: ApiConfig,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One request: where it came from and who sent it.
#[derive(Debug)]
pub struct RequestContext {
    /// Its id, returned in `x-request-id` and in error extensions.
    pub request_id: Uuid,
    /// The peer's address.
    pub client_ip: Option<IpAddr>,
    /// The `User-Agent` header, cut to 256 characters.
    pub user_agent: Option<String>,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// Who is calling.
    pub caller: Caller,
    permissions: OnceCell<PermissionSet>,
}

impl RequestContext {
    /// A request's context.
    pub fn new(
        request_id: Uuid,
        client_ip: Option<IpAddr>,
        user_agent: Option<String>,
        idempotency_key: Option<String>,
        caller: Caller,
    ) -> Self {
        Self {
            request_id,
            client_ip,
            user_agent: user_agent.map(|agent| agent.chars().take(256).collect()),
            idempotency_key,
            caller,
            permissions: OnceCell::new(),
        }
    }

    /// The same context with the caller's permissions already looked up.
    #[must_use]
    pub fn with_permissions(self, permissions: Option<PermissionSet>) -> Self {
        Self {
            permissions: OnceCell::new_with(permissions),
            ..self
        }
    }
}

/// A resolver's view of its request.
pub struct Request<'a> {
    /// The services.
    pub services: &'a Arc<Services>,
    /// The request.
    pub context: &'a RequestContext,
}

impl<'a> Request<'a> {
    /// The request of a resolver's context.
    pub fn of(ctx: &Context<'a>) -> ApiResult<Self> {
        let services = ctx
            .data::<Arc<Services>>()
            .map_err(|_| ApiError::internal("the schema was built without its services"))?;
        let context = ctx
            .data::<Arc<RequestContext>>()
            .map_err(|_| ApiError::internal("the request has no context"))?;
        Ok(Self { services, context })
    }

    /// The caller, who must be authenticated and hold `permission` in its tenant.
    pub async fn require(&self, permission: Permission) -> ApiResult<&'a Authenticated> {
        let caller = self.context.caller.require()?;
        if !self.permissions().await?.contains(permission) {
            return Err(ApiError::forbidden(permission.as_str()));
        }
        Ok(caller)
    }

    /// The caller's permissions in its tenant (looked up once per request).
    pub async fn permissions(&self) -> ApiResult<PermissionSet> {
        let caller = self.context.caller.require()?;
        self.context
            .permissions
            .get_or_try_init(|| self.services.auth.permissions(caller))
            .await
            .copied()
    }

    /// Metadata for a command the caller issues (anonymous callers act as `anonymous`).
    pub fn metadata(&self) -> CommandMetadata {
        let mut metadata = match &self.context.caller {
            Caller::Authenticated(caller) => CommandMetadata::new(
                caller.actor_id(),
                caller.actor_kind(),
                Some(caller.tenant_id),
            ),
            Caller::Anonymous => {
                CommandMetadata::new("anonymous", domain::ActorKind::Anonymous, None)
            }
        };
        metadata.request_id = self.context.request_id;
        metadata.correlation_id = self.context.request_id;
        metadata.idempotency_key = self.context.idempotency_key.clone();
        metadata.client_ip = self.context.client_ip.map(ClientIp::Plain);
        metadata.user_agent = self.context.user_agent.as_deref().map(UserAgent::plain);
        metadata
    }

    /// A read-only transaction as `platform_reader`, bound to `tenant`: row-level security
    /// shows it that tenant's rows of the read models and nothing else.
    pub async fn read(&self, tenant: Uuid) -> ApiResult<Transaction<'static, Postgres>> {
        let mut tx = self
            .services
            .pool
            .begin_with("BEGIN READ ONLY")
            .await
            .map_err(ApiError::internal)?;
        // One round trip: the tenant the policies compare with, the read models' schema,
        // and the role the policies apply to, each for this transaction only.
        sqlx::query(
            "SELECT set_config('platform.tenant_id', $1, true),
                    set_config('search_path', 'rm_identity, public', true),
                    set_config('role', 'platform_reader', true)",
        )
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await
        .map_err(ApiError::internal)?;
        Ok(tx)
    }

    /// Clamps a page size asked for by `first`.
    pub fn page_size(&self, first: Option<i32>) -> ApiResult<usize> {
        let config = &self.services.config;
        match first {
            None => Ok(config.default_page),
            Some(n) if n < 0 => Err(ApiError::bad_input("first", "must not be negative")),
            Some(n) => Ok(usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(config.max_page)),
        }
    }
}

/// Builds the schema over `services`, with the limits of its configuration.
pub fn build(services: Arc<Services>) -> ApiSchema {
    let config = services.config.clone();
    let mut builder = Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .data(services)
        .limit_depth(config.max_depth)
        .limit_complexity(config.max_complexity)
        .limit_recursive_depth(64)
        .limit_directives(config.max_directives)
        .extension(telemetry::Telemetry)
        .extension(limits::ShapeLimits {
            max_aliases: config.max_aliases,
            max_directives: config.max_directives,
        });
    if !config.introspection {
        builder = builder.disable_introspection();
    }
    builder.finish()
}

/// The schema without services, for printing the SDL.
pub fn sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .finish()
        .sdl()
}

#[cfg(test)]
mod tests {
    /// The schema is a public contract: a change to it shows up here, for review.
    #[test]
    fn the_schema_is_pinned() {
        insta::assert_snapshot!("schema", super::sdl());
    }
}
