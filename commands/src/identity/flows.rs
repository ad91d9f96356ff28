//! The identity commands: each a [`Command`] over a unit of work, plus the preparation it
//! needs before the work starts.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use domain::identity::credentials::{PasswordHash, SecretHash};
use domain::identity::email_claim::{EmailClaim, EmailClaimCommand, claim_id};
use domain::identity::principal::Principal;
use domain::identity::rbac::Permission;
use domain::identity::session::{RevokeReason, Session, SessionCommand, reuse_detected};
use domain::identity::tenant::{Tenant, TenantCommand, TenantStatus};
use domain::identity::user::{MfaStatus, User, UserCommand, UserStatus};
use domain::identity::values::{
    Email, EmailIndex, PersonName, PlanRef, SessionId, TenantId, TenantName, UserId,
};
use domain::personal::{PersonalData, SubjectId};
use domain::{Refusal, RefusalKind};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Identity, IdentityError};
use crate::bus::{self, Command, CommandError, EventLog, Idempotent, Outcome, UnitOfWork};
use crate::metadata::CommandMetadata;
use crate::privacy::{self, SubjectKeys};
use crate::security::password::{self, PasswordHasher};
use crate::security::recovery;

/// A refusal of any of the aggregates a command touches.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    kind: RefusalKind,
    reason: &'static str,
    message: String,
}

impl Refused {
    pub(crate) fn new(kind: RefusalKind, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            reason,
            message: message.into(),
        }
    }
}

impl Refusal for Refused {
    fn kind(&self) -> RefusalKind {
        self.kind
    }

    fn reason(&self) -> &'static str {
        self.reason
    }
}

pub(crate) fn refused<E: Refusal>(err: CommandError<E>) -> CommandError<Refused> {
    match err {
        CommandError::Refused(refusal) => CommandError::Refused(Refused {
            kind: refusal.kind(),
            reason: refusal.reason(),
            message: refusal.to_string(),
        }),
        CommandError::Forbidden(permission) => CommandError::Forbidden(permission),
        CommandError::BadInput(message) => CommandError::BadInput(message),
        CommandError::Conflict(err) => CommandError::Conflict(err),
        CommandError::Infrastructure(message) => CommandError::Infrastructure(message),
    }
}

fn refusal(
    kind: RefusalKind,
    reason: &'static str,
    message: impl Into<String>,
) -> CommandError<Refused> {
    CommandError::Refused(Refused {
        kind,
        reason,
        message: message.into(),
    })
}

/// A random token for a person or a client to hold (32 bytes, base64url), and its hash.
pub(crate) fn token() -> Result<(String, SecretHash), IdentityError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|_| IdentityError::Infrastructure("the random source failed".into()))?;
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_token(&token);
    Ok((token, hash))
}

/// The stored form of a token: SHA-256 of its text.
pub fn hash_token(token: &str) -> SecretHash {
    SecretHash::from_bytes(Sha256::digest(token.trim().as_bytes()).into())
}

pub(crate) fn parse_tenant(text: &str) -> Result<TenantId, IdentityError> {
    text.parse()
        .map_err(|err| IdentityError::bad_input("tenantId", err))
}

/// Hashes a password on a blocking thread: Argon2id takes tens of milliseconds of CPU.
pub(crate) async fn hash_password(
    hasher: &std::sync::Arc<dyn PasswordHasher>,
    password: &str,
) -> Result<PasswordHash, IdentityError> {
    let (hasher, password) = (hasher.clone(), password.to_owned());
    tokio::task::spawn_blocking(move || hasher.hash(&password))
        .await
        .map_err(|err| IdentityError::Infrastructure(format!("password hashing stopped: {err}")))?
        .map_err(|err| IdentityError::Infrastructure(err.to_string()))
}

pub(crate) async fn verify_password(
    hasher: &std::sync::Arc<dyn PasswordHasher>,
    password: &str,
    hash: &PasswordHash,
) -> Result<bool, IdentityError> {
    let (hasher, password, hash) = (hasher.clone(), password.to_owned(), hash.clone());
    tokio::task::spawn_blocking(move || hasher.verify(&password, &hash))
        .await
        .map_err(|err| IdentityError::Infrastructure(format!("password check stopped: {err}")))?
        .map_err(|err| IdentityError::Infrastructure(err.to_string()))
}

/// A new user's personal data, sealed under their own key, and their password hash.
struct NewPerson {
    user_id: UserId,
    email: PersonalData,
    email_index: EmailIndex,
    name: PersonalData,
    password: PasswordHash,
}

impl<L: EventLog, K: SubjectKeys> Identity<L, K> {
    async fn prepare_person(
        &self,
        tenant_id: TenantId,
        email: &str,
        name: &str,
        password: &str,
    ) -> Result<NewPerson, IdentityError> {
        let email =
            Email::parse(email).map_err(|err| IdentityError::bad_input("email", err.problem))?;
        let name =
            PersonName::parse(name).map_err(|err| IdentityError::bad_input("name", err.problem))?;
        password::check_policy(password, email.as_str())
            .map_err(|err| IdentityError::bad_input("password", err))?;
        let user_id = UserId::from_uuid(Uuid::now_v7());
        let subject = SubjectId::from_uuid(user_id.as_uuid());
        let key = self.keys.key_for(subject).await?;
        Ok(NewPerson {
            user_id,
            email: privacy::seal(&key, subject, "email", email.as_str())?,
            email_index: self.blind_index.email(tenant_id, &email),
            name: privacy::seal(&key, subject, "name", name.as_str())?,
            password: hash_password(&self.hasher, password).await?,
        })
    }

    /// The metadata with its client IP and user agent sealed under `subject`'s key.
    pub(crate) async fn sealed(
        &self,
        metadata: &CommandMetadata,
        subject: SubjectId,
    ) -> Result<CommandMetadata, IdentityError> {
        let mut metadata = metadata.clone();
        privacy::seal_request_metadata(&self.keys, &mut metadata, subject).await?;
        Ok(metadata)
    }

    /// Creates a tenant together with its first owner, who is registered as a user of it.
    pub async fn create_tenant(
        &self,
        metadata: &CommandMetadata,
        name: &str,
        plan: &str,
        owner_email: &str,
        owner_name: &str,
        owner_password: &str,
    ) -> Result<(Outcome<TenantCreated, TenantCreated>, Option<i64>), IdentityError> {
        let name =
            TenantName::parse(name).map_err(|err| IdentityError::bad_input("name", err.problem))?;
        let plan =
            PlanRef::parse(plan).map_err(|err| IdentityError::bad_input("plan", err.problem))?;
        let fingerprint = self.blind_index.request_digest(&[
            "create_tenant",
            name.as_str(),
            plan.as_str(),
            owner_email.trim(),
            owner_name.trim(),
        ]);
        let tenant_id = TenantId::from_uuid(Uuid::now_v7());
        let owner = self
            .prepare_person(tenant_id, owner_email, owner_name, owner_password)
            .await?;
        let metadata = &self
            .sealed(metadata, SubjectId::from_uuid(owner.user_id.as_uuid()))
            .await?;
        let (verification, verification_hash) = token()?;
        let command = CreateTenant {
            tenant_id,
            name,
            plan,
            owner_id: owner.user_id,
            fingerprint,
            owner: Some(owner),
            verification_hash,
            verification_expires_at: self.clock.now() + self.lifetimes.email_verification,
            verification,
            now: self.clock.now(),
        };
        let (outcome, committed) = bus::run_idempotent(&self.log, metadata, &command)
            .await
            .map_err(IdentityError::from)?;
        Ok((outcome, committed.map(|c| c.last_position)))
    }

    /// Registers a user in an active tenant. The user holds no role until a tenant admin
    /// grants one; the email address must be new in the tenant.
    pub async fn register(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        email: &str,
        name: &str,
        password: &str,
    ) -> Result<(Outcome<Registered, Registered>, Option<i64>), IdentityError> {
        let tenant_id = parse_tenant(tenant)?;
        let person = self
            .prepare_person(tenant_id, email, name, password)
            .await?;
        let metadata = &self
            .sealed(metadata, SubjectId::from_uuid(person.user_id.as_uuid()))
            .await?;
        let (verification, verification_hash) = token()?;
        let command = Register {
            tenant_id,
            user_id: person.user_id,
            fingerprint: self.blind_index.request_digest(&[
                "register",
                tenant.trim(),
                email.trim(),
                name.trim(),
            ]),
            person: Some(person),
            verification_hash,
            verification_expires_at: self.clock.now() + self.lifetimes.email_verification,
            verification,
            now: self.clock.now(),
        };
        let (outcome, committed) = bus::run_idempotent(&self.log, metadata, &command)
            .await
            .map_err(IdentityError::from)?;
        Ok((outcome, committed.map(|c| c.last_position)))
    }

    /// Logs in with email and password: opens a session and returns its first refresh
    /// token. A wrong password is recorded (and locks the account after five in a row);
    /// the answer never says whether the email or the password was wrong.
    pub async fn login(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        email: &str,
        password_text: &str,
    ) -> Result<(LoginOutcome, Option<i64>), IdentityError> {
        self.login_with_code(metadata, tenant, email, password_text, None)
            .await
    }

    /// Logs in with email, password and, for an account with MFA, a second factor: a TOTP
    /// code (6 digits) or a recovery code. A wrong TOTP code counts as a failed login.
    pub async fn login_with_code(
        &self,
        metadata: &CommandMetadata,
        tenant: &str,
        email: &str,
        password_text: &str,
        code: Option<&str>,
    ) -> Result<(LoginOutcome, Option<i64>), IdentityError> {
        let tenant_id = parse_tenant(tenant)?;
        let email =
            Email::parse(email).map_err(|err| IdentityError::bad_input("email", err.problem))?;
        let index = self.blind_index.email(tenant_id, &email);
        let reader = UnitOfWork::new(&self.log, metadata);
        let claim = reader
            .load::<EmailClaim>(&claim_id(tenant_id, &index))
            .await
            .map_err(|err| IdentityError::Infrastructure(err.to_string()))?;
        let Some(user_id) = claim.state().holder() else {
            // As slow as a real check, so that the answer's timing does not tell which
            // addresses are registered.
            hash_password(&self.hasher, password_text).await?;
            return Err(IdentityError::wrong_credentials());
        };
        let user = reader
            .load::<User>(&user_id.to_string())
            .await
            .map_err(|err| IdentityError::Infrastructure(err.to_string()))?;
        let now = self.clock.now();
        let verified = match user.state().password_hash() {
            Some(hash)
                if user.state().status() == UserStatus::Active && !user.state().is_locked(now) =>
            {
                verify_password(&self.hasher, password_text, hash).await?
            }
            _ => {
                hash_password(&self.hasher, password_text).await?;
                false
            }
        };
        let metadata = &self
            .sealed(metadata, SubjectId::from_uuid(user_id.as_uuid()))
            .await?;
        let second_factor = match code {
            Some(code) if verified && user.state().mfa_status() == MfaStatus::Enabled => {
                let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
                if compact.len() == 6 && compact.chars().all(|c| c.is_ascii_digit()) {
                    Some(
                        self.totp_step(user.state(), user_id, &compact, false)
                            .map(SecondFactor::Totp),
                    )
                } else {
                    Some(
                        recovery::hash(code)
                            .map(SecondFactor::Recovery)
                            .map_err(|err| IdentityError::bad_input("code", err)),
                    )
                }
            }
            _ => None,
        };
        let (refresh_token, refresh_hash) = token()?;
        let command = Login {
            second_factor,
            tenant_id,
            user_id,
            verified_hash: user.state().password_hash().cloned().filter(|_| verified),
            session_id: SessionId::from_uuid(Uuid::now_v7()),
            refresh_hash,
            expires_at: now + self.lifetimes.session,
            now,
        };
        let (decision, committed) = bus::run(&self.log, metadata, &command)
            .await
            .map_err(IdentityError::from)?;
        let position = committed.map(|c| c.last_position);
        match decision {
            LoginDecision::Opened { session_id, mfa } => Ok((
                LoginOutcome {
                    session_id,
                    user_id,
                    refresh_token,
                    mfa,
                },
                position,
            )),
            LoginDecision::Refused(err) => Err(err),
        }
    }

    /// Rotates a session's refresh token. Presenting a token that was already rotated
    /// revokes the whole session (the revocation is recorded) and fails.
    pub async fn refresh(
        &self,
        metadata: &CommandMetadata,
        session: &str,
        refresh_token: &str,
    ) -> Result<(Refreshed, Option<i64>), IdentityError> {
        let session_id: SessionId = session
            .parse()
            .map_err(|err| IdentityError::bad_input("sessionId", err))?;
        let reader = UnitOfWork::new(&self.log, metadata);
        let session = reader
            .load::<Session>(&session_id.to_string())
            .await
            .map_err(|err| IdentityError::Infrastructure(err.to_string()))?;
        let holder = session.state().user();
        let metadata = &match holder {
            Some(user) => {
                self.sealed(metadata, SubjectId::from_uuid(user.as_uuid()))
                    .await?
            }
            None => metadata.clone(),
        };
        // A password change or "revoke all sessions" ends every session opened before it.
        if let Some(user) = holder {
            let valid_after = reader
                .load::<User>(&user.to_string())
                .await
                .map_err(|err| IdentityError::Infrastructure(err.to_string()))?
                .state()
                .sessions_valid_after();
            if let (Some(valid_after), Some(opened_at)) = (valid_after, session.state().opened_at())
                && opened_at <= valid_after
                && !session.state().is_ended()
            {
                self.run_act::<Session>(
                    metadata,
                    session_id.to_string(),
                    SessionCommand::Revoke {
                        reason: RevokeReason::AllSessionsRevoked,
                        now: self.clock.now(),
                    },
                )
                .await?;
                return Err(IdentityError::Unauthenticated {
                    reason: "session_ended",
                    message: "this session was ended by a password change or a sign-out everywhere"
                        .into(),
                });
            }
        }
        let (next, next_hash) = token()?;
        let command = Refresh {
            session_id,
            presented: hash_token(refresh_token),
            next: next_hash,
            now: self.clock.now(),
        };
        let (reused, committed) = bus::run(&self.log, metadata, &command)
            .await
            .map_err(IdentityError::from)?;
        if reused {
            return Err(IdentityError::Unauthenticated {
                reason: "refresh_token_reused",
                message: "this refresh token was already used; the session is revoked".into(),
            });
        }
        Ok((
            Refreshed {
                session_id,
                refresh_token: next,
            },
            committed.map(|c| c.last_position),
        ))
    }
}

/// The data subject of a principal: whose key seals the personal data of its requests.
pub(crate) fn subject_of(principal: Principal) -> SubjectId {
    match principal {
        Principal::User(id) => SubjectId::from_uuid(id.as_uuid()),
        Principal::ServiceAccount(id) => SubjectId::from_uuid(id.as_uuid()),
    }
}

/// The principal behind a command, from its metadata.
pub(crate) fn actor_principal(metadata: &CommandMetadata) -> Result<Principal, IdentityError> {
    let id: Uuid = metadata
        .actor_id
        .parse()
        .map_err(|_| IdentityError::Unauthenticated {
            reason: "no_principal",
            message: "this needs a signed-in user or service account".into(),
        })?;
    match metadata.actor_kind {
        domain::ActorKind::User => Ok(Principal::User(UserId::from_uuid(id))),
        domain::ActorKind::ServiceAccount => Ok(Principal::ServiceAccount(
            domain::identity::values::ServiceAccountId::from_uuid(id),
        )),
        _ => Err(IdentityError::Unauthenticated {
            reason: "no_principal",
            message: "this needs a signed-in user or service account".into(),
        }),
    }
}

/// Checks that `actor` holds `permission` in the loaded tenant.
pub(crate) fn authorize(
    tenant: &Tenant,
    actor: &Principal,
    permission: Permission,
) -> Result<(), CommandError<Refused>> {
    if tenant.status() == TenantStatus::Absent {
        return Err(refusal(
            RefusalKind::NotFound,
            "tenant_not_found",
            "no such tenant",
        ));
    }
    if tenant.effective_permissions(actor).contains(permission) {
        Ok(())
    } else {
        Err(CommandError::Forbidden(permission))
    }
}

/// Creates a tenant and registers its owner.
#[derive(Serialize)]
pub struct CreateTenant {
    #[serde(skip)]
    tenant_id: TenantId,
    #[serde(skip)]
    name: TenantName,
    #[serde(skip)]
    plan: PlanRef,
    #[serde(skip)]
    owner_id: UserId,
    #[serde(skip)]
    owner: Option<NewPerson>,
    #[serde(skip)]
    verification: String,
    #[serde(skip)]
    verification_hash: SecretHash,
    #[serde(skip)]
    verification_expires_at: DateTime<Utc>,
    #[serde(skip)]
    now: DateTime<Utc>,
    fingerprint: String,
}

/// What creating a tenant gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TenantCreated {
    /// The new tenant.
    pub tenant_id: TenantId,
    /// Its owner.
    pub owner_id: UserId,
    /// The owner's email verification token, to send to them (absent on a replay).
    #[serde(skip)]
    pub verification_token: Option<String>,
}

impl<L: EventLog> Command<L> for CreateTenant {
    type Output = TenantCreated;
    type Error = Refused;

    async fn decide(
        &self,
        work: &mut UnitOfWork<'_, L>,
    ) -> Result<TenantCreated, CommandError<Refused>> {
        let Some(owner) = &self.owner else {
            return Err(CommandError::Infrastructure(
                "the owner was not prepared".into(),
            ));
        };
        let mut tenant = work.load::<Tenant>(&self.tenant_id.to_string()).await?;
        let mut user = work.load::<User>(&owner.user_id.to_string()).await?;
        let mut claim = work
            .load::<EmailClaim>(&claim_id(self.tenant_id, &owner.email_index))
            .await?;
        work.handle(
            &mut tenant,
            TenantCommand::Create {
                tenant_id: self.tenant_id,
                name: self.name.clone(),
                plan: self.plan.clone(),
                owner: owner.user_id,
                now: self.now,
            },
            &(),
        )
        .await
        .map_err(refused)?;
        register_person(
            work,
            &mut user,
            &mut claim,
            self.tenant_id,
            owner,
            self.verification_hash,
            self.verification_expires_at,
            self.now,
        )
        .await?;
        Ok(TenantCreated {
            tenant_id: self.tenant_id,
            owner_id: self.owner_id,
            verification_token: Some(self.verification.clone()),
        })
    }
}

impl<L: EventLog> Idempotent<L> for CreateTenant {
    type Recorded = TenantCreated;

    fn record(output: &TenantCreated) -> TenantCreated {
        TenantCreated {
            verification_token: None,
            ..output.clone()
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn register_person<L: EventLog>(
    work: &mut UnitOfWork<'_, L>,
    user: &mut bus::Loaded<User>,
    claim: &mut bus::Loaded<EmailClaim>,
    tenant_id: TenantId,
    person: &NewPerson,
    verification: SecretHash,
    verification_expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), CommandError<Refused>> {
    work.handle(
        claim,
        EmailClaimCommand::Claim {
            tenant_id,
            index: person.email_index.clone(),
            user_id: person.user_id,
            now,
        },
        &(),
    )
    .await
    .map_err(refused)?;
    work.handle(
        user,
        UserCommand::Register {
            user_id: person.user_id,
            tenant_id,
            email: person.email.clone(),
            email_index: person.email_index.clone(),
            name: person.name.clone(),
            password: person.password.clone(),
            verification,
            verification_expires_at,
            now,
        },
        &(),
    )
    .await
    .map_err(refused)?;
    Ok(())
}

/// Registers a user in a tenant.
#[derive(Serialize)]
pub struct Register {
    #[serde(skip)]
    tenant_id: TenantId,
    #[serde(skip)]
    user_id: UserId,
    #[serde(skip)]
    person: Option<NewPerson>,
    #[serde(skip)]
    verification: String,
    #[serde(skip)]
    verification_hash: SecretHash,
    #[serde(skip)]
    verification_expires_at: DateTime<Utc>,
    #[serde(skip)]
    now: DateTime<Utc>,
    fingerprint: String,
}

/// What registering gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Registered {
    /// The new user.
    pub user_id: UserId,
    /// The email verification token, to send to the address (absent on a replay).
    #[serde(skip)]
    pub verification_token: Option<String>,
}

impl<L: EventLog> Command<L> for Register {
    type Output = Registered;
    type Error = Refused;

    async fn decide(
        &self,
        work: &mut UnitOfWork<'_, L>,
    ) -> Result<Registered, CommandError<Refused>> {
        let Some(person) = &self.person else {
            return Err(CommandError::Infrastructure(
                "the user was not prepared".into(),
            ));
        };
        let tenant = work.load::<Tenant>(&self.tenant_id.to_string()).await?;
        match tenant.state().status() {
            TenantStatus::Active => {}
            TenantStatus::Absent => {
                return Err(refusal(
                    RefusalKind::NotFound,
                    "tenant_not_found",
                    "no such tenant",
                ));
            }
            _ => {
                return Err(refusal(
                    RefusalKind::Conflict,
                    "tenant_inactive",
                    "the tenant is suspended or closed; it accepts no registrations",
                ));
            }
        }
        let mut user = work.load::<User>(&person.user_id.to_string()).await?;
        let mut claim = work
            .load::<EmailClaim>(&claim_id(self.tenant_id, &person.email_index))
            .await?;
        register_person(
            work,
            &mut user,
            &mut claim,
            self.tenant_id,
            person,
            self.verification_hash,
            self.verification_expires_at,
            self.now,
        )
        .await?;
        Ok(Registered {
            user_id: self.user_id,
            verification_token: Some(self.verification.clone()),
        })
    }
}

impl<L: EventLog> Idempotent<L> for Register {
    type Recorded = Registered;

    fn record(output: &Registered) -> Registered {
        Registered {
            verification_token: None,
            ..output.clone()
        }
    }
}

/// A login, decided: the password check happened before, outside the unit of work.
pub struct Login {
    /// The second factor, checked before the unit of work, when one was given.
    second_factor: Option<Result<SecondFactor, IdentityError>>,
    tenant_id: TenantId,
    user_id: UserId,
    /// The stored hash the password was checked against, if it matched.
    verified_hash: Option<PasswordHash>,
    session_id: SessionId,
    refresh_hash: SecretHash,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
}

/// A checked second factor.
#[derive(Debug, Clone, Copy)]
pub enum SecondFactor {
    /// A TOTP code, valid for this step.
    Totp(u64),
    /// A recovery code, by its hash.
    Recovery(SecretHash),
}

/// What a successful login gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginOutcome {
    /// The new session.
    pub session_id: SessionId,
    /// Who logged in.
    pub user_id: UserId,
    /// The session's first refresh token.
    pub refresh_token: String,
    /// Whether the login used a second factor.
    pub mfa: bool,
}

/// How a login ended once decided (a failure is recorded, then reported).
pub enum LoginDecision {
    /// A session was opened.
    Opened {
        /// The session.
        session_id: SessionId,
        /// Whether a second factor was used.
        mfa: bool,
    },
    /// The login failed; the failure (and a lockout) was recorded.
    Refused(IdentityError),
}

impl<L: EventLog> Command<L> for Login {
    type Output = LoginDecision;
    type Error = Refused;

    async fn decide(
        &self,
        work: &mut UnitOfWork<'_, L>,
    ) -> Result<LoginDecision, CommandError<Refused>> {
        let mut user = work.load::<User>(&self.user_id.to_string()).await?;
        let state = user.state();
        if state.status() != UserStatus::Active || state.tenant() != Some(self.tenant_id) {
            return Ok(LoginDecision::Refused(IdentityError::wrong_credentials()));
        }
        if state.is_locked(self.now) {
            work.handle(
                &mut user,
                UserCommand::RecordFailedLogin { now: self.now },
                &(),
            )
            .await
            .map_err(refused)?;
            return Ok(LoginDecision::Refused(IdentityError::Unauthenticated {
                reason: "account_locked",
                message: "too many failed logins; the account is locked for a while".into(),
            }));
        }
        let matches =
            self.verified_hash.is_some() && self.verified_hash.as_ref() == state.password_hash();
        if !matches {
            work.handle(
                &mut user,
                UserCommand::RecordFailedLogin { now: self.now },
                &(),
            )
            .await
            .map_err(refused)?;
            return Ok(LoginDecision::Refused(IdentityError::wrong_credentials()));
        }
        let mut mfa_used = false;
        if state.mfa_status() == MfaStatus::Enabled {
            match &self.second_factor {
                None => {
                    return Ok(LoginDecision::Refused(IdentityError::Unauthenticated {
                        reason: "mfa_required",
                        message: "this account needs a TOTP code or a recovery code to log in"
                            .into(),
                    }));
                }
                Some(Err(err)) => {
                    work.handle(
                        &mut user,
                        UserCommand::RecordFailedLogin { now: self.now },
                        &(),
                    )
                    .await
                    .map_err(refused)?;
                    return Ok(LoginDecision::Refused(err.clone()));
                }
                Some(Ok(SecondFactor::Totp(step))) => {
                    work.handle(
                        &mut user,
                        UserCommand::UseTotp {
                            step: *step,
                            now: self.now,
                        },
                        &(),
                    )
                    .await
                    .map_err(refused)?;
                }
                Some(Ok(SecondFactor::Recovery(code))) => {
                    work.handle(
                        &mut user,
                        UserCommand::UseRecoveryCode {
                            code: *code,
                            now: self.now,
                        },
                        &(),
                    )
                    .await
                    .map_err(refused)?;
                }
            }
            mfa_used = true;
        }
        let mut session = work.load::<Session>(&self.session_id.to_string()).await?;
        work.handle(
            &mut user,
            UserCommand::RecordSuccessfulLogin {
                session_id: self.session_id,
                mfa_used,
                now: self.now,
            },
            &(),
        )
        .await
        .map_err(refused)?;
        work.handle(
            &mut session,
            SessionCommand::Open {
                session_id: self.session_id,
                user_id: self.user_id,
                tenant_id: self.tenant_id,
                refresh: self.refresh_hash,
                expires_at: self.expires_at,
                mfa: mfa_used,
                now: self.now,
            },
            &(),
        )
        .await
        .map_err(refused)?;
        Ok(LoginDecision::Opened {
            session_id: self.session_id,
            mfa: mfa_used,
        })
    }
}

/// Rotates a refresh token.
pub struct Refresh {
    session_id: SessionId,
    presented: SecretHash,
    next: SecretHash,
    now: DateTime<Utc>,
}

/// What a refresh gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refreshed {
    /// The session.
    pub session_id: SessionId,
    /// Its new refresh token; the presented one is spent.
    pub refresh_token: String,
}

impl<L: EventLog> Command<L> for Refresh {
    /// Whether reuse was detected (and the session revoked).
    type Output = bool;
    type Error = Refused;

    async fn decide(&self, work: &mut UnitOfWork<'_, L>) -> Result<bool, CommandError<Refused>> {
        let mut session = work.load::<Session>(&self.session_id.to_string()).await?;
        let events = work
            .handle(
                &mut session,
                SessionCommand::Refresh {
                    presented: self.presented,
                    next: self.next,
                    now: self.now,
                },
                &(),
            )
            .await
            .map_err(refused)?;
        Ok(reuse_detected(&events))
    }
}
