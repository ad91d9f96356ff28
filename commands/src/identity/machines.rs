//! Service accounts: machine identities of a tenant, their roles, and their OAuth 2.0
//! client credentials (the client id is the account's id; only a hash of each client secret
//! is stored).
//!
//! Creating an account makes it a member of its tenant with the given roles in the same
//! atomic write, so an account never exists without its membership. Every change needs
//! `service_accounts:manage`, and no role is granted beyond the actor's own permissions.
//! Authenticating with a client secret ([`Identity::authenticate_client`]) reads the
//! account and its tenant and writes nothing: a per-request record would be noise in the log.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use domain::RefusalKind;
use domain::identity::credentials::SecretHash;
use domain::identity::principal::Principal;
use domain::identity::rbac::{Permission, PermissionSet, RoleRef};
use domain::identity::service_account::{ServiceAccount, ServiceAccountCommand};
use domain::identity::tenant::{Tenant, TenantCommand, TenantStatus};
use domain::identity::values::{ServiceAccountId, TenantId};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::flows::{
    Refused, actor_principal, authorize, hash_token, parse_tenant, refused, subject_of, token,
};
use super::membership::parse_roles;
use super::{Identity, IdentityError};
use crate::bus::{Command, CommandError, EventLog, UnitOfWork};
use crate::metadata::CommandMetadata;
use crate::privacy::SubjectKeys;

/// The prefix of every client secret, so that people and secret scanners recognise one.
pub const CLIENT_SECRET_PREFIX: &str = "pcs_";

/// A new client secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSecretIssued {
    /// The secret's id, to revoke it by.
    pub secret_id: Uuid,
    /// The OAuth client id: the service account's id.
    pub client_id: ServiceAccountId,
    /// The secret itself; only its hash is stored.
    pub client_secret: String,
}

/// A service account that proved who it is with a client secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedClient {
    /// The account.
    pub account_id: ServiceAccountId,
    /// Its tenant.
    pub tenant_id: TenantId,
    /// Its effective permissions in the tenant now.
    pub permissions: PermissionSet,
}

/// A change to an existing service account.
#[derive(Debug, Clone)]
enum AccountOp {
    Rename(String),
    Disable,
    Enable,
    IssueSecret { secret_id: Uuid, hash: SecretHash },
    RevokeSecret(Uuid),
}

impl AccountOp {
    /// Whether the change lets the account act (again): a new secret, or switching it on or
    /// off. Such a change needs every permission the account holds, so that nobody gains a
    /// credential with more power than their own. Renaming and revoking do not: revoking
    /// must always be possible.
    fn acts_as_account(&self) -> bool {
        matches!(
            self,
            Self::Disable | Self::Enable | Self::IssueSecret { .. }
        )
    }

    fn command(&self, now: DateTime<Utc>) -> ServiceAccountCommand {
        match self.clone() {
            Self::Rename(name) => ServiceAccountCommand::Rename { name, now },
            Self::Disable => ServiceAccountCommand::Disable { now },
            Self::Enable => ServiceAccountCommand::Enable { now },
            Self::IssueSecret { secret_id, hash } => ServiceAccountCommand::IssueClientSecret {
                secret_id,
                hash,
                now,
            },
            Self::RevokeSecret(secret_id) => {
                ServiceAccountCommand::RevokeClientSecret { secret_id, now }
            }
        }
    }
}

fn parse_account(text: &str) -> Result<ServiceAccountId, IdentityError> {
    text.parse()
        .map_err(|err| IdentityError::bad_input("serviceAccountId", err))
}

fn not_found() -> CommandError<Refused> {
    CommandError::Refused(Refused::new(
        RefusalKind::NotFound,
        "service_account_not_found",
        "no such service account in this tenant",
    ))
}

/// The answer to every failed client authentication: it never says which part was wrong.
fn wrong_client() -> IdentityError {
    IdentityError::Unauthenticated {
        reason: "invalid_client",
        message: "the client id or the client secret is wrong, or the client is disabled".into(),
    }
}

impl<L: EventLog, K: SubjectKeys> Identity<L, K> {
    /// Creates a service account in a tenant, a member with `roles` (at least one, within
    /// the actor's own permissions). Needs `service_accounts:manage`.
    pub async fn create_service_account(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        name: &str,
        roles: &[&str],
    ) -> Result<(ServiceAccountId, Option<i64>), IdentityError> {
        let tenant_id = parse_tenant(tenant)?;
        let roles = parse_roles(roles)?;
        let actor = actor_principal(metadata)?;
        let account_id = ServiceAccountId::from_uuid(Uuid::now_v7());
        let metadata = &self.sealed(metadata, subject_of(actor)).await?;
        let command = CreateServiceAccount {
            tenant_id,
            actor,
            account_id,
            name: name.to_owned(),
            roles,
            now: self.clock.now(),
        };
        let ((), position) = self.execute(metadata, &command).await?;
        Ok((account_id, position))
    }

    async fn account_op(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        account: &str,
        op: AccountOp,
    ) -> Result<Option<i64>, IdentityError> {
        let tenant_id = parse_tenant(tenant)?;
        let account_id = parse_account(account)?;
        let actor = actor_principal(metadata)?;
        let metadata = &self.sealed(metadata, subject_of(actor)).await?;
        let command = ChangeServiceAccount {
            tenant_id,
            actor,
            account_id,
            op,
            now: self.clock.now(),
        };
        let ((), position) = self.execute(metadata, &command).await?;
        Ok(position)
    }

    /// Renames a service account. Needs `service_accounts:manage`.
    pub async fn rename_service_account(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        account: &str,
        name: &str,
    ) -> Result<Option<i64>, IdentityError> {
        self.account_op(
            metadata,
            tenant,
            account,
            AccountOp::Rename(name.to_owned()),
        )
        .await
    }

    /// Switches a service account off: none of its secrets or API keys authenticate until
    /// it is enabled again. Needs `service_accounts:manage`.
    pub async fn disable_service_account(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        account: &str,
    ) -> Result<Option<i64>, IdentityError> {
        self.account_op(metadata, tenant, account, AccountOp::Disable)
            .await
    }

    /// Switches a disabled service account on again. Needs `service_accounts:manage`.
    pub async fn enable_service_account(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        account: &str,
    ) -> Result<Option<i64>, IdentityError> {
        self.account_op(metadata, tenant, account, AccountOp::Enable)
            .await
    }

    /// Issues a client secret for a service account; it is returned once. At most two are
    /// active at once, so that a secret can be rotated with overlap. Needs
    /// `service_accounts:manage`.
    pub async fn issue_client_secret(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        account: &str,
    ) -> Result<(ClientSecretIssued, Option<i64>), IdentityError> {
        let client_id = parse_account(account)?;
        let (random, _) = token()?;
        let client_secret = format!("{CLIENT_SECRET_PREFIX}{random}");
        let secret_id = Uuid::now_v7();
        let hash = hash_token(&client_secret);
        let position = self
            .account_op(
                metadata,
                tenant,
                account,
                AccountOp::IssueSecret { secret_id, hash },
            )
            .await?;
        Ok((
            ClientSecretIssued {
                secret_id,
                client_id,
                client_secret,
            },
            position,
        ))
    }

    /// Revokes a client secret of a service account for good. Needs
    /// `service_accounts:manage`.
    pub async fn revoke_client_secret(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        account: &str,
        secret: &str,
    ) -> Result<Option<i64>, IdentityError> {
        let secret_id: Uuid = secret
            .trim()
            .parse()
            .map_err(|_| IdentityError::bad_input("secretId", "a secret id is a UUID"))?;
        self.account_op(
            metadata,
            tenant,
            account,
            AccountOp::RevokeSecret(secret_id),
        )
        .await
    }

    /// Checks OAuth 2.0 client credentials: the client id is a service account's id and the
    /// secret one of its active client secrets. The account must be enabled and a member of
    /// an active tenant. Writes nothing.
    pub async fn authenticate_client(
        &self,
        metadata: &CommandMetadata,
        client_id: &str,
        client_secret: &str,
    ) -> Result<AuthenticatedClient, IdentityError> {
        let client_secret = client_secret.trim();
        if !client_secret.starts_with(CLIENT_SECRET_PREFIX) {
            return Err(IdentityError::bad_input(
                "clientSecret",
                format!("a client secret starts with `{CLIENT_SECRET_PREFIX}`"),
            ));
        }
        let Ok(account_id) = client_id.trim().parse::<ServiceAccountId>() else {
            return Err(wrong_client());
        };
        let reader = UnitOfWork::new(&self.log, metadata);
        let account = reader
            .load::<ServiceAccount>(&account_id.to_string())
            .await
            .map_err(|err| IdentityError::Infrastructure(err.to_string()))?;
        let account = account.state();
        let presented = hash_token(client_secret);
        let matches = account
            .active_secrets()
            .iter()
            .fold(0u8, |found, (_, stored)| {
                found | stored.as_bytes().ct_eq(presented.as_bytes()).unwrap_u8()
            });
        let Some(tenant_id) = account.tenant() else {
            return Err(wrong_client());
        };
        if matches == 0 || !account.is_enabled() {
            return Err(wrong_client());
        }
        let tenant = reader
            .load::<Tenant>(&tenant_id.to_string())
            .await
            .map_err(|err| IdentityError::Infrastructure(err.to_string()))?;
        let principal = Principal::ServiceAccount(account_id);
        let tenant = tenant.state();
        if tenant.status() != TenantStatus::Active || !tenant.is_member(&principal) {
            return Err(wrong_client());
        }
        Ok(AuthenticatedClient {
            account_id,
            tenant_id,
            permissions: tenant.effective_permissions(&principal),
        })
    }
}

struct CreateServiceAccount {
    tenant_id: TenantId,
    actor: Principal,
    account_id: ServiceAccountId,
    name: String,
    roles: BTreeSet<RoleRef>,
    now: DateTime<Utc>,
}

impl<L: EventLog> Command<L> for CreateServiceAccount {
    type Output = ();
    type Error = Refused;

    async fn decide(&self, work: &mut UnitOfWork<'_, L>) -> Result<(), CommandError<Refused>> {
        let mut tenant = work.load::<Tenant>(&self.tenant_id.to_string()).await?;
        authorize(
            tenant.state(),
            &self.actor,
            Permission::ServiceAccountsManage,
        )?;
        let granted_by = tenant.state().effective_permissions(&self.actor);
        let mut account = work
            .load::<ServiceAccount>(&self.account_id.to_string())
            .await?;
        work.handle(
            &mut account,
            ServiceAccountCommand::Create {
                account_id: self.account_id,
                tenant_id: self.tenant_id,
                name: self.name.clone(),
                created_by: self.actor,
                now: self.now,
            },
            &(),
        )
        .await
        .map_err(refused)?;
        work.handle(
            &mut tenant,
            TenantCommand::AddMember {
                principal: Principal::ServiceAccount(self.account_id),
                roles: self.roles.clone(),
                granted_by,
                now: self.now,
            },
            &(),
        )
        .await
        .map_err(refused)?;
        Ok(())
    }
}

struct ChangeServiceAccount {
    tenant_id: TenantId,
    actor: Principal,
    account_id: ServiceAccountId,
    op: AccountOp,
    now: DateTime<Utc>,
}

impl<L: EventLog> Command<L> for ChangeServiceAccount {
    type Output = ();
    type Error = Refused;

    async fn decide(&self, work: &mut UnitOfWork<'_, L>) -> Result<(), CommandError<Refused>> {
        let tenant = work.load::<Tenant>(&self.tenant_id.to_string()).await?;
        authorize(
            tenant.state(),
            &self.actor,
            Permission::ServiceAccountsManage,
        )?;
        let mut account = work
            .load::<ServiceAccount>(&self.account_id.to_string())
            .await?;
        if account.state().tenant() != Some(self.tenant_id) {
            return Err(not_found());
        }
        if self.op.acts_as_account() {
            let held = tenant
                .state()
                .effective_permissions(&Principal::ServiceAccount(self.account_id));
            let granted_by = tenant.state().effective_permissions(&self.actor);
            if !held.is_subset_of(granted_by) {
                return Err(CommandError::Refused(Refused::new(
                    RefusalKind::Forbidden,
                    "escalation",
                    "this service account holds permissions you do not hold",
                )));
            }
        }
        work.handle(&mut account, self.op.command(self.now), &())
            .await
            .map_err(refused)?;
        Ok(())
    }
}
