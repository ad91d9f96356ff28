//! A signed-in user's own account (MFA, sessions) and machine credentials (API keys).

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::Refusal;
use domain::RefusalKind;
use domain::identity::api_key::{ApiKey, ApiKeyCommand};
use domain::identity::credentials::SecretHash;
use domain::identity::email_claim::{EmailClaim, EmailClaimCommand, claim_id};
use domain::identity::principal::Principal;
use domain::identity::rbac::{Permission, PermissionSet};
use domain::identity::session::{Session, SessionCommand};
use domain::identity::tenant::Tenant;
use domain::identity::user::{User, UserCommand};
use domain::identity::values::{ApiKeyId, Email, EmailIndex, SessionId, TenantId, UserId};
use domain::personal::{PersonalData, SubjectId};
use uuid::Uuid;

use super::flows::{
    Refused, actor_principal, authorize, parse_tenant, refused, subject_of, token, verify_password,
};
use super::{Identity, IdentityError};
use crate::bus::{Command, CommandError, EventLog, UnitOfWork};
use crate::metadata::CommandMetadata;
use crate::privacy::{self, SubjectKeys};
use crate::security::api_key::ApiKeySecret;
use crate::security::{recovery, totp};

/// One command for one aggregate, after the checks the caller made.
struct Act<A: Aggregate> {
    id: String,
    command: A::Command,
}

impl<L, A> Command<L> for Act<A>
where
    L: EventLog,
    A: Aggregate<Services = ()> + Clone + domain::Tenanted,
    A::Command: Clone + Sync + Send,
    A::Error: Refusal,
{
    type Output = Vec<A::Event>;
    type Error = Refused;

    async fn decide(
        &self,
        work: &mut UnitOfWork<'_, L>,
    ) -> Result<Vec<A::Event>, CommandError<Refused>> {
        let mut aggregate = work.load::<A>(&self.id).await?;
        work.handle(&mut aggregate, self.command.clone(), &())
            .await
            .map_err(refused)
    }
}

/// A TOTP enrollment to show the user once: the secret for an authenticator app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpEnrollment {
    /// The secret in base32, for typing in.
    pub secret: String,
    /// The `otpauth://` URI, for a QR code.
    pub otpauth_uri: String,
}

/// A new API key, shown once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyCreated {
    /// The key's id.
    pub key_id: ApiKeyId,
    /// The key itself; only its hash is stored.
    pub key: String,
    /// Its first characters, to recognise it in a list.
    pub display_prefix: String,
}

pub(crate) fn signed_in_user(metadata: &CommandMetadata) -> Result<UserId, IdentityError> {
    match actor_principal(metadata)? {
        Principal::User(user) => Ok(user),
        Principal::ServiceAccount(_) => Err(IdentityError::Refused {
            kind: RefusalKind::Forbidden,
            reason: "users_only",
            message: "only a signed-in user can do this for their own account".into(),
        }),
    }
}

fn totp_purpose(user: UserId) -> String {
    format!("totp:{user}")
}

fn unix_seconds(now: DateTime<Utc>) -> u64 {
    u64::try_from(now.timestamp()).unwrap_or(0)
}

impl<L: EventLog, K: SubjectKeys> Identity<L, K> {
    pub(crate) async fn run_act<A>(
        &self,
        metadata: &CommandMetadata,
        id: String,
        command: A::Command,
    ) -> Result<(Vec<A::Event>, Option<i64>), IdentityError>
    where
        A: Aggregate<Services = ()> + Clone + domain::Tenanted,
        A::Command: Clone + Sync + Send,
        A::Event: Send,
        A::Error: Refusal,
    {
        let act = Act::<A> { id, command };
        let (events, position) = self.execute(metadata, &act).await?;
        Ok((events, position))
    }

    pub(crate) async fn load_user(
        &self,
        metadata: &CommandMetadata,
        user: UserId,
    ) -> Result<User, IdentityError> {
        let reader = UnitOfWork::new(&self.log, metadata);
        reader
            .load::<User>(&user.to_string())
            .await
            .map(|loaded| loaded.state().clone())
            .map_err(|err| IdentityError::Infrastructure(err.to_string()))
    }

    /// The TOTP step of `code` for `user`, checked against their confirmed (or, with
    /// `pending`, their pending) secret and their last used step.
    pub(crate) fn totp_step(
        &self,
        user: &User,
        user_id: UserId,
        code: &str,
        pending: bool,
    ) -> Result<u64, IdentityError> {
        let sealed = if pending {
            user.pending_totp_secret()
        } else {
            user.totp_secret()
        };
        let Some(sealed) = sealed else {
            return Err(IdentityError::Refused {
                kind: RefusalKind::Conflict,
                reason: if pending {
                    "no_totp_enrollment_pending"
                } else {
                    "mfa_not_enabled"
                },
                message: if pending {
                    "no TOTP enrollment is waiting for a code".into()
                } else {
                    "MFA is not enabled".into()
                },
            });
        };
        let bytes = privacy::open_secret(&self.secrets, &totp_purpose(user_id), sealed)?;
        let bytes: [u8; totp::SECRET_LEN] = bytes.try_into().map_err(|_| {
            IdentityError::Infrastructure("a stored TOTP secret has the wrong length".into())
        })?;
        let secret = totp::TotpSecret::from_bytes(bytes);
        let last = if pending {
            None
        } else {
            user.last_used_totp_step()
        };
        totp::verify(&secret, code, unix_seconds(self.clock.now()), last).map_err(|err| match err {
            totp::TotpRejected::Malformed => IdentityError::bad_input("code", err),
            totp::TotpRejected::AlreadyUsed => IdentityError::Unauthenticated {
                reason: "code_already_used",
                message: err.to_string(),
            },
            _ => IdentityError::Unauthenticated {
                reason: "invalid_code",
                message: err.to_string(),
            },
        })
    }

    /// Starts a TOTP enrollment for the signed-in user: returns the secret to put into an
    /// authenticator app. MFA is on once a code from it is confirmed.
    pub async fn start_totp_enrollment(
        &self,
        metadata: &CommandMetadata,
        issuer: &str,
        account: &str,
    ) -> Result<TotpEnrollment, IdentityError> {
        let user = signed_in_user(metadata)?;
        let secret = totp::TotpSecret::generate()
            .map_err(|_| IdentityError::Infrastructure("the random source failed".into()))?;
        let sealed = privacy::seal_secret(&self.secrets, &totp_purpose(user), secret.as_bytes())?;
        let metadata = &self
            .sealed(metadata, SubjectId::from_uuid(user.as_uuid()))
            .await?;
        self.run_act::<User>(
            metadata,
            user.to_string(),
            UserCommand::StartTotpEnrollment {
                secret: sealed,
                now: self.clock.now(),
            },
        )
        .await?;
        Ok(TotpEnrollment {
            secret: secret.to_base32(),
            otpauth_uri: totp::otpauth_uri(&secret, issuer, account),
        })
    }

    /// Confirms the signed-in user's TOTP enrollment with a code, turning MFA on. Returns
    /// the recovery codes, shown once; only their hashes are kept.
    pub async fn confirm_totp(
        &self,
        metadata: &CommandMetadata,
        code: &str,
    ) -> Result<Vec<String>, IdentityError> {
        let user_id = signed_in_user(metadata)?;
        let user = self.load_user(metadata, user_id).await?;
        let step = self.totp_step(&user, user_id, code, true)?;
        let codes = recovery::generate()
            .map_err(|_| IdentityError::Infrastructure("the random source failed".into()))?;
        let metadata = &self
            .sealed(metadata, SubjectId::from_uuid(user_id.as_uuid()))
            .await?;
        self.run_act::<User>(
            metadata,
            user_id.to_string(),
            UserCommand::ConfirmTotp {
                step,
                recovery_codes: codes.iter().map(|(_, hash)| *hash).collect(),
                now: self.clock.now(),
            },
        )
        .await?;
        Ok(codes
            .into_iter()
            .map(|(code, _)| code.as_str().to_owned())
            .collect())
    }

    /// Turns MFA off for the signed-in user; needs a fresh code.
    pub async fn disable_mfa(
        &self,
        metadata: &CommandMetadata,
        code: &str,
    ) -> Result<Option<i64>, IdentityError> {
        let user_id = signed_in_user(metadata)?;
        let user = self.load_user(metadata, user_id).await?;
        let step = self.totp_step(&user, user_id, code, false)?;
        let metadata = &self
            .sealed(metadata, SubjectId::from_uuid(user_id.as_uuid()))
            .await?;
        let (_, position) = self
            .run_act::<User>(
                metadata,
                user_id.to_string(),
                UserCommand::DisableMfa {
                    step,
                    now: self.clock.now(),
                },
            )
            .await?;
        Ok(position)
    }

    /// Ends one of the signed-in user's sessions.
    pub async fn logout(
        &self,
        metadata: &CommandMetadata,
        session: &str,
    ) -> Result<Option<i64>, IdentityError> {
        let user = signed_in_user(metadata)?;
        let session_id: SessionId = session
            .parse()
            .map_err(|err| IdentityError::bad_input("sessionId", err))?;
        let reader = UnitOfWork::new(&self.log, metadata);
        let holder = reader
            .load::<Session>(&session_id.to_string())
            .await
            .map_err(|err| IdentityError::Infrastructure(err.to_string()))?
            .state()
            .user();
        if holder != Some(user) {
            return Err(IdentityError::Refused {
                kind: RefusalKind::NotFound,
                reason: "session_not_found",
                message: "no such session of yours".into(),
            });
        }
        let metadata = &self
            .sealed(metadata, SubjectId::from_uuid(user.as_uuid()))
            .await?;
        let (_, position) = self
            .run_act::<Session>(
                metadata,
                session_id.to_string(),
                SessionCommand::Logout {
                    now: self.clock.now(),
                },
            )
            .await?;
        Ok(position)
    }

    /// Ends every session of the signed-in user: sessions opened before now stop working.
    pub async fn revoke_all_sessions(
        &self,
        metadata: &CommandMetadata,
    ) -> Result<Option<i64>, IdentityError> {
        let user = signed_in_user(metadata)?;
        let metadata = &self
            .sealed(metadata, SubjectId::from_uuid(user.as_uuid()))
            .await?;
        let (_, position) = self
            .run_act::<User>(
                metadata,
                user.to_string(),
                UserCommand::RevokeAllSessions {
                    now: self.clock.now(),
                },
            )
            .await?;
        Ok(position)
    }

    /// Changes the signed-in user's email address, after checking their password. The new
    /// address must be free in the tenant; it is claimed and the old one released in the
    /// same write. Returns the verification token to send to the new address, which stays
    /// unverified until the token comes back.
    pub async fn change_email(
        &self,
        metadata: &CommandMetadata,
        password: &str,
        new_email: &str,
    ) -> Result<(String, Option<i64>), IdentityError> {
        let user_id = signed_in_user(metadata)?;
        let email = Email::parse(new_email)
            .map_err(|err| IdentityError::bad_input("newEmail", err.problem))?;
        let user = self.load_user(metadata, user_id).await?;
        let (Some(tenant_id), Some(stored)) = (user.tenant(), user.password_hash()) else {
            return Err(IdentityError::wrong_credentials());
        };
        if !verify_password(&self.hasher, password, stored).await? {
            return Err(IdentityError::Unauthenticated {
                reason: "invalid_credentials",
                message: "the password is wrong".into(),
            });
        }
        let subject = SubjectId::from_uuid(user_id.as_uuid());
        let key = self.keys.key_for(subject).await?;
        let (verification, verification_hash) = token()?;
        let command = ChangeEmail {
            tenant_id,
            user_id,
            email: privacy::seal(&key, subject, "email", email.as_str())?,
            email_index: self.blind_index.email(tenant_id, &email),
            verification: verification_hash,
            verification_expires_at: self.clock.now() + self.lifetimes.email_verification,
            now: self.clock.now(),
        };
        let metadata = &self.sealed(metadata, subject).await?;
        let ((), position) = self.execute(metadata, &command).await?;
        Ok((verification, position))
    }

    /// Creates an API key in a tenant for the acting principal, with scopes within the
    /// actor's own permissions. Needs `api_keys:create`. The key is returned once.
    pub async fn create_api_key(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        name: &str,
        scopes: &[&str],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(ApiKeyCreated, Option<i64>), IdentityError> {
        let tenant_id = parse_tenant(tenant)?;
        let scopes = scopes
            .iter()
            .map(|scope| scope.parse::<Permission>())
            .collect::<Result<PermissionSet, _>>()
            .map_err(|err| IdentityError::bad_input("scopes", err))?;
        let actor = actor_principal(metadata)?;
        let (secret, hash) = ApiKeySecret::generate()
            .map_err(|_| IdentityError::Infrastructure("the random source failed".into()))?;
        let key_id = ApiKeyId::from_uuid(Uuid::now_v7());
        let metadata = &self.sealed(metadata, subject_of(actor)).await?;
        let command = CreateApiKey {
            tenant_id,
            actor,
            key_id,
            name: name.to_owned(),
            hash,
            display_prefix: secret.display_prefix(),
            scopes,
            expires_at,
            now: self.clock.now(),
        };
        let ((), position) = self.execute(metadata, &command).await?;
        Ok((
            ApiKeyCreated {
                key_id,
                display_prefix: secret.display_prefix(),
                key: secret.as_str().to_owned(),
            },
            position,
        ))
    }

    /// Revokes an API key of a tenant. Needs `api_keys:revoke`.
    pub async fn revoke_api_key(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        key: &str,
    ) -> Result<Option<i64>, IdentityError> {
        let tenant_id = parse_tenant(tenant)?;
        let key_id: ApiKeyId = key
            .parse()
            .map_err(|err| IdentityError::bad_input("keyId", err))?;
        let actor = actor_principal(metadata)?;
        let metadata = &self.sealed(metadata, subject_of(actor)).await?;
        let command = RevokeApiKey {
            tenant_id,
            actor,
            key_id,
            now: self.clock.now(),
        };
        let ((), position) = self.execute(metadata, &command).await?;
        Ok(position)
    }
}

struct CreateApiKey {
    tenant_id: TenantId,
    actor: Principal,
    key_id: ApiKeyId,
    name: String,
    hash: SecretHash,
    display_prefix: String,
    scopes: PermissionSet,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

impl<L: EventLog> Command<L> for CreateApiKey {
    type Output = ();
    type Error = Refused;

    async fn decide(&self, work: &mut UnitOfWork<'_, L>) -> Result<(), CommandError<Refused>> {
        let tenant = work.load::<Tenant>(&self.tenant_id.to_string()).await?;
        authorize(tenant.state(), &self.actor, Permission::ApiKeysCreate)?;
        let creator_permissions = tenant.state().effective_permissions(&self.actor);
        let mut key = work.load::<ApiKey>(&self.key_id.to_string()).await?;
        work.handle(
            &mut key,
            ApiKeyCommand::Create {
                key_id: self.key_id,
                tenant_id: self.tenant_id,
                owner: self.actor,
                name: self.name.clone(),
                hash: self.hash,
                display_prefix: self.display_prefix.clone(),
                scopes: self.scopes,
                creator_permissions,
                expires_at: self.expires_at,
                now: self.now,
            },
            &(),
        )
        .await
        .map_err(refused)?;
        Ok(())
    }
}

struct RevokeApiKey {
    tenant_id: TenantId,
    actor: Principal,
    key_id: ApiKeyId,
    now: DateTime<Utc>,
}

impl<L: EventLog> Command<L> for RevokeApiKey {
    type Output = ();
    type Error = Refused;

    async fn decide(&self, work: &mut UnitOfWork<'_, L>) -> Result<(), CommandError<Refused>> {
        let tenant = work.load::<Tenant>(&self.tenant_id.to_string()).await?;
        authorize(tenant.state(), &self.actor, Permission::ApiKeysRevoke)?;
        let mut key = work.load::<ApiKey>(&self.key_id.to_string()).await?;
        if key.state().tenant() != Some(self.tenant_id) {
            return Err(CommandError::Refused(Refused::new(
                RefusalKind::NotFound,
                "api_key_not_found",
                "no such API key in this tenant",
            )));
        }
        work.handle(&mut key, ApiKeyCommand::Revoke { now: self.now }, &())
            .await
            .map_err(refused)?;
        Ok(())
    }
}

struct ChangeEmail {
    tenant_id: TenantId,
    user_id: UserId,
    email: PersonalData,
    email_index: EmailIndex,
    verification: SecretHash,
    verification_expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
}

impl<L: EventLog> Command<L> for ChangeEmail {
    type Output = ();
    type Error = Refused;

    async fn decide(&self, work: &mut UnitOfWork<'_, L>) -> Result<(), CommandError<Refused>> {
        let mut user = work.load::<User>(&self.user_id.to_string()).await?;
        let Some(previous) = user.state().email_index().cloned() else {
            return Err(CommandError::Refused(Refused::new(
                RefusalKind::NotFound,
                "user_not_found",
                "no such user",
            )));
        };
        work.handle(
            &mut user,
            UserCommand::ChangeEmail {
                email: self.email.clone(),
                email_index: self.email_index.clone(),
                verification: self.verification,
                verification_expires_at: self.verification_expires_at,
                now: self.now,
            },
            &(),
        )
        .await
        .map_err(refused)?;
        let mut claim = work
            .load::<EmailClaim>(&claim_id(self.tenant_id, &self.email_index))
            .await?;
        work.handle(
            &mut claim,
            EmailClaimCommand::Claim {
                tenant_id: self.tenant_id,
                index: self.email_index.clone(),
                user_id: self.user_id,
                now: self.now,
            },
            &(),
        )
        .await
        .map_err(refused)?;
        let mut released = work
            .load::<EmailClaim>(&claim_id(self.tenant_id, &previous))
            .await?;
        work.handle(
            &mut released,
            EmailClaimCommand::Release {
                user_id: self.user_id,
                now: self.now,
            },
            &(),
        )
        .await
        .map_err(refused)?;
        Ok(())
    }
}
