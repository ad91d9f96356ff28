//! Mutations: one for every identity command. Each takes the tenant from the caller's
//! credential (sign-up, registration, login and the token flows are the only ones a caller
//! without a credential may use), checks its permission here and again in the domain,
//! returns the global position of its last event, and with `consistency: STRONG` waits
//! until the read models include it.

use async_graphql::{Context, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};
use commands::identity::IdentityError;
use domain::identity::principal::Principal;
use domain::identity::rbac::Permission;
use uuid::Uuid;

use super::Request;
use super::types::{Consistency, Outcome};
use crate::auth::{Caller, Credential};
use crate::error::{ApiError, ApiResult};
use crate::metrics::CommandOutcome;
use crate::ratelimit::{Policy, RateLimitError, account_subject};

/// The root of every mutation.
#[derive(Debug, Default)]
pub struct MutationRoot;

/// A new tenant and its owner.
#[derive(Debug, InputObject)]
pub struct SignUpInput {
    /// The tenant's name.
    pub tenant_name: String,
    /// The plan (`free` unless another is named).
    #[graphql(default_with = "\"free\".to_owned()")]
    pub plan: String,
    /// The owner's email address.
    pub email: String,
    /// The owner's display name.
    pub name: String,
    /// The owner's password (at least 12 characters).
    #[graphql(secret)]
    pub password: String,
}

/// A tenant was created.
#[derive(Debug, SimpleObject)]
pub struct SignUpPayload {
    /// The new tenant.
    pub tenant_id: Uuid,
    /// Its owner, a user of it.
    pub user_id: Uuid,
    /// The token that verifies the owner's email address, to send by email. `null` when
    /// the same request was answered before (an `Idempotency-Key` repeat).
    pub verification_token: Option<String>,
    /// The global position of the last event.
    pub position: Option<i64>,
    /// Whether the read models include it.
    pub consistent: bool,
}

/// A person joins an existing tenant.
#[derive(Debug, InputObject)]
pub struct RegisterInput {
    /// The tenant to join.
    pub tenant_id: Uuid,
    /// The email address.
    pub email: String,
    /// The display name.
    pub name: String,
    /// The password (at least 12 characters).
    #[graphql(secret)]
    pub password: String,
}

/// A user was registered.
#[derive(Debug, SimpleObject)]
pub struct RegisterPayload {
    /// The new user.
    pub user_id: Uuid,
    /// The token that verifies the email address, to send by email.
    pub verification_token: Option<String>,
    /// The global position of the last event.
    pub position: Option<i64>,
    /// Whether the read models include it.
    pub consistent: bool,
}

/// Email and password, and for an account with MFA a TOTP or recovery code.
#[derive(Debug, InputObject)]
pub struct LoginInput {
    /// The tenant to sign in to.
    pub tenant_id: Uuid,
    /// The email address.
    pub email: String,
    /// The password.
    #[graphql(secret)]
    pub password: String,
    /// The second factor: a 6-digit TOTP code or a recovery code. Needed when the account
    /// has MFA: a login without it fails with reason `mfa_required`, the challenge step.
    #[graphql(secret)]
    pub code: Option<String>,
}

/// Tokens for a session.
#[derive(Debug, SimpleObject)]
pub struct TokenPayload {
    /// The access token: an EdDSA JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// The refresh token; use it once, with `refresh`, for the next pair.
    pub refresh_token: Option<String>,
    /// The session.
    pub session_id: Option<Uuid>,
    /// The global position of the last event.
    pub position: Option<i64>,
}

/// A refresh token to rotate.
#[derive(Debug, InputObject)]
pub struct RefreshInput {
    /// The session.
    pub session_id: Uuid,
    /// Its current refresh token.
    #[graphql(secret)]
    pub refresh_token: String,
}

/// A service account's client credentials.
#[derive(Debug, InputObject)]
pub struct ClientCredentialsInput {
    /// The client id: the service account's id.
    pub client_id: Uuid,
    /// A client secret issued for it.
    #[graphql(secret)]
    pub client_secret: String,
}

/// A TOTP enrollment, shown once.
#[derive(Debug, SimpleObject)]
pub struct TotpEnrollmentPayload {
    /// The secret in base32.
    pub secret: String,
    /// The `otpauth://` URI, for a QR code.
    pub otpauth_uri: String,
}

/// TOTP was enabled.
#[derive(Debug, SimpleObject)]
pub struct TotpConfirmedPayload {
    /// Recovery codes, shown once.
    pub recovery_codes: Vec<String>,
}

/// A new API key, shown once.
#[derive(Debug, SimpleObject)]
pub struct ApiKeyPayload {
    /// Its id.
    pub id: Uuid,
    /// The key: send it as `Authorization: Bearer <key>` or `x-api-key`.
    pub key: String,
    /// Its first characters.
    pub display_prefix: String,
    /// The global position of the last event.
    pub position: Option<i64>,
    /// Whether the read models include it.
    pub consistent: bool,
}

/// An invitation, shown once.
#[derive(Debug, SimpleObject)]
pub struct InvitePayload {
    /// The invited user.
    pub user_id: Uuid,
    /// The token the invitee presents to accept.
    pub invitation_token: String,
    /// The global position of the last event.
    pub position: Option<i64>,
    /// Whether the read models include it.
    pub consistent: bool,
}

/// A new service account.
#[derive(Debug, SimpleObject)]
pub struct ServiceAccountPayload {
    /// Its id, which is its OAuth client id.
    pub id: Uuid,
    /// The global position of the last event.
    pub position: Option<i64>,
    /// Whether the read models include it.
    pub consistent: bool,
}

/// A new client secret, shown once.
#[derive(Debug, SimpleObject)]
pub struct ClientSecretPayload {
    /// The secret's id, to revoke it by.
    pub secret_id: Uuid,
    /// The client id.
    pub client_id: Uuid,
    /// The secret.
    pub client_secret: String,
}

impl Request<'_> {
    /// Counts a request against `policy` for `subject`; refuses it when over the limit or
    /// when a fail-closed policy cannot be checked.
    pub async fn limit(&self, policy: &Policy, subject: &str) -> ApiResult<()> {
        match self.services.limiter.check(policy, subject).await {
            Ok(decision) if decision.allowed => Ok(()),
            Ok(decision) => {
                self.services.metrics.record_rate_limited(policy.name);
                Err(ApiError::rate_limited(policy.name, decision.retry_after))
            }
            Err(RateLimitError::Unavailable {
                policy,
                retry_after,
                cause,
            }) => {
                tracing::warn!(policy, "rate limit cannot be checked: {cause}; refusing");
                self.services.metrics.record_rate_limited(policy);
                Err(ApiError::rate_limited(policy, retry_after))
            }
            Err(err) => Err(ApiError::internal(err)),
        }
    }

    fn client_subject(&self) -> String {
        self.context
            .client_ip
            .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
    }

    /// Records a command's outcome in the metrics and turns its error into the API's.
    fn outcome<T>(&self, command: &str, result: Result<T, IdentityError>) -> ApiResult<T> {
        let outcome = match &result {
            Ok(_) => CommandOutcome::Accepted,
            Err(IdentityError::BadInput { .. }) => CommandOutcome::BadInput,
            Err(IdentityError::Forbidden(_)) => CommandOutcome::Forbidden,
            Err(IdentityError::Conflict(_)) => CommandOutcome::Conflict,
            Err(IdentityError::Infrastructure(_)) => CommandOutcome::Error,
            Err(_) => CommandOutcome::Refused,
        };
        self.services.metrics.record_command(command, outcome);
        result.map_err(ApiError::from)
    }

    /// Waits for the read models when asked to.
    async fn settle(&self, position: Option<i64>, consistency: Consistency) -> ApiResult<bool> {
        let Some(position) = position else {
            return Ok(true);
        };
        if consistency == Consistency::Eventual {
            return Ok(false);
        }
        let timeout = self.services.config.consistency_timeout;
        let reached = projections::runner::wait_for_position(
            &self.services.pool,
            "identity",
            position,
            timeout,
        )
        .await
        .map_err(ApiError::internal)?;
        // The caller's next read must see the write, whatever was remembered before it.
        match &self.context.caller {
            Caller::Authenticated(caller) => self.services.freshness.changed(caller.tenant_id),
            Caller::Anonymous => self.services.freshness.reset(),
        }
        Ok(reached)
    }

    async fn done(
        &self,
        command: &str,
        result: Result<Option<i64>, IdentityError>,
        consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let position = self.outcome(command, result)?;
        Ok(Outcome {
            position,
            consistent: self.settle(position, consistency).await?,
        })
    }

    /// The caller, who must hold `permission`, and its tenant as the commands take it.
    async fn tenant_caller(&self, permission: Permission) -> ApiResult<String> {
        Ok(self.require(permission).await?.tenant_id.to_string())
    }

    /// Issues an access token for a principal of `tenant`.
    fn access_token(
        &self,
        principal: Principal,
        tenant: Uuid,
        session: Option<Uuid>,
        mfa: bool,
    ) -> ApiResult<(String, i64)> {
        self.services.auth.issue(principal, tenant, session, mfa)
    }
}

#[Object(name = "Mutation")]
impl MutationRoot {
    /// Creates a tenant and its owner: the sign-up of a new organisation. Send an
    /// `Idempotency-Key` header to make a retry safe.
    async fn sign_up(
        &self,
        ctx: &Context<'_>,
        input: SignUpInput,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<SignUpPayload> {
        let request = Request::of(ctx)?;
        let (outcome, position) = request.outcome(
            "create_tenant",
            request
                .services
                .identity
                .create_tenant(
                    &request.metadata(),
                    &input.tenant_name,
                    &input.plan,
                    &input.email,
                    &input.name,
                    &input.password,
                )
                .await,
        )?;
        let (commands::bus::Outcome::Done(created) | commands::bus::Outcome::Replayed(created)) =
            outcome;
        Ok(SignUpPayload {
            tenant_id: created.tenant_id.as_uuid(),
            user_id: created.owner_id.as_uuid(),
            verification_token: created.verification_token,
            position,
            consistent: request.settle(position, consistency).await?,
        })
    }

    /// Registers a person in an active tenant; they hold no role until an admin grants one.
    async fn register(
        &self,
        ctx: &Context<'_>,
        input: RegisterInput,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<RegisterPayload> {
        let request = Request::of(ctx)?;
        let (outcome, position) = request.outcome(
            "register",
            request
                .services
                .identity
                .register(
                    &request.metadata(),
                    &input.tenant_id.to_string(),
                    &input.email,
                    &input.name,
                    &input.password,
                )
                .await,
        )?;
        let (commands::bus::Outcome::Done(registered)
        | commands::bus::Outcome::Replayed(registered)) = outcome;
        Ok(RegisterPayload {
            user_id: registered.user_id.as_uuid(),
            verification_token: registered.verification_token,
            position,
            consistent: request.settle(position, consistency).await?,
        })
    }

    /// Logs in. For an account with MFA, a login without `code` fails with reason
    /// `mfa_required`; send the same input again with the code. Throttled per address and
    /// per account, and refused while the throttle cannot be checked.
    async fn login(&self, ctx: &Context<'_>, input: LoginInput) -> ApiResult<TokenPayload> {
        let request = Request::of(ctx)?;
        let limits = &request.services.limits;
        request
            .limit(&limits.login_per_ip, &request.client_subject())
            .await?;
        request
            .limit(
                &limits.login_per_account,
                &format!("{}:{}", input.tenant_id, account_subject(&input.email)),
            )
            .await?;
        if input.code.is_some() {
            request
                .limit(
                    &limits.mfa_per_user,
                    &format!("{}:{}", input.tenant_id, account_subject(&input.email)),
                )
                .await?;
        }
        let (login, position) = request.outcome(
            "login",
            request
                .services
                .identity
                .login_with_code(
                    &request.metadata(),
                    &input.tenant_id.to_string(),
                    &input.email,
                    &input.password,
                    input.code.as_deref(),
                )
                .await,
        )?;
        let (access_token, expires_in) = request.access_token(
            Principal::User(login.user_id),
            input.tenant_id,
            Some(login.session_id.as_uuid()),
            login.mfa,
        )?;
        Ok(TokenPayload {
            access_token,
            token_type: "Bearer".to_owned(),
            expires_in,
            refresh_token: Some(login.refresh_token),
            session_id: Some(login.session_id.as_uuid()),
            position,
        })
    }

    /// Rotates a refresh token: the old one stops working, and using it again revokes the
    /// whole session.
    async fn refresh(&self, ctx: &Context<'_>, input: RefreshInput) -> ApiResult<TokenPayload> {
        let request = Request::of(ctx)?;
        let (refreshed, position) = request.outcome(
            "refresh",
            request
                .services
                .identity
                .refresh(
                    &request.metadata(),
                    &input.session_id.to_string(),
                    &input.refresh_token,
                )
                .await,
        )?;
        let (user, tenant, mfa) = request
            .services
            .auth
            .session_holder(input.session_id)
            .await?;
        let (access_token, expires_in) =
            request.access_token(Principal::User(user), tenant, Some(input.session_id), mfa)?;
        Ok(TokenPayload {
            access_token,
            token_type: "Bearer".to_owned(),
            expires_in,
            refresh_token: Some(refreshed.refresh_token),
            session_id: Some(refreshed.session_id.as_uuid()),
            position,
        })
    }

    /// Exchanges a service account's client credentials for an access token.
    async fn client_credentials(
        &self,
        ctx: &Context<'_>,
        input: ClientCredentialsInput,
    ) -> ApiResult<TokenPayload> {
        let request = Request::of(ctx)?;
        let limits = &request.services.limits;
        request
            .limit(&limits.login_per_ip, &request.client_subject())
            .await?;
        request
            .limit(&limits.login_per_account, &input.client_id.to_string())
            .await?;
        let client = request.outcome(
            "authenticate_client",
            request
                .services
                .identity
                .authenticate_client(
                    &request.metadata(),
                    &input.client_id.to_string(),
                    &input.client_secret,
                )
                .await,
        )?;
        let (access_token, expires_in) = request.access_token(
            Principal::ServiceAccount(client.account_id),
            client.tenant_id.as_uuid(),
            None,
            false,
        )?;
        Ok(TokenPayload {
            access_token,
            token_type: "Bearer".to_owned(),
            expires_in,
            refresh_token: None,
            session_id: None,
            position: None,
        })
    }

    /// Ends the caller's session.
    async fn logout(
        &self,
        ctx: &Context<'_>,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let caller = request.context.caller.require()?;
        let Credential::AccessToken {
            session_id: Some(session),
            ..
        } = caller.credential
        else {
            return Err(ApiError::bad_input(
                "credential",
                "only a session's access token can log out",
            ));
        };
        let result = request
            .services
            .identity
            .logout(&request.metadata(), &session.to_string())
            .await;
        request.done("logout", result, consistency).await
    }

    /// Ends every session of the caller ("sign out everywhere").
    async fn revoke_all_sessions(
        &self,
        ctx: &Context<'_>,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        request.context.caller.require()?;
        let result = request
            .services
            .identity
            .revoke_all_sessions(&request.metadata())
            .await;
        request
            .done("revoke_all_sessions", result, consistency)
            .await
    }

    /// Starts a TOTP enrollment for the signed-in user.
    async fn start_totp_enrollment(&self, ctx: &Context<'_>) -> ApiResult<TotpEnrollmentPayload> {
        let request = Request::of(ctx)?;
        let caller = request.context.caller.require()?;
        let enrollment = request.outcome(
            "start_totp_enrollment",
            request
                .services
                .identity
                .start_totp_enrollment(&request.metadata(), "Platform", &caller.actor_id())
                .await,
        )?;
        Ok(TotpEnrollmentPayload {
            secret: enrollment.secret,
            otpauth_uri: enrollment.otpauth_uri,
        })
    }

    /// Confirms the enrollment with a code from the authenticator; returns recovery codes.
    async fn confirm_totp(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] code: String,
    ) -> ApiResult<TotpConfirmedPayload> {
        let request = Request::of(ctx)?;
        let caller = request.context.caller.require()?;
        let limits = &request.services.limits;
        request
            .limit(&limits.mfa_per_user, &caller.actor_id())
            .await?;
        let recovery_codes = request.outcome(
            "confirm_totp",
            request
                .services
                .identity
                .confirm_totp(&request.metadata(), &code)
                .await,
        )?;
        Ok(TotpConfirmedPayload { recovery_codes })
    }

    /// Turns MFA off, with a current code.
    async fn disable_mfa(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] code: String,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let caller = request.context.caller.require()?;
        let limits = &request.services.limits;
        request
            .limit(&limits.mfa_per_user, &caller.actor_id())
            .await?;
        let result = request
            .services
            .identity
            .disable_mfa(&request.metadata(), &code)
            .await;
        request.done("disable_mfa", result, consistency).await
    }

    /// Changes the caller's email address; it needs verifying again.
    async fn change_email(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] password: String,
        new_email: String,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        request.context.caller.require()?;
        let result = request
            .services
            .identity
            .change_email(&request.metadata(), &password, &new_email)
            .await
            .map(|(_, position)| position);
        request.done("change_email", result, consistency).await
    }

    /// Changes the caller's password; every other session ends.
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] current: String,
        #[graphql(secret)] new: String,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        request.context.caller.require()?;
        let result = request
            .services
            .identity
            .change_password(&request.metadata(), &current, &new)
            .await;
        request.done("change_password", result, consistency).await
    }

    /// Verifies an email address with the token sent to it.
    async fn verify_email(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        #[graphql(secret)] token: String,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let result = request
            .services
            .identity
            .verify_email(&request.metadata(), &user_id.to_string(), &token)
            .await;
        request.done("verify_email", result, consistency).await
    }

    /// Accepts an invitation: sets the invitee's name and password.
    async fn accept_invitation(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        #[graphql(secret)] token: String,
        name: String,
        #[graphql(secret)] password: String,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let result = request
            .services
            .identity
            .accept_invitation(
                &request.metadata(),
                &user_id.to_string(),
                &token,
                &name,
                &password,
            )
            .await;
        request.done("accept_invitation", result, consistency).await
    }

    /// Creates an API key acting for the caller, with scopes no wider than the caller's
    /// permissions. Needs `api_keys:create`. The key is shown once.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        name: String,
        scopes: Vec<String>,
        expires_at: Option<DateTime<Utc>>,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<ApiKeyPayload> {
        let request = Request::of(ctx)?;
        let tenant = request.tenant_caller(Permission::ApiKeysCreate).await?;
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let (created, position) = request.outcome(
            "create_api_key",
            request
                .services
                .identity
                .create_api_key(&request.metadata(), &tenant, &name, &scopes, expires_at)
                .await,
        )?;
        Ok(ApiKeyPayload {
            id: created.key_id.as_uuid(),
            key: created.key,
            display_prefix: created.display_prefix,
            position,
            consistent: request.settle(position, consistency).await?,
        })
    }

    /// Revokes an API key of the tenant. Needs `api_keys:revoke`.
    async fn revoke_api_key(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request.tenant_caller(Permission::ApiKeysRevoke).await?;
        let result = request
            .services
            .identity
            .revoke_api_key(&request.metadata(), &tenant, &id.to_string())
            .await;
        request.done("revoke_api_key", result, consistency).await
    }

    /// Renames the tenant. Needs `tenants:update`.
    async fn rename_tenant(
        &self,
        ctx: &Context<'_>,
        name: String,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request.tenant_caller(Permission::TenantsUpdate).await?;
        let result = request
            .services
            .identity
            .rename_tenant(&request.metadata(), &tenant, &name)
            .await;
        request.done("rename_tenant", result, consistency).await
    }

    /// Changes the tenant's plan. Needs `tenants:manage_plan`.
    async fn change_plan(
        &self,
        ctx: &Context<'_>,
        plan: String,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request.tenant_caller(Permission::TenantsManagePlan).await?;
        let result = request
            .services
            .identity
            .change_plan(&request.metadata(), &tenant, &plan)
            .await;
        request.done("change_plan", result, consistency).await
    }

    /// Suspends the tenant. Needs `tenants:suspend`.
    async fn suspend_tenant(
        &self,
        ctx: &Context<'_>,
        reason: String,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request.tenant_caller(Permission::TenantsSuspend).await?;
        let result = request
            .services
            .identity
            .suspend_tenant(&request.metadata(), &tenant, &reason)
            .await;
        request.done("suspend_tenant", result, consistency).await
    }

    /// Reactivates a suspended tenant. Needs `tenants:suspend`.
    async fn reactivate_tenant(
        &self,
        ctx: &Context<'_>,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request.tenant_caller(Permission::TenantsSuspend).await?;
        let result = request
            .services
            .identity
            .reactivate_tenant(&request.metadata(), &tenant)
            .await;
        request.done("reactivate_tenant", result, consistency).await
    }

    /// Closes the tenant for good. Needs `tenants:close`.
    async fn close_tenant(
        &self,
        ctx: &Context<'_>,
        reason: String,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request.tenant_caller(Permission::TenantsClose).await?;
        let result = request
            .services
            .identity
            .close_tenant(&request.metadata(), &tenant, &reason)
            .await;
        request.done("close_tenant", result, consistency).await
    }

    /// Grants a role to a member (`user:<id>` or `service_account:<id>`). Needs
    /// `roles:assign`.
    async fn assign_role(
        &self,
        ctx: &Context<'_>,
        principal: String,
        role: String,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request.tenant_caller(Permission::RolesAssign).await?;
        let result = request
            .services
            .identity
            .assign_role(&request.metadata(), &tenant, &principal, &role)
            .await;
        request.done("assign_role", result, consistency).await
    }

    /// Takes a role from a member. Needs `roles:assign`.
    async fn unassign_role(
        &self,
        ctx: &Context<'_>,
        principal: String,
        role: String,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request.tenant_caller(Permission::RolesAssign).await?;
        let result = request
            .services
            .identity
            .unassign_role(&request.metadata(), &tenant, &principal, &role)
            .await;
        request.done("unassign_role", result, consistency).await
    }

    /// Defines or redefines a custom role. Needs `roles:manage`.
    async fn define_role(
        &self,
        ctx: &Context<'_>,
        name: String,
        permissions: Vec<String>,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request.tenant_caller(Permission::RolesManage).await?;
        let permissions: Vec<&str> = permissions.iter().map(String::as_str).collect();
        let result = request
            .services
            .identity
            .define_role(&request.metadata(), &tenant, &name, &permissions)
            .await;
        request.done("define_role", result, consistency).await
    }

    /// Adds an existing principal of the tenant as a member with roles. Needs
    /// `roles:assign`.
    async fn add_member(
        &self,
        ctx: &Context<'_>,
        principal: String,
        roles: Vec<String>,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request.tenant_caller(Permission::RolesAssign).await?;
        let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
        let result = request
            .services
            .identity
            .add_member(&request.metadata(), &tenant, &principal, &roles)
            .await;
        request.done("add_member", result, consistency).await
    }

    /// Removes a member from the tenant. Needs `roles:assign`.
    async fn remove_member(
        &self,
        ctx: &Context<'_>,
        principal: String,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request.tenant_caller(Permission::RolesAssign).await?;
        let result = request
            .services
            .identity
            .remove_member(&request.metadata(), &tenant, &principal)
            .await;
        request.done("remove_member", result, consistency).await
    }

    /// Invites a person by email, with roles. Needs `users:invite`. The token is shown
    /// once, for the invitation email.
    async fn invite(
        &self,
        ctx: &Context<'_>,
        email: String,
        roles: Vec<String>,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<InvitePayload> {
        let request = Request::of(ctx)?;
        let tenant = request.tenant_caller(Permission::UsersInvite).await?;
        let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
        let (invited, position) = request.outcome(
            "invite",
            request
                .services
                .identity
                .invite(&request.metadata(), &tenant, &email, &roles)
                .await,
        )?;
        Ok(InvitePayload {
            user_id: invited.user_id.as_uuid(),
            invitation_token: invited.invitation_token,
            position,
            consistent: request.settle(position, consistency).await?,
        })
    }

    /// Deactivates a user of the tenant: their sessions end and they cannot sign in.
    /// Needs `users:deactivate`.
    async fn deactivate_user(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request.tenant_caller(Permission::UsersDeactivate).await?;
        let result = request
            .services
            .identity
            .deactivate_user(&request.metadata(), &tenant, &user_id.to_string())
            .await;
        request.done("deactivate_user", result, consistency).await
    }

    /// Forgets a person (crypto-shredding): destroys the user's data key, so their email,
    /// name, client IPs and user agents read as redacted everywhere, for good. The user is
    /// deactivated, their sessions end, their email address is released and they leave the
    /// tenant. Needs `privacy:forget`; nobody forgets themselves, and the last owner stays.
    /// Forgetting a forgotten user again changes nothing (`position: null`).
    async fn forget_subject(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request.tenant_caller(Permission::PrivacyForget).await?;
        let result = request
            .services
            .identity
            .forget_subject(&request.metadata(), &tenant, &user_id.to_string())
            .await;
        request.done("forget_subject", result, consistency).await
    }

    /// Creates a service account with roles. Needs `service_accounts:manage`.
    async fn create_service_account(
        &self,
        ctx: &Context<'_>,
        name: String,
        roles: Vec<String>,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<ServiceAccountPayload> {
        let request = Request::of(ctx)?;
        let tenant = request
            .tenant_caller(Permission::ServiceAccountsManage)
            .await?;
        let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
        let (id, position) = request.outcome(
            "create_service_account",
            request
                .services
                .identity
                .create_service_account(&request.metadata(), &tenant, &name, &roles)
                .await,
        )?;
        Ok(ServiceAccountPayload {
            id: id.as_uuid(),
            position,
            consistent: request.settle(position, consistency).await?,
        })
    }

    /// Renames a service account. Needs `service_accounts:manage`.
    async fn rename_service_account(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        name: String,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request
            .tenant_caller(Permission::ServiceAccountsManage)
            .await?;
        let result = request
            .services
            .identity
            .rename_service_account(&request.metadata(), &tenant, &id.to_string(), &name)
            .await;
        request
            .done("rename_service_account", result, consistency)
            .await
    }

    /// Disables a service account. Needs `service_accounts:manage`.
    async fn disable_service_account(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request
            .tenant_caller(Permission::ServiceAccountsManage)
            .await?;
        let result = request
            .services
            .identity
            .disable_service_account(&request.metadata(), &tenant, &id.to_string())
            .await;
        request
            .done("disable_service_account", result, consistency)
            .await
    }

    /// Enables a disabled service account. Needs `service_accounts:manage`.
    async fn enable_service_account(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request
            .tenant_caller(Permission::ServiceAccountsManage)
            .await?;
        let result = request
            .services
            .identity
            .enable_service_account(&request.metadata(), &tenant, &id.to_string())
            .await;
        request
            .done("enable_service_account", result, consistency)
            .await
    }

    /// Issues a client secret for a service account, shown once. Needs
    /// `service_accounts:manage`.
    async fn issue_client_secret(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> ApiResult<ClientSecretPayload> {
        let request = Request::of(ctx)?;
        let tenant = request
            .tenant_caller(Permission::ServiceAccountsManage)
            .await?;
        let (issued, _) = request.outcome(
            "issue_client_secret",
            request
                .services
                .identity
                .issue_client_secret(&request.metadata(), &tenant, &id.to_string())
                .await,
        )?;
        Ok(ClientSecretPayload {
            secret_id: issued.secret_id,
            client_id: issued.client_id.as_uuid(),
            client_secret: issued.client_secret,
        })
    }

    /// Revokes a client secret. Needs `service_accounts:manage`.
    async fn revoke_client_secret(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        secret_id: Uuid,
        #[graphql(default)] consistency: Consistency,
    ) -> ApiResult<Outcome> {
        let request = Request::of(ctx)?;
        let tenant = request
            .tenant_caller(Permission::ServiceAccountsManage)
            .await?;
        let result = request
            .services
            .identity
            .revoke_client_secret(
                &request.metadata(),
                &tenant,
                &id.to_string(),
                &secret_id.to_string(),
            )
            .await;
        request
            .done("revoke_client_secret", result, consistency)
            .await
    }
}
