//! Identity commands as a caller issues them: parsed at the edge, authorized, prepared
//! (hashed, sealed, indexed) outside the unit of work, and decided by the identity
//! aggregates in one atomic write.
//!
//! [`Identity`] holds what the commands need from the outside world: the event log, the
//! data-key store, the password hasher, the keys derived from the master key, and a clock.
//! Expensive or random preparation (Argon2id hashing, sealing, tokens) happens once, before
//! the unit of work, so a retry after a concurrent change repeats only the decision.

mod account;
mod flows;
mod machines;
mod membership;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use domain::identity::rbac::Permission;
use domain::{Refusal, RefusalKind};

use crate::bus::CommandError;
use crate::privacy::{BlindIndexKey, DataKey, MasterKey, PrivacyError};
use crate::security::password::PasswordHasher;

pub use account::{ApiKeyCreated, TotpEnrollment};
pub use flows::{
    CreateTenant, Login, LoginOutcome, Refresh, Refreshed, Register, Registered, TenantCreated,
};
pub use machines::{AuthenticatedClient, CLIENT_SECRET_PREFIX, ClientSecretIssued};
pub use membership::Invited;

/// Where the time comes from: the system clock in production, a fixed one in tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// How long things last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// A session (its refresh-token family), from login.
    pub session: Duration,
    /// An email verification token.
    pub email_verification: Duration,
    /// An invitation.
    pub invitation: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            session: Duration::days(30),
            email_verification: Duration::hours(48),
            invitation: Duration::days(7),
        }
    }
}

/// The identity service: the outside world of the identity commands.
#[derive(Debug, Clone)]
pub struct Identity<L, K> {
    pub(crate) log: L,
    pub(crate) keys: K,
    pub(crate) hasher: Arc<dyn PasswordHasher>,
    pub(crate) blind_index: BlindIndexKey,
    pub(crate) secrets: DataKey,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) lifetimes: Lifetimes,
}

impl<L, K> Identity<L, K> {
    /// The service over an event log and a key store, with keys derived from `master`.
    pub fn new(
        log: L,
        keys: K,
        hasher: Arc<dyn PasswordHasher>,
        master: &MasterKey,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            log,
            keys,
            hasher,
            blind_index: master.blind_index_key(),
            secrets: master.secrets_key(),
            clock,
            lifetimes: Lifetimes::default(),
        }
    }

    /// The same service with other lifetimes.
    #[must_use]
    pub fn with_lifetimes(mut self, lifetimes: Lifetimes) -> Self {
        self.lifetimes = lifetimes;
        self
    }
}

impl<L: crate::bus::EventLog, K> Identity<L, K> {
    /// Runs `command` in a unit of work (retrying on a concurrent change); returns its
    /// output and the global position of its last event, for read-your-writes.
    pub(crate) async fn execute<C>(
        &self,
        metadata: &crate::metadata::CommandMetadata,
        command: &C,
    ) -> Result<(C::Output, Option<i64>), IdentityError>
    where
        C: crate::bus::Command<L>,
        C::Error: Refusal,
    {
        let (output, committed) = crate::bus::run(&self.log, metadata, command)
            .await
            .map_err(IdentityError::from)?;
        Ok((output, committed.map(|c| c.last_position)))
    }
}

/// Why an identity command was not carried out. Every variant maps onto a GraphQL
/// `extensions.code` through [`IdentityError::kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The input is malformed or breaks a rule about its content; the field is named.
    #[error("{field}: {message}")]
    BadInput {
        /// The input field, as the caller named it.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The domain refused the command.
    #[error("{message}")]
    Refused {
        /// The class of the refusal.
        kind: RefusalKind,
        /// A stable, machine-readable reason.
        reason: &'static str,
        /// What happened, for a person.
        message: String,
    },
    /// The actor lacks the permission the command needs. Nothing was written.
    #[error("this needs the `{0}` permission")]
    Forbidden(Permission),
    /// The credentials do not prove who the caller is. The reason is stable; the message
    /// never says which of email or password was wrong.
    #[error("{message}")]
    Unauthenticated {
        /// A stable, machine-readable reason.
        reason: &'static str,
        /// What happened, for a person.
        message: String,
    },
    /// A concurrent change kept winning; the caller may try again.
    #[error("{0}")]
    Conflict(String),
    /// Something the command depends on failed. Nothing was written.
    #[error("internal error: {0}")]
    Infrastructure(String),
}

impl IdentityError {
    /// The class of the error.
    pub fn kind(&self) -> Option<RefusalKind> {
        match self {
            Self::BadInput { .. } => Some(RefusalKind::BadInput),
            Self::Refused { kind, .. } => Some(*kind),
            Self::Forbidden(_) => Some(RefusalKind::Forbidden),
            Self::Unauthenticated { .. } => Some(RefusalKind::Unauthenticated),
            Self::Conflict(_) => Some(RefusalKind::Conflict),
            Self::Infrastructure(_) => None,
        }
    }

    pub(crate) fn bad_input(field: &'static str, message: impl std::fmt::Display) -> Self {
        Self::BadInput {
            field,
            message: message.to_string(),
        }
    }

    pub(crate) fn wrong_credentials() -> Self {
        Self::Unauthenticated {
            reason: "invalid_credentials",
            message: "the email address or the password is wrong".to_owned(),
        }
    }
}

impl From<PrivacyError> for IdentityError {
    fn from(err: PrivacyError) -> Self {
        match err {
            PrivacyError::Forgotten(_) => Self::Refused {
                kind: RefusalKind::Conflict,
                reason: "subject_forgotten",
                message: err.to_string(),
            },
            other => Self::Infrastructure(other.to_string()),
        }
    }
}

impl<E: Refusal> From<CommandError<E>> for IdentityError {
    fn from(err: CommandError<E>) -> Self {
        match err {
            CommandError::Refused(refusal) => {
                let message = refusal.to_string();
                match refusal.kind() {
                    RefusalKind::Unauthenticated => Self::Unauthenticated {
                        reason: refusal.reason(),
                        message,
                    },
                    kind => Self::Refused {
                        kind,
                        reason: refusal.reason(),
                        message,
                    },
                }
            }
            CommandError::Forbidden(permission) => Self::Forbidden(permission),
            CommandError::BadInput(message) => Self::BadInput {
                field: "request",
                message,
            },
            CommandError::Conflict(err) => Self::Conflict(err.to_string()),
            CommandError::Infrastructure(message) => Self::Infrastructure(message),
        }
    }
}
