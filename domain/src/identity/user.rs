//! The `User` aggregate: a person in one tenant, from registration or invitation to
//! deactivation, with their email address, password, login failures and lockouts, TOTP
//! multi-factor authentication and the instant before which their sessions are void.
//!
//! Aggregate type `User`; aggregate id: the [`UserId`] as a string.
//!
//! Consistency rules:
//! - A user comes into being once, by [`UserCommand::Register`] (self-service: active at once,
//!   email unverified) or [`UserCommand::Invite`] (invited: active once the invitation is
//!   accepted; accepting proves the address, so it is verified then).
//! - Every other command needs the user to exist (`not_registered` otherwise). A deactivated
//!   user refuses every command, including `Register` and `Invite`, with `deactivated`.
//! - Commands a signed-in person issues (issuing an email verification, changing the email or
//!   password, recording a successful login, every MFA command) also need the user to be
//!   active (an invited user who has not accepted yet is refused with `not_active`).
//!   Verifying an email, recording a failed login, revoking sessions and deactivating only
//!   need the user to exist.
//! - Five consecutive failed logins ([`MAX_FAILED_LOGINS`]) lock the account; the n-th lock
//!   lasts [`lockout_duration`]`(n)`: 5 minutes × 2^(n−1), at most 24 hours. A failure while
//!   locked is recorded (`while_locked: true`) but neither extends the lock nor counts toward
//!   the next one. A successful login resets the consecutive failures but NOT the number of
//!   lockouts, so the locks of a repeatedly attacked account keep growing.
//! - Once TOTP is enabled, a login must have used MFA (`mfa_required`). No TOTP time step is
//!   ever accepted twice, nor one older than the last accepted (`code_already_used`); every
//!   recovery code works once.
//! - Changing the password (the application layer checks the current one first) and revoking
//!   all sessions move `sessions_valid_after` to that instant: every session issued before
//!   it is void. It never moves backwards.
//! - [`UserCommand::Forget`] erases the person (crypto-shredding: the application layer
//!   destroys their data key). It is the one command a deactivated user accepts. It records
//!   [`UserEvent::SubjectForgotten`], which carries the user's id and the time and nothing
//!   else; the user is deactivated for good, every session issued before is void, and the
//!   state drops the sealed fields, the password hash and the second factor. Forgetting a
//!   forgotten user records nothing: a retry is harmless.
//!
//! The key decision: the aggregate is pure and never sees a secret. Passwords arrive hashed,
//! tokens and recovery codes as [`SecretHash`]es, the TOTP secret sealed, and the TOTP code
//! already checked: the application layer passes the time step it matched, and the aggregate
//! enforces that steps only move forward. Failed logins and lockouts are events, as part of
//! the security audit trail.
//!
//! An expired invitation or verification token is refused as `Unauthenticated`
//! (`invitation_expired`, `verification_expired`): a token that no longer proves anything is
//! treated like a wrong one. Expiry is checked after the token matches, so only the holder of
//! the right token learns that it expired. A token is expired at and after its `expires_at`.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use super::credentials::{PasswordHash, SealedSecret, SecretHash};
use super::values::{EmailIndex, SessionId, TenantId, UserId};
use crate::personal::PersonalData;
use crate::refusal::{Refusal, RefusalKind};

/// How many consecutive failed logins lock the account.
pub const MAX_FAILED_LOGINS: u32 = 5;

/// The length of the first lockout.
const FIRST_LOCKOUT_MINUTES: i64 = 5;

/// The longest lockout.
const MAX_LOCKOUT_MINUTES: i64 = 24 * 60;

/// How long the `n`-th lockout of an account lasts (counting from 1): 5 minutes × 2^(n−1),
/// capped at 24 hours. `n = 0` is treated as the first lockout.
pub fn lockout_duration(n: u32) -> Duration {
    // 5 × 2^9 minutes is already past a day, so larger exponents only need the cap.
    let exponent = n.saturating_sub(1).min(10);
    let minutes = (FIRST_LOCKOUT_MINUTES << exponent).min(MAX_LOCKOUT_MINUTES);
    Duration::minutes(minutes)
}

/// Where a user is in their life cycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    /// Nothing has happened yet: the user does not exist.
    #[default]
    Unregistered,
    /// Invited by someone in the tenant; not accepted yet.
    Invited,
    /// Registered, or invited and accepted.
    Active,
    /// Deactivated: accepts no command any more.
    Deactivated,
}

/// Whether a user has multi-factor authentication, as the application layer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MfaStatus {
    /// No MFA.
    None,
    /// A TOTP enrollment was started and awaits its first code.
    Pending,
    /// TOTP is enabled: every login needs a second factor.
    Enabled,
}

/// A token whose hash the user must present before an instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PendingToken {
    token: SecretHash,
    expires_at: DateTime<Utc>,
}

/// An invitation not yet accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PendingInvitation {
    token: SecretHash,
    expires_at: DateTime<Utc>,
    invited_by: UserId,
}

/// A recovery code's hash and whether it was used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RecoveryCode {
    code: SecretHash,
    used: bool,
}

/// The MFA state of a user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mfa {
    #[default]
    None,
    Pending {
        secret: SealedSecret,
    },
    Enabled {
        secret: SealedSecret,
        last_used_step: u64,
        recovery_codes: Vec<RecoveryCode>,
    },
}

/// A person in one tenant: see the module documentation for the rules.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    status: UserStatus,
    id: Option<UserId>,
    tenant: Option<TenantId>,
    email: Option<PersonalData>,
    email_index: Option<EmailIndex>,
    email_verified: bool,
    pending_verification: Option<PendingToken>,
    invitation: Option<PendingInvitation>,
    name: Option<PersonalData>,
    password: Option<PasswordHash>,
    consecutive_failed_logins: u32,
    lockouts: u32,
    locked_until: Option<DateTime<Utc>>,
    mfa: Mfa,
    sessions_valid_after: Option<DateTime<Utc>>,
    /// Whether the person was forgotten (their data key destroyed).
    #[serde(default)]
    forgotten: bool,
}

impl User {
    /// Where the user is in their life cycle.
    pub const fn status(&self) -> UserStatus {
        self.status
    }

    /// The user's id, once registered or invited.
    pub const fn id(&self) -> Option<UserId> {
        self.id
    }

    /// The user's tenant, once registered or invited.
    pub const fn tenant(&self) -> Option<TenantId> {
        self.tenant
    }

    /// The sealed email address.
    pub const fn email(&self) -> Option<&PersonalData> {
        self.email.as_ref()
    }

    /// The blind index of the current email address.
    pub const fn email_index(&self) -> Option<&EmailIndex> {
        self.email_index.as_ref()
    }

    /// Whether the current email address is verified.
    pub const fn email_verified(&self) -> bool {
        self.email_verified
    }

    /// The sealed name (none while only invited).
    pub const fn name(&self) -> Option<&PersonalData> {
        self.name.as_ref()
    }

    /// The password hash (none while only invited).
    pub const fn password_hash(&self) -> Option<&PasswordHash> {
        self.password.as_ref()
    }

    /// Who invited the user, while the invitation is pending.
    pub fn invited_by(&self) -> Option<UserId> {
        self.invitation
            .as_ref()
            .map(|invitation| invitation.invited_by)
    }

    /// Whether the account is locked at `now`.
    pub fn is_locked(&self, now: DateTime<Utc>) -> bool {
        self.locked_until.is_some_and(|until| now < until)
    }

    /// When the latest lock ends (or ended).
    pub const fn locked_until(&self) -> Option<DateTime<Utc>> {
        self.locked_until
    }

    /// Consecutive failed logins since the last success or lock.
    pub const fn consecutive_failed_logins(&self) -> u32 {
        self.consecutive_failed_logins
    }

    /// How many times the account was locked so far (never reset).
    pub const fn lockouts(&self) -> u32 {
        self.lockouts
    }

    /// Whether MFA is off, being enrolled or on.
    pub const fn mfa_status(&self) -> MfaStatus {
        match self.mfa {
            Mfa::None => MfaStatus::None,
            Mfa::Pending { .. } => MfaStatus::Pending,
            Mfa::Enabled { .. } => MfaStatus::Enabled,
        }
    }

    /// The sealed TOTP secret of an enrollment awaiting its first code.
    pub const fn pending_totp_secret(&self) -> Option<&SealedSecret> {
        match &self.mfa {
            Mfa::Pending { secret } => Some(secret),
            _ => None,
        }
    }

    /// The sealed TOTP secret once enabled.
    pub const fn totp_secret(&self) -> Option<&SealedSecret> {
        match &self.mfa {
            Mfa::Enabled { secret, .. } => Some(secret),
            _ => None,
        }
    }

    /// The last TOTP time step accepted, once enabled. A code must match a later step.
    pub const fn last_used_totp_step(&self) -> Option<u64> {
        match &self.mfa {
            Mfa::Enabled { last_used_step, .. } => Some(*last_used_step),
            _ => None,
        }
    }

    /// How many recovery codes are left unused.
    pub fn unused_recovery_codes(&self) -> usize {
        match &self.mfa {
            Mfa::Enabled { recovery_codes, .. } => {
                recovery_codes.iter().filter(|code| !code.used).count()
            }
            _ => 0,
        }
    }

    /// Sessions issued before this instant are void (password change, revocation).
    pub const fn sessions_valid_after(&self) -> Option<DateTime<Utc>> {
        self.sessions_valid_after
    }

    /// Whether the person was forgotten: their personal data can no longer be read.
    pub const fn is_forgotten(&self) -> bool {
        self.forgotten
    }

    /// Refuses unless the user exists and is not deactivated.
    fn require_existing(&self) -> Result<(), UserError> {
        match self.status {
            UserStatus::Unregistered => Err(UserError::NotRegistered),
            UserStatus::Deactivated => Err(UserError::Deactivated),
            UserStatus::Invited | UserStatus::Active => Ok(()),
        }
    }

    /// Refuses unless the user is active.
    fn require_active(&self) -> Result<(), UserError> {
        self.require_existing()?;
        if self.status == UserStatus::Active {
            Ok(())
        } else {
            Err(UserError::NotActive)
        }
    }

    /// Refuses unless MFA is enabled; gives the last accepted step and the recovery codes.
    fn require_mfa(&self) -> Result<(u64, &[RecoveryCode]), UserError> {
        match &self.mfa {
            Mfa::Enabled {
                last_used_step,
                recovery_codes,
                ..
            } => Ok((*last_used_step, recovery_codes)),
            _ => Err(UserError::MfaNotEnabled),
        }
    }

    /// Refuses a TOTP step that is not later than the last accepted one.
    fn require_fresh_step(&self, step: u64) -> Result<(), UserError> {
        let (last_used_step, _) = self.require_mfa()?;
        if step <= last_used_step {
            Err(UserError::CodeAlreadyUsed)
        } else {
            Ok(())
        }
    }

    /// Decides a command: the events it causes, or why it is refused. Pure.
    fn decide(&self, command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
        // Erasure is owed to a deactivated person too, so it comes before that refusal.
        if let UserCommand::Forget { now } = command {
            return self.decide_forget(now);
        }
        if self.status == UserStatus::Deactivated {
            return Err(UserError::Deactivated);
        }
        match command {
            UserCommand::Register {
                user_id,
                tenant_id,
                email,
                email_index,
                name,
                password,
                verification,
                verification_expires_at,
                now,
            } => {
                if self.status != UserStatus::Unregistered {
                    return Err(UserError::AlreadyExists);
                }
                Ok(vec![
                    UserEvent::UserRegistered {
                        user_id,
                        tenant_id,
                        email,
                        email_index,
                        name,
                        password,
                        registered_at: now,
                    },
                    UserEvent::EmailVerificationIssued {
                        token: verification,
                        expires_at: verification_expires_at,
                    },
                ])
            }
            UserCommand::Invite {
                user_id,
                tenant_id,
                email,
                email_index,
                invited_by,
                invitation,
                expires_at,
                now,
            } => {
                if self.status != UserStatus::Unregistered {
                    return Err(UserError::AlreadyExists);
                }
                Ok(vec![UserEvent::UserInvited {
                    user_id,
                    tenant_id,
                    email,
                    email_index,
                    invited_by,
                    invitation,
                    expires_at,
                    invited_at: now,
                }])
            }
            UserCommand::AcceptInvitation {
                invitation,
                name,
                password,
                now,
            } => {
                let pending = match (&self.status, &self.invitation) {
                    (UserStatus::Invited, Some(pending)) => pending,
                    _ => return Err(UserError::NotInvited),
                };
                if pending.token != invitation {
                    return Err(UserError::InvitationMismatch);
                }
                if now >= pending.expires_at {
                    return Err(UserError::InvitationExpired {
                        expired_at: pending.expires_at,
                    });
                }
                Ok(vec![
                    UserEvent::InvitationAccepted {
                        name,
                        password,
                        accepted_at: now,
                    },
                    UserEvent::EmailVerified { verified_at: now },
                ])
            }
            UserCommand::IssueEmailVerification {
                token,
                expires_at,
                now: _,
            } => {
                self.require_active()?;
                if self.email_verified {
                    return Err(UserError::AlreadyVerified);
                }
                Ok(vec![UserEvent::EmailVerificationIssued {
                    token,
                    expires_at,
                }])
            }
            UserCommand::VerifyEmail { token, now } => {
                self.require_existing()?;
                if self.email_verified {
                    return Err(UserError::AlreadyVerified);
                }
                let Some(pending) = &self.pending_verification else {
                    return Err(UserError::NoVerificationPending);
                };
                if pending.token != token {
                    return Err(UserError::VerificationMismatch);
                }
                if now >= pending.expires_at {
                    return Err(UserError::VerificationExpired {
                        expired_at: pending.expires_at,
                    });
                }
                Ok(vec![UserEvent::EmailVerified { verified_at: now }])
            }
            UserCommand::ChangeEmail {
                email,
                email_index,
                verification,
                verification_expires_at,
                now,
            } => {
                self.require_active()?;
                let Some(previous_index) = self.email_index.clone() else {
                    return Err(UserError::NotRegistered);
                };
                if previous_index == email_index {
                    return Err(UserError::SameEmail);
                }
                Ok(vec![
                    UserEvent::EmailChanged {
                        email,
                        email_index,
                        previous_index,
                        changed_at: now,
                    },
                    UserEvent::EmailVerificationIssued {
                        token: verification,
                        expires_at: verification_expires_at,
                    },
                ])
            }
            UserCommand::ChangePassword { password, now } => {
                self.require_active()?;
                Ok(vec![UserEvent::PasswordChanged {
                    password,
                    changed_at: now,
                }])
            }
            UserCommand::Deactivate { now } => {
                self.require_existing()?;
                Ok(vec![UserEvent::UserDeactivated {
                    deactivated_at: now,
                }])
            }
            UserCommand::RecordFailedLogin { now } => {
                self.require_existing()?;
                if self.is_locked(now) {
                    return Ok(vec![UserEvent::LoginFailed {
                        at: now,
                        consecutive_failures: self.consecutive_failed_logins,
                        while_locked: true,
                    }]);
                }
                let consecutive_failures = self.consecutive_failed_logins.saturating_add(1);
                let mut events = vec![UserEvent::LoginFailed {
                    at: now,
                    consecutive_failures,
                    while_locked: false,
                }];
                if consecutive_failures >= MAX_FAILED_LOGINS {
                    let lockout = self.lockouts.saturating_add(1);
                    let until = now
                        .checked_add_signed(lockout_duration(lockout))
                        .unwrap_or(DateTime::<Utc>::MAX_UTC);
                    events.push(UserEvent::AccountLocked { until, lockout });
                }
                Ok(events)
            }
            UserCommand::RecordSuccessfulLogin {
                session_id,
                mfa_used,
                now,
            } => {
                self.require_active()?;
                if let Some(until) = self.locked_until.filter(|&until| now < until) {
                    return Err(UserError::AccountLocked { until });
                }
                if matches!(self.mfa, Mfa::Enabled { .. }) && !mfa_used {
                    return Err(UserError::MfaRequired);
                }
                Ok(vec![UserEvent::LoginSucceeded {
                    session_id,
                    at: now,
                    mfa_used,
                }])
            }
            UserCommand::StartTotpEnrollment { secret, now: _ } => {
                self.require_active()?;
                if matches!(self.mfa, Mfa::Enabled { .. }) {
                    return Err(UserError::MfaAlreadyEnabled);
                }
                Ok(vec![UserEvent::TotpEnrollmentStarted { secret }])
            }
            UserCommand::ConfirmTotp {
                step,
                recovery_codes,
                now,
            } => {
                self.require_active()?;
                match self.mfa {
                    Mfa::Pending { .. } => {}
                    Mfa::Enabled { .. } => return Err(UserError::MfaAlreadyEnabled),
                    Mfa::None => return Err(UserError::NoTotpEnrollmentPending),
                }
                if recovery_codes.is_empty() {
                    return Err(UserError::NoRecoveryCodes);
                }
                let has_duplicate = recovery_codes
                    .iter()
                    .enumerate()
                    .any(|(i, code)| recovery_codes[..i].contains(code));
                if has_duplicate {
                    return Err(UserError::DuplicateRecoveryCodes);
                }
                Ok(vec![UserEvent::TotpConfirmed {
                    step,
                    recovery_codes,
                    confirmed_at: now,
                }])
            }
            UserCommand::UseTotp { step, now: _ } => {
                self.require_active()?;
                self.require_fresh_step(step)?;
                Ok(vec![UserEvent::TotpCodeUsed { step }])
            }
            UserCommand::UseRecoveryCode { code, now: _ } => {
                self.require_active()?;
                let (_, recovery_codes) = self.require_mfa()?;
                match recovery_codes.iter().find(|known| known.code == code) {
                    None => Err(UserError::UnknownRecoveryCode),
                    Some(known) if known.used => Err(UserError::RecoveryCodeAlreadyUsed),
                    Some(_) => Ok(vec![UserEvent::RecoveryCodeUsed { code }]),
                }
            }
            UserCommand::DisableMfa { step, now } => {
                self.require_active()?;
                self.require_fresh_step(step)?;
                Ok(vec![UserEvent::MfaDisabled {
                    step,
                    disabled_at: now,
                }])
            }
            UserCommand::RevokeAllSessions { now } => {
                self.require_existing()?;
                Ok(vec![UserEvent::AllSessionsRevoked { at: now }])
            }
            UserCommand::Forget { now } => self.decide_forget(now),
        }
    }

    /// Forgets an existing user, whatever their status; a forgotten user again is no change.
    fn decide_forget(&self, now: DateTime<Utc>) -> Result<Vec<UserEvent>, UserError> {
        let Some(user_id) = self.id.filter(|_| self.status != UserStatus::Unregistered) else {
            return Err(UserError::NotRegistered);
        };
        if self.forgotten {
            return Ok(Vec::new());
        }
        Ok(vec![UserEvent::SubjectForgotten {
            user_id,
            forgotten_at: now,
        }])
    }

    /// Moves `sessions_valid_after` forward to `at` (never backwards).
    fn void_sessions_before(&mut self, at: DateTime<Utc>) {
        self.sessions_valid_after = Some(
            self.sessions_valid_after
                .map_or(at, |current| current.max(at)),
        );
    }
}

/// What a user can be asked to do. Every outside fact arrives inside the command.
#[derive(Debug, Clone, PartialEq)]
pub enum UserCommand {
    /// Self-service registration: the user is active at once, with an unverified email.
    Register {
        /// The new user's id (the aggregate id).
        user_id: UserId,
        /// The tenant the user belongs to.
        tenant_id: TenantId,
        /// The sealed email address.
        email: PersonalData,
        /// The email address's blind index (already claimed by the application layer).
        email_index: EmailIndex,
        /// The sealed name.
        name: PersonalData,
        /// The password, hashed.
        password: PasswordHash,
        /// The hash of the email verification token sent to the address.
        verification: SecretHash,
        /// When that token expires.
        verification_expires_at: DateTime<Utc>,
        /// The time.
        now: DateTime<Utc>,
    },
    /// Invite a person into a tenant by email.
    Invite {
        /// The new user's id (the aggregate id).
        user_id: UserId,
        /// The tenant the user belongs to.
        tenant_id: TenantId,
        /// The sealed email address.
        email: PersonalData,
        /// The email address's blind index.
        email_index: EmailIndex,
        /// Who invites.
        invited_by: UserId,
        /// The hash of the invitation token sent to the address.
        invitation: SecretHash,
        /// When the invitation expires.
        expires_at: DateTime<Utc>,
        /// The time.
        now: DateTime<Utc>,
    },
    /// Accept an invitation: this also verifies the email address.
    AcceptInvitation {
        /// The hash of the presented invitation token.
        invitation: SecretHash,
        /// The sealed name the person chose.
        name: PersonalData,
        /// The password they chose, hashed.
        password: PasswordHash,
        /// The time.
        now: DateTime<Utc>,
    },
    /// Send a new email verification token (the last one issued is the only valid one).
    IssueEmailVerification {
        /// The hash of the token.
        token: SecretHash,
        /// When it expires.
        expires_at: DateTime<Utc>,
        /// The time.
        now: DateTime<Utc>,
    },
    /// Verify the email address with the token sent to it.
    VerifyEmail {
        /// The hash of the presented token.
        token: SecretHash,
        /// The time.
        now: DateTime<Utc>,
    },
    /// Change the email address; the new one is unverified until its token comes back.
    ChangeEmail {
        /// The new sealed address.
        email: PersonalData,
        /// Its blind index (the application layer moves the uniqueness claim).
        email_index: EmailIndex,
        /// The hash of the verification token sent to the new address.
        verification: SecretHash,
        /// When that token expires.
        verification_expires_at: DateTime<Utc>,
        /// The time.
        now: DateTime<Utc>,
    },
    /// Change the password (the application layer verified the current one). Ends every
    /// session issued before `now`.
    ChangePassword {
        /// The new password, hashed.
        password: PasswordHash,
        /// The time.
        now: DateTime<Utc>,
    },
    /// Deactivate the user for good.
    Deactivate {
        /// The time.
        now: DateTime<Utc>,
    },
    /// Record a failed login attempt (wrong password or second factor).
    RecordFailedLogin {
        /// The time.
        now: DateTime<Utc>,
    },
    /// Record a successful login that opens a session.
    RecordSuccessfulLogin {
        /// The session opened.
        session_id: SessionId,
        /// Whether a second factor (TOTP code or recovery code) was presented and accepted.
        mfa_used: bool,
        /// The time.
        now: DateTime<Utc>,
    },
    /// Start a TOTP enrollment; a new start replaces one still pending.
    StartTotpEnrollment {
        /// The new TOTP secret, sealed.
        secret: SealedSecret,
        /// The time.
        now: DateTime<Utc>,
    },
    /// Confirm the pending enrollment with a first code; enables TOTP.
    ConfirmTotp {
        /// The time step the application layer matched against the pending secret.
        step: u64,
        /// The hashes of the recovery codes shown to the user once.
        recovery_codes: Vec<SecretHash>,
        /// The time.
        now: DateTime<Utc>,
    },
    /// Consume a TOTP code (at login or for a sensitive action).
    UseTotp {
        /// The time step the application layer matched.
        step: u64,
        /// The time.
        now: DateTime<Utc>,
    },
    /// Consume a recovery code instead of a TOTP code.
    UseRecoveryCode {
        /// The hash of the presented code.
        code: SecretHash,
        /// The time.
        now: DateTime<Utc>,
    },
    /// Turn MFA off, with a fresh TOTP code.
    DisableMfa {
        /// The time step of the fresh code, as matched by the application layer.
        step: u64,
        /// The time.
        now: DateTime<Utc>,
    },
    /// End every session issued before `now`.
    RevokeAllSessions {
        /// The time.
        now: DateTime<Utc>,
    },
    /// Forget the person: the application layer destroys their data key, so every personal
    /// field sealed with it becomes unreadable. Deactivates the user for good.
    Forget {
        /// The time.
        now: DateTime<Utc>,
    },
}

/// What happened to a user. Personal fields are sealed; credentials appear only as hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    /// A person registered themselves.
    UserRegistered {
        /// The user.
        user_id: UserId,
        /// Their tenant.
        tenant_id: TenantId,
        /// The sealed email address.
        email: PersonalData,
        /// Its blind index.
        email_index: EmailIndex,
        /// The sealed name.
        name: PersonalData,
        /// The password hash.
        password: PasswordHash,
        /// When.
        registered_at: DateTime<Utc>,
    },
    /// A person was invited into a tenant.
    UserInvited {
        /// The user.
        user_id: UserId,
        /// Their tenant.
        tenant_id: TenantId,
        /// The sealed email address.
        email: PersonalData,
        /// Its blind index.
        email_index: EmailIndex,
        /// Who invited them.
        invited_by: UserId,
        /// The hash of the invitation token.
        invitation: SecretHash,
        /// When the invitation expires.
        expires_at: DateTime<Utc>,
        /// When.
        invited_at: DateTime<Utc>,
    },
    /// The invitation was accepted; the user is active.
    InvitationAccepted {
        /// The sealed name.
        name: PersonalData,
        /// The password hash.
        password: PasswordHash,
        /// When.
        accepted_at: DateTime<Utc>,
    },
    /// An email verification token was sent; it replaces any earlier one.
    EmailVerificationIssued {
        /// The hash of the token.
        token: SecretHash,
        /// When it expires.
        expires_at: DateTime<Utc>,
    },
    /// The current email address is verified.
    EmailVerified {
        /// When.
        verified_at: DateTime<Utc>,
    },
    /// The email address changed; the new one is unverified.
    EmailChanged {
        /// The new sealed address.
        email: PersonalData,
        /// Its blind index.
        email_index: EmailIndex,
        /// The blind index of the address it replaces.
        previous_index: EmailIndex,
        /// When.
        changed_at: DateTime<Utc>,
    },
    /// The password changed; sessions issued before are void.
    PasswordChanged {
        /// The new password hash.
        password: PasswordHash,
        /// When.
        changed_at: DateTime<Utc>,
    },
    /// The user was deactivated.
    UserDeactivated {
        /// When.
        deactivated_at: DateTime<Utc>,
    },
    /// A login failed.
    LoginFailed {
        /// When.
        at: DateTime<Utc>,
        /// The consecutive failures counted after this one (unchanged when `while_locked`).
        consecutive_failures: u32,
        /// Whether the account was locked: such a failure does not count.
        while_locked: bool,
    },
    /// Too many consecutive failures locked the account.
    AccountLocked {
        /// When the lock ends.
        until: DateTime<Utc>,
        /// Which lockout of this account this is, from 1.
        lockout: u32,
    },
    /// A login succeeded and opened a session.
    LoginSucceeded {
        /// The session.
        session_id: SessionId,
        /// When.
        at: DateTime<Utc>,
        /// Whether a second factor was used.
        mfa_used: bool,
    },
    /// A TOTP enrollment started (replacing any pending one).
    TotpEnrollmentStarted {
        /// The sealed TOTP secret.
        secret: SealedSecret,
    },
    /// The pending TOTP enrollment was confirmed: TOTP is enabled.
    TotpConfirmed {
        /// The time step of the confirming code.
        step: u64,
        /// The hashes of the recovery codes.
        recovery_codes: Vec<SecretHash>,
        /// When.
        confirmed_at: DateTime<Utc>,
    },
    /// A TOTP code was accepted.
    TotpCodeUsed {
        /// Its time step.
        step: u64,
    },
    /// A recovery code was accepted and is spent.
    RecoveryCodeUsed {
        /// Its hash.
        code: SecretHash,
    },
    /// MFA was turned off.
    MfaDisabled {
        /// The time step of the fresh code that authorised it.
        step: u64,
        /// When.
        disabled_at: DateTime<Utc>,
    },
    /// Every session issued before `at` was ended.
    AllSessionsRevoked {
        /// When.
        at: DateTime<Utc>,
    },
    /// The person was forgotten: their data key is destroyed, so every personal field ever
    /// sealed for them reads as redacted. The user is deactivated and every session issued
    /// before is void. Holds no personal data and no free text.
    SubjectForgotten {
        /// The user, who is also the data subject.
        user_id: UserId,
        /// When.
        forgotten_at: DateTime<Utc>,
    },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UserRegistered { .. } => "UserRegistered",
            Self::UserInvited { .. } => "UserInvited",
            Self::InvitationAccepted { .. } => "InvitationAccepted",
            Self::EmailVerificationIssued { .. } => "EmailVerificationIssued",
            Self::EmailVerified { .. } => "EmailVerified",
            Self::EmailChanged { .. } => "EmailChanged",
            Self::PasswordChanged { .. } => "PasswordChanged",
            Self::UserDeactivated { .. } => "UserDeactivated",
            Self::LoginFailed { .. } => "LoginFailed",
            Self::AccountLocked { .. } => "AccountLocked",
            Self::LoginSucceeded { .. } => "LoginSucceeded",
            Self::TotpEnrollmentStarted { .. } => "TotpEnrollmentStarted",
            Self::TotpConfirmed { .. } => "TotpConfirmed",
            Self::TotpCodeUsed { .. } => "TotpCodeUsed",
            Self::RecoveryCodeUsed { .. } => "RecoveryCodeUsed",
            Self::MfaDisabled { .. } => "MfaDisabled",
            Self::AllSessionsRevoked { .. } => "AllSessionsRevoked",
            Self::SubjectForgotten { .. } => "SubjectForgotten",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Why a user refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    /// Register or Invite on a user that already exists.
    #[error("the user already exists")]
    AlreadyExists,
    /// The user does not exist.
    #[error("the user is not registered")]
    NotRegistered,
    /// The user is deactivated.
    #[error("the user is deactivated; it accepts no changes")]
    Deactivated,
    /// The user has not accepted their invitation yet.
    #[error("the user has not accepted their invitation yet")]
    NotActive,
    /// There is no pending invitation (never invited, or already accepted).
    #[error("the user has no pending invitation: it was never issued or is already accepted")]
    NotInvited,
    /// The invitation token does not match.
    #[error("the invitation token is not valid")]
    InvitationMismatch,
    /// The invitation expired.
    #[error("the invitation expired at {expired_at}; ask for a new one")]
    InvitationExpired {
        /// When it expired.
        expired_at: DateTime<Utc>,
    },
    /// The email address is already verified.
    #[error("the email address is already verified")]
    AlreadyVerified,
    /// No email verification is pending.
    #[error("no email verification is pending; ask for a new one")]
    NoVerificationPending,
    /// The verification token does not match the last one issued.
    #[error("the email verification token is not valid")]
    VerificationMismatch,
    /// The verification token expired.
    #[error("the email verification token expired at {expired_at}; ask for a new one")]
    VerificationExpired {
        /// When it expired.
        expired_at: DateTime<Utc>,
    },
    /// The new email address is the current one.
    #[error("the new email address is the current one")]
    SameEmail,
    /// The account is locked after repeated failed logins.
    #[error("the account is locked until {until} after repeated failed logins")]
    AccountLocked {
        /// When the lock ends.
        until: DateTime<Utc>,
    },
    /// MFA is enabled and the login did not use it.
    #[error("a second factor is required: MFA is enabled for this user")]
    MfaRequired,
    /// MFA is already enabled.
    #[error("MFA is already enabled; disable it before enrolling again")]
    MfaAlreadyEnabled,
    /// No TOTP enrollment is pending.
    #[error("no TOTP enrollment is pending; start one first")]
    NoTotpEnrollmentPending,
    /// Enabling TOTP needs at least one recovery code.
    #[error("enabling TOTP needs at least one recovery code")]
    NoRecoveryCodes,
    /// The recovery codes are not all different.
    #[error("the recovery codes are not all different")]
    DuplicateRecoveryCodes,
    /// MFA is not enabled.
    #[error("MFA is not enabled for this user")]
    MfaNotEnabled,
    /// The TOTP step was already used, or is older than the last one used.
    #[error("this TOTP code was already used, or is older than the last one used")]
    CodeAlreadyUsed,
    /// The recovery code is not one of the user's.
    #[error("the recovery code is not valid")]
    UnknownRecoveryCode,
    /// The recovery code was already used.
    #[error("the recovery code was already used")]
    RecoveryCodeAlreadyUsed,
}

impl Refusal for UserError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::AlreadyExists
            | Self::Deactivated
            | Self::NotActive
            | Self::NotInvited
            | Self::AlreadyVerified
            | Self::NoVerificationPending
            | Self::MfaAlreadyEnabled
            | Self::NoTotpEnrollmentPending
            | Self::MfaNotEnabled => RefusalKind::Conflict,
            Self::NotRegistered => RefusalKind::NotFound,
            Self::SameEmail | Self::NoRecoveryCodes | Self::DuplicateRecoveryCodes => {
                RefusalKind::BadInput
            }
            Self::InvitationMismatch
            | Self::InvitationExpired { .. }
            | Self::VerificationMismatch
            | Self::VerificationExpired { .. }
            | Self::AccountLocked { .. }
            | Self::MfaRequired
            | Self::CodeAlreadyUsed
            | Self::UnknownRecoveryCode
            | Self::RecoveryCodeAlreadyUsed => RefusalKind::Unauthenticated,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::AlreadyExists => "already_exists",
            Self::NotRegistered => "not_registered",
            Self::Deactivated => "deactivated",
            Self::NotActive => "not_active",
            Self::NotInvited => "not_invited",
            Self::InvitationMismatch => "invalid_invitation",
            Self::InvitationExpired { .. } => "invitation_expired",
            Self::AlreadyVerified => "already_verified",
            Self::NoVerificationPending => "no_verification_pending",
            Self::VerificationMismatch => "invalid_verification_token",
            Self::VerificationExpired { .. } => "verification_expired",
            Self::SameEmail => "same_email",
            Self::AccountLocked { .. } => "account_locked",
            Self::MfaRequired => "mfa_required",
            Self::MfaAlreadyEnabled => "mfa_already_enabled",
            Self::NoTotpEnrollmentPending => "no_totp_enrollment_pending",
            Self::NoRecoveryCodes => "no_recovery_codes",
            Self::DuplicateRecoveryCodes => "duplicate_recovery_codes",
            Self::MfaNotEnabled => "mfa_not_enabled",
            Self::CodeAlreadyUsed => "code_already_used",
            Self::UnknownRecoveryCode => "invalid_recovery_code",
            Self::RecoveryCodeAlreadyUsed => "recovery_code_already_used",
        }
    }
}

impl fmt::Display for UserStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unregistered => "unregistered",
            Self::Invited => "invited",
            Self::Active => "active",
            Self::Deactivated => "deactivated",
        })
    }
}

impl Aggregate for User {
    const TYPE: &'static str = "User";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        // Every refusal is decided before any event is written.
        let events = self.decide(command)?;
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserRegistered {
                user_id,
                tenant_id,
                email,
                email_index,
                name,
                password,
                registered_at: _,
            } => {
                self.status = UserStatus::Active;
                self.id = Some(user_id);
                self.tenant = Some(tenant_id);
                self.email = Some(email);
                self.email_index = Some(email_index);
                self.email_verified = false;
                self.name = Some(name);
                self.password = Some(password);
            }
            UserEvent::UserInvited {
                user_id,
                tenant_id,
                email,
                email_index,
                invited_by,
                invitation,
                expires_at,
                invited_at: _,
            } => {
                self.status = UserStatus::Invited;
                self.id = Some(user_id);
                self.tenant = Some(tenant_id);
                self.email = Some(email);
                self.email_index = Some(email_index);
                self.email_verified = false;
                self.invitation = Some(PendingInvitation {
                    token: invitation,
                    expires_at,
                    invited_by,
                });
            }
            UserEvent::InvitationAccepted {
                name,
                password,
                accepted_at: _,
            } => {
                self.status = UserStatus::Active;
                self.invitation = None;
                self.name = Some(name);
                self.password = Some(password);
            }
            UserEvent::EmailVerificationIssued { token, expires_at } => {
                self.pending_verification = Some(PendingToken { token, expires_at });
            }
            UserEvent::EmailVerified { verified_at: _ } => {
                self.email_verified = true;
                self.pending_verification = None;
            }
            UserEvent::EmailChanged {
                email,
                email_index,
                previous_index: _,
                changed_at: _,
            } => {
                self.email = Some(email);
                self.email_index = Some(email_index);
                self.email_verified = false;
                self.pending_verification = None;
            }
            UserEvent::PasswordChanged {
                password,
                changed_at,
            } => {
                self.password = Some(password);
                self.void_sessions_before(changed_at);
            }
            UserEvent::UserDeactivated { deactivated_at: _ } => {
                self.status = UserStatus::Deactivated;
                self.invitation = None;
                self.pending_verification = None;
            }
            UserEvent::LoginFailed {
                at: _,
                consecutive_failures,
                while_locked,
            } => {
                if !while_locked {
                    self.consecutive_failed_logins = consecutive_failures;
                }
            }
            UserEvent::AccountLocked { until, lockout } => {
                self.locked_until = Some(until);
                self.lockouts = lockout;
                self.consecutive_failed_logins = 0;
            }
            UserEvent::LoginSucceeded { .. } => {
                self.consecutive_failed_logins = 0;
            }
            UserEvent::TotpEnrollmentStarted { secret } => {
                self.mfa = Mfa::Pending { secret };
            }
            UserEvent::TotpConfirmed {
                step,
                recovery_codes,
                confirmed_at: _,
            } => {
                // Only a pending enrollment can be confirmed; the command guarantees it.
                if let Mfa::Pending { secret } = &self.mfa {
                    self.mfa = Mfa::Enabled {
                        secret: secret.clone(),
                        last_used_step: step,
                        recovery_codes: recovery_codes
                            .into_iter()
                            .map(|code| RecoveryCode { code, used: false })
                            .collect(),
                    };
                }
            }
            UserEvent::TotpCodeUsed { step } => {
                if let Mfa::Enabled { last_used_step, .. } = &mut self.mfa {
                    *last_used_step = step;
                }
            }
            UserEvent::RecoveryCodeUsed { code } => {
                if let Mfa::Enabled { recovery_codes, .. } = &mut self.mfa
                    && let Some(known) = recovery_codes.iter_mut().find(|known| known.code == code)
                {
                    known.used = true;
                }
            }
            UserEvent::MfaDisabled { .. } => {
                self.mfa = Mfa::None;
            }
            UserEvent::AllSessionsRevoked { at } => {
                self.void_sessions_before(at);
            }
            UserEvent::SubjectForgotten {
                user_id: _,
                forgotten_at,
            } => {
                self.status = UserStatus::Deactivated;
                self.forgotten = true;
                self.email = None;
                self.email_index = None;
                self.name = None;
                self.password = None;
                self.invitation = None;
                self.pending_verification = None;
                self.mfa = Mfa::None;
                self.void_sessions_before(forgotten_at);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use cqrs_es::test::TestFramework;
    use proptest::prelude::*;
    use uuid::Uuid;

    use super::*;
    use crate::personal::SubjectId;

    const ALICE: u128 = 1;
    const INVITER: u128 = 2;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap() + Duration::minutes(minutes)
    }

    fn user_id(n: u128) -> UserId {
        UserId::from_uuid(Uuid::from_u128(n))
    }

    fn tenant_id() -> TenantId {
        TenantId::from_uuid(Uuid::from_u128(100))
    }

    fn session(n: u128) -> SessionId {
        SessionId::from_uuid(Uuid::from_u128(1000 + n))
    }

    fn sealed(text: &str) -> PersonalData {
        PersonalData::from_sealed(SubjectId::from_uuid(Uuid::from_u128(ALICE)), text.into())
    }

    fn hash(n: u8) -> SecretHash {
        SecretHash::from_bytes([n; 32])
    }

    fn index(n: u8) -> EmailIndex {
        EmailIndex::from_digest([n; 32])
    }

    fn password() -> PasswordHash {
        PasswordHash::parse("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g").unwrap()
    }

    fn new_password() -> PasswordHash {
        PasswordHash::parse("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$bmV3aGFzaA").unwrap()
    }

    fn totp_secret(n: u8) -> SealedSecret {
        SealedSecret::from_sealed(format!("sealed-totp-{n}"))
    }

    fn framework() -> TestFramework<User> {
        TestFramework::with(())
    }

    fn replay(events: impl IntoIterator<Item = UserEvent>) -> User {
        let mut user = User::default();
        for event in events {
            user.apply(event);
        }
        user
    }

    /// Handles `command` on the user built from `given`; returns the events written.
    fn run(given: &[UserEvent], command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
        framework()
            .given(given.to_vec())
            .when(command)
            .inspect_result()
    }

    fn registered_event() -> UserEvent {
        UserEvent::UserRegistered {
            user_id: user_id(ALICE),
            tenant_id: tenant_id(),
            email: sealed("email"),
            email_index: index(1),
            name: sealed("name"),
            password: password(),
            registered_at: at(0),
        }
    }

    /// Registered at minute 0; verification token 1 expires at minute 60.
    fn registered() -> Vec<UserEvent> {
        vec![
            registered_event(),
            UserEvent::EmailVerificationIssued {
                token: hash(1),
                expires_at: at(60),
            },
        ]
    }

    fn verified() -> Vec<UserEvent> {
        let mut events = registered();
        events.push(UserEvent::EmailVerified { verified_at: at(1) });
        events
    }

    /// Invited at minute 0 with token 7, which expires at minute 60.
    fn invited() -> Vec<UserEvent> {
        vec![UserEvent::UserInvited {
            user_id: user_id(ALICE),
            tenant_id: tenant_id(),
            email: sealed("email"),
            email_index: index(1),
            invited_by: user_id(INVITER),
            invitation: hash(7),
            expires_at: at(60),
            invited_at: at(0),
        }]
    }

    fn accepted() -> Vec<UserEvent> {
        let mut events = invited();
        events.extend([
            UserEvent::InvitationAccepted {
                name: sealed("name"),
                password: password(),
                accepted_at: at(5),
            },
            UserEvent::EmailVerified { verified_at: at(5) },
        ]);
        events
    }

    fn deactivated() -> Vec<UserEvent> {
        let mut events = registered();
        events.push(UserEvent::UserDeactivated {
            deactivated_at: at(2),
        });
        events
    }

    fn enrolling() -> Vec<UserEvent> {
        let mut events = verified();
        events.push(UserEvent::TotpEnrollmentStarted {
            secret: totp_secret(1),
        });
        events
    }

    /// MFA enabled at step 100, with recovery codes 10 and 11.
    fn mfa_enabled() -> Vec<UserEvent> {
        let mut events = enrolling();
        events.push(UserEvent::TotpConfirmed {
            step: 100,
            recovery_codes: vec![hash(10), hash(11)],
            confirmed_at: at(3),
        });
        events
    }

    fn failed(minute: i64, consecutive_failures: u32) -> UserEvent {
        UserEvent::LoginFailed {
            at: at(minute),
            consecutive_failures,
            while_locked: false,
        }
    }

    /// Four failures at minutes 10 to 13, then the fifth at 14 locking until 19.
    fn locked_once() -> Vec<UserEvent> {
        let mut events = verified();
        events.extend((1..=5).map(|n| failed(9 + i64::from(n), n)));
        events.push(UserEvent::AccountLocked {
            until: at(19),
            lockout: 1,
        });
        events
    }

    fn register_command() -> UserCommand {
        UserCommand::Register {
            user_id: user_id(ALICE),
            tenant_id: tenant_id(),
            email: sealed("email"),
            email_index: index(1),
            name: sealed("name"),
            password: password(),
            verification: hash(1),
            verification_expires_at: at(60),
            now: at(0),
        }
    }

    fn invite_command() -> UserCommand {
        UserCommand::Invite {
            user_id: user_id(ALICE),
            tenant_id: tenant_id(),
            email: sealed("email"),
            email_index: index(1),
            invited_by: user_id(INVITER),
            invitation: hash(7),
            expires_at: at(60),
            now: at(0),
        }
    }

    fn accept_command(token: u8, minute: i64) -> UserCommand {
        UserCommand::AcceptInvitation {
            invitation: hash(token),
            name: sealed("name"),
            password: password(),
            now: at(minute),
        }
    }

    fn change_email_command(new_index: u8) -> UserCommand {
        UserCommand::ChangeEmail {
            email: sealed("new email"),
            email_index: index(new_index),
            verification: hash(3),
            verification_expires_at: at(90),
            now: at(30),
        }
    }

    fn login(minute: i64, mfa_used: bool) -> UserCommand {
        UserCommand::RecordSuccessfulLogin {
            session_id: session(1),
            mfa_used,
            now: at(minute),
        }
    }

    fn fail(minute: i64) -> UserCommand {
        UserCommand::RecordFailedLogin { now: at(minute) }
    }

    /// One command of each kind.
    fn every_command() -> Vec<UserCommand> {
        vec![
            register_command(),
            invite_command(),
            accept_command(7, 10),
            UserCommand::IssueEmailVerification {
                token: hash(2),
                expires_at: at(90),
                now: at(30),
            },
            UserCommand::VerifyEmail {
                token: hash(1),
                now: at(10),
            },
            change_email_command(2),
            UserCommand::ChangePassword {
                password: new_password(),
                now: at(30),
            },
            UserCommand::Deactivate { now: at(30) },
            fail(30),
            login(30, true),
            UserCommand::StartTotpEnrollment {
                secret: totp_secret(1),
                now: at(30),
            },
            UserCommand::ConfirmTotp {
                step: 100,
                recovery_codes: vec![hash(10)],
                now: at(30),
            },
            UserCommand::UseTotp {
                step: 200,
                now: at(30),
            },
            UserCommand::UseRecoveryCode {
                code: hash(10),
                now: at(30),
            },
            UserCommand::DisableMfa {
                step: 200,
                now: at(30),
            },
            UserCommand::RevokeAllSessions { now: at(30) },
        ]
    }

    // --- Register ---

    #[test]
    fn registers_a_user_with_an_unverified_email() {
        framework()
            .given_no_previous_events()
            .when(register_command())
            .then_expect_events(registered());
        let user = replay(registered());
        assert_eq!(user.status(), UserStatus::Active);
        assert_eq!(user.id(), Some(user_id(ALICE)));
        assert_eq!(user.tenant(), Some(tenant_id()));
        assert_eq!(user.email(), Some(&sealed("email")));
        assert_eq!(user.email_index(), Some(&index(1)));
        assert_eq!(user.name(), Some(&sealed("name")));
        assert_eq!(user.password_hash(), Some(&password()));
        assert!(!user.email_verified());
        assert_eq!(user.mfa_status(), MfaStatus::None);
    }

    #[test]
    fn refuses_to_register_a_user_that_already_exists() {
        framework()
            .given(registered())
            .when(register_command())
            .then_expect_error(UserError::AlreadyExists);
    }

    #[test]
    fn refuses_to_register_a_user_already_invited() {
        framework()
            .given(invited())
            .when(register_command())
            .then_expect_error(UserError::AlreadyExists);
    }

    // --- Invite ---

    #[test]
    fn invites_a_user() {
        framework()
            .given_no_previous_events()
            .when(invite_command())
            .then_expect_events(invited());
        let user = replay(invited());
        assert_eq!(user.status(), UserStatus::Invited);
        assert_eq!(user.invited_by(), Some(user_id(INVITER)));
        assert_eq!(user.password_hash(), None);
        assert!(!user.email_verified());
    }

    #[test]
    fn refuses_to_invite_a_user_that_already_exists() {
        for given in [registered(), invited(), accepted()] {
            framework()
                .given(given)
                .when(invite_command())
                .then_expect_error(UserError::AlreadyExists);
        }
    }

    // --- AcceptInvitation ---

    #[test]
    fn accepting_an_invitation_activates_the_user_and_verifies_the_email() {
        framework()
            .given(invited())
            .when(accept_command(7, 5))
            .then_expect_events(accepted()[1..].to_vec());
        let user = replay(accepted());
        assert_eq!(user.status(), UserStatus::Active);
        assert!(user.email_verified());
        assert_eq!(user.password_hash(), Some(&password()));
        assert_eq!(user.invited_by(), None);
    }

    #[test]
    fn refuses_to_accept_an_invitation_that_was_never_issued() {
        framework()
            .given_no_previous_events()
            .when(accept_command(7, 5))
            .then_expect_error(UserError::NotInvited);
        framework()
            .given(registered())
            .when(accept_command(7, 5))
            .then_expect_error(UserError::NotInvited);
    }

    #[test]
    fn refuses_an_invitation_with_the_wrong_token() {
        framework()
            .given(invited())
            .when(accept_command(8, 5))
            .then_expect_error(UserError::InvitationMismatch);
    }

    #[test]
    fn refuses_an_expired_invitation() {
        framework()
            .given(invited())
            .when(accept_command(7, 60))
            .then_expect_error(UserError::InvitationExpired { expired_at: at(60) });
    }

    #[test]
    fn a_wrong_token_does_not_learn_that_the_invitation_expired() {
        framework()
            .given(invited())
            .when(accept_command(8, 120))
            .then_expect_error(UserError::InvitationMismatch);
    }

    #[test]
    fn a_reused_invitation_token_is_refused() {
        framework()
            .given(accepted())
            .when(accept_command(7, 6))
            .then_expect_error(UserError::NotInvited);
    }

    // --- IssueEmailVerification ---

    #[test]
    fn issues_a_new_email_verification() {
        framework()
            .given(registered())
            .when(UserCommand::IssueEmailVerification {
                token: hash(2),
                expires_at: at(90),
                now: at(30),
            })
            .then_expect_events(vec![UserEvent::EmailVerificationIssued {
                token: hash(2),
                expires_at: at(90),
            }]);
    }

    #[test]
    fn refuses_to_issue_a_verification_for_a_verified_email() {
        framework()
            .given(verified())
            .when(UserCommand::IssueEmailVerification {
                token: hash(2),
                expires_at: at(90),
                now: at(30),
            })
            .then_expect_error(UserError::AlreadyVerified);
    }

    #[test]
    fn refuses_to_issue_a_verification_before_the_invitation_is_accepted() {
        framework()
            .given(invited())
            .when(UserCommand::IssueEmailVerification {
                token: hash(2),
                expires_at: at(90),
                now: at(30),
            })
            .then_expect_error(UserError::NotActive);
    }

    #[test]
    fn refuses_every_command_but_creation_for_a_user_that_does_not_exist() {
        for command in every_command() {
            let expected = match command {
                UserCommand::Register { .. } | UserCommand::Invite { .. } => continue,
                UserCommand::AcceptInvitation { .. } => UserError::NotInvited,
                _ => UserError::NotRegistered,
            };
            assert_eq!(run(&[], command.clone()), Err(expected), "{command:?}");
        }
    }

    // --- VerifyEmail ---

    #[test]
    fn verifies_the_email_with_the_token_sent() {
        framework()
            .given(registered())
            .when(UserCommand::VerifyEmail {
                token: hash(1),
                now: at(1),
            })
            .then_expect_events(vec![UserEvent::EmailVerified { verified_at: at(1) }]);
        assert!(replay(verified()).email_verified());
    }

    #[test]
    fn refuses_to_verify_an_email_twice() {
        framework()
            .given(verified())
            .when(UserCommand::VerifyEmail {
                token: hash(1),
                now: at(2),
            })
            .then_expect_error(UserError::AlreadyVerified);
    }

    #[test]
    fn refuses_to_verify_without_a_pending_verification() {
        framework()
            .given(invited())
            .when(UserCommand::VerifyEmail {
                token: hash(1),
                now: at(2),
            })
            .then_expect_error(UserError::NoVerificationPending);
    }

    #[test]
    fn refuses_a_wrong_verification_token() {
        framework()
            .given(registered())
            .when(UserCommand::VerifyEmail {
                token: hash(9),
                now: at(2),
            })
            .then_expect_error(UserError::VerificationMismatch);
    }

    #[test]
    fn refuses_an_expired_verification_token() {
        framework()
            .given(registered())
            .when(UserCommand::VerifyEmail {
                token: hash(1),
                now: at(60),
            })
            .then_expect_error(UserError::VerificationExpired { expired_at: at(60) });
    }

    #[test]
    fn only_the_latest_verification_token_works() {
        let mut given = registered();
        given.push(UserEvent::EmailVerificationIssued {
            token: hash(2),
            expires_at: at(90),
        });
        framework()
            .given(given)
            .when(UserCommand::VerifyEmail {
                token: hash(1),
                now: at(30),
            })
            .then_expect_error(UserError::VerificationMismatch);
    }

    // --- ChangeEmail ---

    #[test]
    fn changing_the_email_makes_it_unverified_and_sends_a_token() {
        let then = vec![
            UserEvent::EmailChanged {
                email: sealed("new email"),
                email_index: index(2),
                previous_index: index(1),
                changed_at: at(30),
            },
            UserEvent::EmailVerificationIssued {
                token: hash(3),
                expires_at: at(90),
            },
        ];
        framework()
            .given(verified())
            .when(change_email_command(2))
            .then_expect_events(then.clone());
        let user = replay(verified().into_iter().chain(then));
        assert!(!user.email_verified());
        assert_eq!(user.email_index(), Some(&index(2)));
        assert_eq!(user.email(), Some(&sealed("new email")));
        let verify_new = UserCommand::VerifyEmail {
            token: hash(3),
            now: at(31),
        };
        let mut given = verified();
        given.extend(run(&verified(), change_email_command(2)).unwrap());
        assert!(run(&given, verify_new).is_ok());
    }

    #[test]
    fn refuses_to_change_to_the_same_email() {
        framework()
            .given(verified())
            .when(change_email_command(1))
            .then_expect_error(UserError::SameEmail);
    }

    #[test]
    fn refuses_to_change_the_email_before_the_invitation_is_accepted() {
        framework()
            .given(invited())
            .when(change_email_command(2))
            .then_expect_error(UserError::NotActive);
    }

    // --- ChangePassword ---

    #[test]
    fn changing_the_password_ends_earlier_sessions() {
        let then = vec![UserEvent::PasswordChanged {
            password: new_password(),
            changed_at: at(30),
        }];
        framework()
            .given(verified())
            .when(UserCommand::ChangePassword {
                password: new_password(),
                now: at(30),
            })
            .then_expect_events(then.clone());
        let user = replay(verified().into_iter().chain(then));
        assert_eq!(user.password_hash(), Some(&new_password()));
        assert_eq!(user.sessions_valid_after(), Some(at(30)));
    }

    #[test]
    fn refuses_to_change_the_password_before_the_invitation_is_accepted() {
        framework()
            .given(invited())
            .when(UserCommand::ChangePassword {
                password: new_password(),
                now: at(30),
            })
            .then_expect_error(UserError::NotActive);
    }

    // --- Deactivate ---

    #[test]
    fn deactivates_a_user() {
        framework()
            .given(registered())
            .when(UserCommand::Deactivate { now: at(2) })
            .then_expect_events(vec![UserEvent::UserDeactivated {
                deactivated_at: at(2),
            }]);
        assert_eq!(replay(deactivated()).status(), UserStatus::Deactivated);
    }

    #[test]
    fn deactivating_an_invited_user_voids_the_invitation() {
        let mut given = invited();
        given.extend(run(&invited(), UserCommand::Deactivate { now: at(2) }).unwrap());
        assert_eq!(
            run(&given, accept_command(7, 3)),
            Err(UserError::Deactivated)
        );
    }

    #[test]
    fn refuses_to_deactivate_twice() {
        framework()
            .given(deactivated())
            .when(UserCommand::Deactivate { now: at(3) })
            .then_expect_error(UserError::Deactivated);
    }

    #[test]
    fn refuses_to_deactivate_a_user_that_does_not_exist() {
        framework()
            .given_no_previous_events()
            .when(UserCommand::Deactivate { now: at(3) })
            .then_expect_error(UserError::NotRegistered);
    }

    #[test]
    fn a_deactivated_user_accepts_no_command() {
        for command in every_command() {
            assert_eq!(
                run(&deactivated(), command.clone()),
                Err(UserError::Deactivated),
                "{command:?}"
            );
        }
    }

    // --- RecordFailedLogin ---

    #[test]
    fn records_a_failed_login() {
        framework()
            .given(verified())
            .when(fail(10))
            .then_expect_events(vec![failed(10, 1)]);
        let user = replay(verified().into_iter().chain([failed(10, 1)]));
        assert_eq!(user.consecutive_failed_logins(), 1);
        assert!(!user.is_locked(at(10)));
    }

    #[test]
    fn locks_the_account_after_five_consecutive_failures() {
        let given: Vec<UserEvent> = locked_once()[..locked_once().len() - 2].to_vec();
        framework()
            .given(given)
            .when(fail(14))
            .then_expect_events(vec![
                failed(14, 5),
                UserEvent::AccountLocked {
                    until: at(19),
                    lockout: 1,
                },
            ]);
        let user = replay(locked_once());
        assert!(user.is_locked(at(14)));
        assert!(user.is_locked(at(18)));
        assert!(!user.is_locked(at(19)));
        assert_eq!(user.locked_until(), Some(at(19)));
        assert_eq!(user.lockouts(), 1);
        assert_eq!(user.consecutive_failed_logins(), 0);
    }

    #[test]
    fn each_lockout_lasts_twice_as_long_as_the_one_before_up_to_a_day() {
        assert_eq!(MAX_FAILED_LOGINS, 5);
        assert_eq!(lockout_duration(1), Duration::minutes(5));
        assert_eq!(lockout_duration(2), Duration::minutes(10));
        assert_eq!(lockout_duration(3), Duration::minutes(20));
        assert_eq!(lockout_duration(9), Duration::minutes(1280));
        assert_eq!(lockout_duration(10), Duration::hours(24));
        assert_eq!(lockout_duration(64), Duration::hours(24));
        assert_eq!(lockout_duration(u32::MAX), Duration::hours(24));
        assert_eq!(lockout_duration(0), Duration::minutes(5));

        // The second lockout, after the first one ended.
        let mut given = locked_once();
        given.extend((1..=4).map(|n| failed(19 + i64::from(n), n)));
        framework()
            .given(given)
            .when(fail(24))
            .then_expect_events(vec![
                failed(24, 5),
                UserEvent::AccountLocked {
                    until: at(34),
                    lockout: 2,
                },
            ]);
    }

    #[test]
    fn a_failure_while_locked_does_not_extend_the_lock() {
        let then = vec![UserEvent::LoginFailed {
            at: at(15),
            consecutive_failures: 0,
            while_locked: true,
        }];
        framework()
            .given(locked_once())
            .when(fail(15))
            .then_expect_events(then.clone());
        let user = replay(locked_once().into_iter().chain(then));
        assert_eq!(user.locked_until(), Some(at(19)));
        assert_eq!(user.consecutive_failed_logins(), 0);
        assert_eq!(user.lockouts(), 1);
    }

    #[test]
    fn failures_while_locked_do_not_count_toward_the_next_lockout() {
        let mut user = replay(locked_once());
        let mut all = locked_once();
        for minute in 15..19 {
            let events = run(&all, fail(minute)).unwrap();
            all.extend(events.clone());
            for event in events {
                user.apply(event);
            }
        }
        assert_eq!(user.consecutive_failed_logins(), 0);
        assert_eq!(
            run(&all, fail(20)).unwrap(),
            vec![failed(20, 1)],
            "the first failure after the lock starts a new count"
        );
    }

    #[test]
    fn records_failed_logins_of_an_invited_user() {
        framework()
            .given(invited())
            .when(fail(10))
            .then_expect_events(vec![failed(10, 1)]);
    }

    // --- RecordSuccessfulLogin ---

    #[test]
    fn records_a_successful_login_and_resets_the_failures() {
        let mut given = verified();
        given.extend([failed(10, 1), failed(11, 2)]);
        let then = vec![UserEvent::LoginSucceeded {
            session_id: session(1),
            at: at(12),
            mfa_used: false,
        }];
        framework()
            .given(given.clone())
            .when(login(12, false))
            .then_expect_events(then.clone());
        assert_eq!(
            replay(given.into_iter().chain(then)).consecutive_failed_logins(),
            0
        );
    }

    #[test]
    fn refuses_a_login_while_locked() {
        let err = run(&locked_once(), login(15, false)).unwrap_err();
        assert_eq!(err, UserError::AccountLocked { until: at(19) });
        assert_eq!(err.kind(), RefusalKind::Unauthenticated);
        assert_eq!(err.reason(), "account_locked");
        assert!(err.to_string().contains(&at(19).to_string()), "{err}");
    }

    #[test]
    fn accepts_a_login_once_the_lock_has_expired() {
        framework()
            .given(locked_once())
            .when(login(19, false))
            .then_expect_events(vec![UserEvent::LoginSucceeded {
                session_id: session(1),
                at: at(19),
                mfa_used: false,
            }]);
    }

    #[test]
    fn a_success_does_not_reset_the_lockout_count() {
        let mut given = locked_once();
        given.extend(run(&given, login(20, false)).unwrap());
        assert_eq!(replay(given.clone()).lockouts(), 1);
        for minute in 21..25 {
            given.extend(run(&given, fail(minute)).unwrap());
        }
        assert_eq!(
            run(&given, fail(25)).unwrap(),
            vec![
                failed(25, 5),
                UserEvent::AccountLocked {
                    until: at(35),
                    lockout: 2,
                },
            ]
        );
    }

    #[test]
    fn refuses_a_login_before_the_invitation_is_accepted() {
        framework()
            .given(invited())
            .when(login(10, false))
            .then_expect_error(UserError::NotActive);
    }

    #[test]
    fn refuses_a_login_without_mfa_once_mfa_is_enabled() {
        framework()
            .given(mfa_enabled())
            .when(login(10, false))
            .then_expect_error(UserError::MfaRequired);
    }

    #[test]
    fn accepts_a_login_with_mfa_once_mfa_is_enabled() {
        framework()
            .given(mfa_enabled())
            .when(login(10, true))
            .then_expect_events(vec![UserEvent::LoginSucceeded {
                session_id: session(1),
                at: at(10),
                mfa_used: true,
            }]);
    }

    // --- StartTotpEnrollment ---

    #[test]
    fn starts_a_totp_enrollment() {
        framework()
            .given(verified())
            .when(UserCommand::StartTotpEnrollment {
                secret: totp_secret(1),
                now: at(2),
            })
            .then_expect_events(vec![UserEvent::TotpEnrollmentStarted {
                secret: totp_secret(1),
            }]);
        let user = replay(enrolling());
        assert_eq!(user.mfa_status(), MfaStatus::Pending);
        assert_eq!(user.pending_totp_secret(), Some(&totp_secret(1)));
        assert_eq!(user.totp_secret(), None);
    }

    #[test]
    fn a_second_enrollment_replaces_a_pending_one() {
        let then = vec![UserEvent::TotpEnrollmentStarted {
            secret: totp_secret(2),
        }];
        framework()
            .given(enrolling())
            .when(UserCommand::StartTotpEnrollment {
                secret: totp_secret(2),
                now: at(3),
            })
            .then_expect_events(then.clone());
        let user = replay(enrolling().into_iter().chain(then));
        assert_eq!(user.pending_totp_secret(), Some(&totp_secret(2)));
    }

    #[test]
    fn refuses_to_enroll_when_mfa_is_already_enabled() {
        framework()
            .given(mfa_enabled())
            .when(UserCommand::StartTotpEnrollment {
                secret: totp_secret(2),
                now: at(4),
            })
            .then_expect_error(UserError::MfaAlreadyEnabled);
    }

    #[test]
    fn refuses_to_enroll_before_the_invitation_is_accepted() {
        framework()
            .given(invited())
            .when(UserCommand::StartTotpEnrollment {
                secret: totp_secret(2),
                now: at(4),
            })
            .then_expect_error(UserError::NotActive);
    }

    // --- ConfirmTotp ---

    #[test]
    fn confirming_totp_enables_mfa() {
        framework()
            .given(enrolling())
            .when(UserCommand::ConfirmTotp {
                step: 100,
                recovery_codes: vec![hash(10), hash(11)],
                now: at(3),
            })
            .then_expect_events(mfa_enabled()[enrolling().len()..].to_vec());
        let user = replay(mfa_enabled());
        assert_eq!(user.mfa_status(), MfaStatus::Enabled);
        assert_eq!(user.totp_secret(), Some(&totp_secret(1)));
        assert_eq!(user.pending_totp_secret(), None);
        assert_eq!(user.last_used_totp_step(), Some(100));
        assert_eq!(user.unused_recovery_codes(), 2);
    }

    #[test]
    fn refuses_to_confirm_without_a_pending_enrollment() {
        framework()
            .given(verified())
            .when(UserCommand::ConfirmTotp {
                step: 100,
                recovery_codes: vec![hash(10)],
                now: at(3),
            })
            .then_expect_error(UserError::NoTotpEnrollmentPending);
    }

    #[test]
    fn refuses_to_confirm_when_mfa_is_already_enabled() {
        framework()
            .given(mfa_enabled())
            .when(UserCommand::ConfirmTotp {
                step: 200,
                recovery_codes: vec![hash(12)],
                now: at(4),
            })
            .then_expect_error(UserError::MfaAlreadyEnabled);
    }

    #[test]
    fn refuses_to_confirm_without_recovery_codes() {
        framework()
            .given(enrolling())
            .when(UserCommand::ConfirmTotp {
                step: 100,
                recovery_codes: vec![],
                now: at(3),
            })
            .then_expect_error(UserError::NoRecoveryCodes);
    }

    #[test]
    fn refuses_to_confirm_with_duplicate_recovery_codes() {
        framework()
            .given(enrolling())
            .when(UserCommand::ConfirmTotp {
                step: 100,
                recovery_codes: vec![hash(10), hash(11), hash(10)],
                now: at(3),
            })
            .then_expect_error(UserError::DuplicateRecoveryCodes);
    }

    // --- UseTotp ---

    #[test]
    fn accepts_a_later_totp_step() {
        let then = vec![UserEvent::TotpCodeUsed { step: 101 }];
        framework()
            .given(mfa_enabled())
            .when(UserCommand::UseTotp {
                step: 101,
                now: at(5),
            })
            .then_expect_events(then.clone());
        assert_eq!(
            replay(mfa_enabled().into_iter().chain(then)).last_used_totp_step(),
            Some(101)
        );
    }

    #[test]
    fn never_accepts_the_same_totp_step_twice() {
        // The step that confirmed the enrollment is spent too.
        framework()
            .given(mfa_enabled())
            .when(UserCommand::UseTotp {
                step: 100,
                now: at(5),
            })
            .then_expect_error(UserError::CodeAlreadyUsed);
        let mut given = mfa_enabled();
        given.push(UserEvent::TotpCodeUsed { step: 101 });
        framework()
            .given(given)
            .when(UserCommand::UseTotp {
                step: 101,
                now: at(5),
            })
            .then_expect_error(UserError::CodeAlreadyUsed);
    }

    #[test]
    fn refuses_an_older_totp_step_after_a_newer_one() {
        let mut given = mfa_enabled();
        given.push(UserEvent::TotpCodeUsed { step: 105 });
        framework()
            .given(given)
            .when(UserCommand::UseTotp {
                step: 104,
                now: at(5),
            })
            .then_expect_error(UserError::CodeAlreadyUsed);
    }

    #[test]
    fn refuses_a_totp_code_when_mfa_is_not_enabled() {
        for given in [verified(), enrolling()] {
            framework()
                .given(given)
                .when(UserCommand::UseTotp {
                    step: 101,
                    now: at(5),
                })
                .then_expect_error(UserError::MfaNotEnabled);
        }
    }

    // --- UseRecoveryCode ---

    #[test]
    fn a_recovery_code_works_once() {
        let used = run(
            &mfa_enabled(),
            UserCommand::UseRecoveryCode {
                code: hash(10),
                now: at(5),
            },
        )
        .unwrap();
        assert_eq!(used, vec![UserEvent::RecoveryCodeUsed { code: hash(10) }]);
        let given: Vec<UserEvent> = mfa_enabled().into_iter().chain(used).collect();
        assert_eq!(replay(given.clone()).unused_recovery_codes(), 1);
        framework()
            .given(given.clone())
            .when(UserCommand::UseRecoveryCode {
                code: hash(10),
                now: at(6),
            })
            .then_expect_error(UserError::RecoveryCodeAlreadyUsed);
        framework()
            .given(given)
            .when(UserCommand::UseRecoveryCode {
                code: hash(11),
                now: at(6),
            })
            .then_expect_events(vec![UserEvent::RecoveryCodeUsed { code: hash(11) }]);
    }

    #[test]
    fn refuses_an_unknown_recovery_code() {
        framework()
            .given(mfa_enabled())
            .when(UserCommand::UseRecoveryCode {
                code: hash(99),
                now: at(5),
            })
            .then_expect_error(UserError::UnknownRecoveryCode);
    }

    #[test]
    fn refuses_a_recovery_code_when_mfa_is_not_enabled() {
        framework()
            .given(verified())
            .when(UserCommand::UseRecoveryCode {
                code: hash(10),
                now: at(5),
            })
            .then_expect_error(UserError::MfaNotEnabled);
    }

    // --- DisableMfa ---

    #[test]
    fn disables_mfa_with_a_fresh_code() {
        let then = vec![UserEvent::MfaDisabled {
            step: 101,
            disabled_at: at(5),
        }];
        framework()
            .given(mfa_enabled())
            .when(UserCommand::DisableMfa {
                step: 101,
                now: at(5),
            })
            .then_expect_events(then.clone());
        let given: Vec<UserEvent> = mfa_enabled().into_iter().chain(then).collect();
        let user = replay(given.clone());
        assert_eq!(user.mfa_status(), MfaStatus::None);
        assert_eq!(user.totp_secret(), None);
        assert!(run(&given, login(6, false)).is_ok());
    }

    #[test]
    fn disabling_mfa_needs_a_fresh_code() {
        let mut given = mfa_enabled();
        given.push(UserEvent::TotpCodeUsed { step: 101 });
        for step in [100, 101] {
            framework()
                .given(given.clone())
                .when(UserCommand::DisableMfa { step, now: at(5) })
                .then_expect_error(UserError::CodeAlreadyUsed);
        }
    }

    #[test]
    fn refuses_to_disable_mfa_that_is_not_enabled() {
        for given in [verified(), enrolling()] {
            framework()
                .given(given)
                .when(UserCommand::DisableMfa {
                    step: 101,
                    now: at(5),
                })
                .then_expect_error(UserError::MfaNotEnabled);
        }
    }

    // --- RevokeAllSessions ---

    #[test]
    fn revoking_all_sessions_ends_earlier_sessions() {
        let then = vec![UserEvent::AllSessionsRevoked { at: at(40) }];
        framework()
            .given(verified())
            .when(UserCommand::RevokeAllSessions { now: at(40) })
            .then_expect_events(then.clone());
        assert_eq!(
            replay(verified().into_iter().chain(then)).sessions_valid_after(),
            Some(at(40))
        );
    }

    #[test]
    fn sessions_valid_after_never_moves_backwards() {
        let user = replay(verified().into_iter().chain([
            UserEvent::AllSessionsRevoked { at: at(40) },
            UserEvent::PasswordChanged {
                password: new_password(),
                changed_at: at(30),
            },
        ]));
        assert_eq!(user.sessions_valid_after(), Some(at(40)));
    }

    // --- Refusals and events ---

    #[test]
    fn every_refusal_has_a_class_and_a_stable_reason() {
        let cases = [
            (
                UserError::AlreadyExists,
                RefusalKind::Conflict,
                "already_exists",
            ),
            (
                UserError::NotRegistered,
                RefusalKind::NotFound,
                "not_registered",
            ),
            (UserError::Deactivated, RefusalKind::Conflict, "deactivated"),
            (UserError::NotActive, RefusalKind::Conflict, "not_active"),
            (UserError::NotInvited, RefusalKind::Conflict, "not_invited"),
            (
                UserError::InvitationMismatch,
                RefusalKind::Unauthenticated,
                "invalid_invitation",
            ),
            (
                UserError::InvitationExpired { expired_at: at(0) },
                RefusalKind::Unauthenticated,
                "invitation_expired",
            ),
            (
                UserError::AlreadyVerified,
                RefusalKind::Conflict,
                "already_verified",
            ),
            (
                UserError::NoVerificationPending,
                RefusalKind::Conflict,
                "no_verification_pending",
            ),
            (
                UserError::VerificationMismatch,
                RefusalKind::Unauthenticated,
                "invalid_verification_token",
            ),
            (
                UserError::VerificationExpired { expired_at: at(0) },
                RefusalKind::Unauthenticated,
                "verification_expired",
            ),
            (UserError::SameEmail, RefusalKind::BadInput, "same_email"),
            (
                UserError::AccountLocked { until: at(0) },
                RefusalKind::Unauthenticated,
                "account_locked",
            ),
            (
                UserError::MfaRequired,
                RefusalKind::Unauthenticated,
                "mfa_required",
            ),
            (
                UserError::MfaAlreadyEnabled,
                RefusalKind::Conflict,
                "mfa_already_enabled",
            ),
            (
                UserError::NoTotpEnrollmentPending,
                RefusalKind::Conflict,
                "no_totp_enrollment_pending",
            ),
            (
                UserError::NoRecoveryCodes,
                RefusalKind::BadInput,
                "no_recovery_codes",
            ),
            (
                UserError::DuplicateRecoveryCodes,
                RefusalKind::BadInput,
                "duplicate_recovery_codes",
            ),
            (
                UserError::MfaNotEnabled,
                RefusalKind::Conflict,
                "mfa_not_enabled",
            ),
            (
                UserError::CodeAlreadyUsed,
                RefusalKind::Unauthenticated,
                "code_already_used",
            ),
            (
                UserError::UnknownRecoveryCode,
                RefusalKind::Unauthenticated,
                "invalid_recovery_code",
            ),
            (
                UserError::RecoveryCodeAlreadyUsed,
                RefusalKind::Unauthenticated,
                "recovery_code_already_used",
            ),
        ];
        for (error, kind, reason) in cases {
            assert_eq!(error.kind(), kind, "{error}");
            assert_eq!(error.reason(), reason, "{error}");
            assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn events_are_named_after_their_variant_and_survive_json() {
        let mut events = mfa_enabled();
        events.extend(accepted());
        events.extend(locked_once());
        events.push(forgotten_event(20));
        for event in events {
            let json = serde_json::to_string(&event).unwrap();
            assert!(
                json.starts_with(&format!("{{\"{}\":", event.event_type())),
                "{json}"
            );
            assert_eq!(event.event_version(), "1");
            assert_eq!(serde_json::from_str::<UserEvent>(&json).unwrap(), event);
        }
    }

    // --- Forget ---

    fn forgotten_event(minute: i64) -> UserEvent {
        UserEvent::SubjectForgotten {
            user_id: user_id(ALICE),
            forgotten_at: at(minute),
        }
    }

    #[test]
    fn forgetting_a_user_records_that_the_subject_was_forgotten() {
        framework()
            .given(mfa_enabled())
            .when(UserCommand::Forget { now: at(10) })
            .then_expect_events(vec![forgotten_event(10)]);
    }

    #[test]
    fn the_subject_forgotten_event_holds_only_the_user_id_and_the_time() {
        let json = serde_json::to_value(forgotten_event(10)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "SubjectForgotten": {
                    "user_id": user_id(ALICE).to_string(),
                    "forgotten_at": "2026-01-01T00:10:00Z",
                }
            })
        );
    }

    #[test]
    fn a_forgotten_user_is_deactivated_without_personal_data_or_credentials() {
        let mut given = mfa_enabled();
        given.push(forgotten_event(10));
        let user = replay(given);
        assert!(user.is_forgotten());
        assert_eq!(user.status(), UserStatus::Deactivated);
        assert_eq!(user.email(), None);
        assert_eq!(user.email_index(), None);
        assert_eq!(user.name(), None);
        assert_eq!(user.password_hash(), None);
        assert_eq!(user.mfa_status(), MfaStatus::None);
        assert_eq!(user.sessions_valid_after(), Some(at(10)));
    }

    #[test]
    fn a_forgotten_user_cannot_log_in_or_change_anything() {
        let mut given = verified();
        given.push(forgotten_event(10));
        framework()
            .given(given.clone())
            .when(UserCommand::RecordSuccessfulLogin {
                session_id: session(1),
                mfa_used: false,
                now: at(11),
            })
            .then_expect_error(UserError::Deactivated);
        framework()
            .given(given)
            .when(UserCommand::ChangePassword {
                password: new_password(),
                now: at(11),
            })
            .then_expect_error(UserError::Deactivated);
    }

    #[test]
    fn forgetting_a_forgotten_user_again_records_nothing() {
        let mut given = registered();
        given.push(forgotten_event(10));
        framework()
            .given(given)
            .when(UserCommand::Forget { now: at(11) })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_deactivated_user_can_still_be_forgotten() {
        framework()
            .given(deactivated())
            .when(UserCommand::Forget { now: at(10) })
            .then_expect_events(vec![forgotten_event(10)]);
    }

    #[test]
    fn an_invited_user_can_be_forgotten_and_their_invitation_is_void() {
        let mut given = invited();
        given.extend(run(&invited(), UserCommand::Forget { now: at(2) }).unwrap());
        assert_eq!(
            run(&given, accept_command(7, 3)),
            Err(UserError::Deactivated)
        );
    }

    #[test]
    fn refuses_to_forget_a_user_that_does_not_exist() {
        framework()
            .given_no_previous_events()
            .when(UserCommand::Forget { now: at(1) })
            .then_expect_error(UserError::NotRegistered);
    }

    // --- Replay ---

    /// A command from a small alphabet: `op` picks the kind (0 to 23; MFA commands and failed
    /// logins weigh more), `pick` a token or code, `step` a TOTP step.
    fn command(op: u8, pick: u8, step: u64, now: DateTime<Utc>) -> UserCommand {
        let later = now + Duration::minutes(30);
        match op {
            0 => UserCommand::Register {
                user_id: user_id(ALICE),
                tenant_id: tenant_id(),
                email: sealed("email"),
                email_index: index(pick),
                name: sealed("name"),
                password: password(),
                verification: hash(pick),
                verification_expires_at: later,
                now,
            },
            1 => UserCommand::Invite {
                user_id: user_id(ALICE),
                tenant_id: tenant_id(),
                email: sealed("email"),
                email_index: index(pick),
                invited_by: user_id(INVITER),
                invitation: hash(pick),
                expires_at: later,
                now,
            },
            2 => UserCommand::AcceptInvitation {
                invitation: hash(pick),
                name: sealed("name"),
                password: password(),
                now,
            },
            3 => UserCommand::IssueEmailVerification {
                token: hash(pick),
                expires_at: later,
                now,
            },
            4 => UserCommand::VerifyEmail {
                token: hash(pick),
                now,
            },
            5 => UserCommand::ChangeEmail {
                email: sealed("other email"),
                email_index: index(pick),
                verification: hash(pick),
                verification_expires_at: later,
                now,
            },
            6 => UserCommand::ChangePassword {
                password: new_password(),
                now,
            },
            // Deactivation ends a sequence's interest, so it is rarer than the rest.
            7 if step == 0 => UserCommand::Deactivate { now },
            7 => UserCommand::RevokeAllSessions { now },
            8 => UserCommand::RecordSuccessfulLogin {
                session_id: session(u128::from(pick)),
                mfa_used: pick < 2,
                now,
            },
            9 => UserCommand::StartTotpEnrollment {
                secret: totp_secret(pick),
                now,
            },
            10 => UserCommand::ConfirmTotp {
                step,
                recovery_codes: (0..pick).map(|n| hash(10 + n)).collect(),
                now,
            },
            11 => UserCommand::UseTotp { step, now },
            12 => UserCommand::UseRecoveryCode {
                code: hash(10 + pick),
                now,
            },
            13 => UserCommand::DisableMfa { step, now },
            14 if step == 0 => UserCommand::Forget { now },
            14 => UserCommand::RevokeAllSessions { now },
            15 => UserCommand::UseRecoveryCode {
                code: hash(10 + pick),
                now,
            },
            16 => UserCommand::UseTotp { step, now },
            17 => UserCommand::StartTotpEnrollment {
                secret: totp_secret(pick),
                now,
            },
            18 => UserCommand::ConfirmTotp {
                step,
                recovery_codes: (0..pick).map(|n| hash(10 + n)).collect(),
                now,
            },
            _ => UserCommand::RecordFailedLogin { now },
        }
    }

    proptest! {
        #[test]
        fn replaying_the_accepted_events_gives_the_same_user(
            ops in prop::collection::vec((0u8..24, 0u8..4, 0u64..12, 0i64..4), 0..80)
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut user = User::default();
            let mut accepted = Vec::new();
            let mut minute = 0;
            for (op, pick, step, delta) in ops {
                minute += delta;
                let before = user.clone();
                let sink = EventSink::<User>::default();
                let result = runtime.block_on(user.handle(command(op, pick, step, at(minute)), &(), &sink));
                let events = runtime.block_on(sink.collect());
                match result {
                    Ok(()) => accepted.extend(events),
                    Err(_) => {
                        prop_assert!(events.is_empty());
                        prop_assert_eq!(&user, &before);
                    }
                }
            }
            for event in &accepted {
                let json = serde_json::to_string(event).unwrap();
                prop_assert_eq!(&serde_json::from_str::<UserEvent>(&json).unwrap(), event);
            }
            let replayed = replay(accepted);
            prop_assert_eq!(&replayed, &user);
            let json = serde_json::to_string(&user).unwrap();
            prop_assert_eq!(serde_json::from_str::<User>(&json).unwrap(), user);
        }
    }
}
