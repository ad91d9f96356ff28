//! `UserEvent` and its messages.

use domain::identity::credentials::SealedSecret;
use domain::identity::user::UserEvent as Domain;

use super::{
    case, from_string, parse, sealed, sealed_message, secret_hash, secret_hash_bytes, time,
    timestamp,
};
use crate::error::ConvertError;
use crate::v1::{self, user_event::Event};

impl From<Domain> for v1::UserEvent {
    fn from(event: Domain) -> Self {
        let event = match event {
            Domain::UserRegistered {
                user_id,
                tenant_id,
                email,
                email_index,
                name,
                password,
                registered_at,
            } => Event::UserRegistered(v1::UserRegistered {
                user_id: user_id.to_string(),
                tenant_id: tenant_id.to_string(),
                email: Some(sealed_message(&email)),
                email_index: email_index.into(),
                name: Some(sealed_message(&name)),
                password: password.into(),
                registered_at: Some(timestamp(registered_at)),
            }),
            Domain::UserInvited {
                user_id,
                tenant_id,
                email,
                email_index,
                invited_by,
                invitation,
                expires_at,
                invited_at,
            } => Event::UserInvited(v1::UserInvited {
                user_id: user_id.to_string(),
                tenant_id: tenant_id.to_string(),
                email: Some(sealed_message(&email)),
                email_index: email_index.into(),
                invited_by: invited_by.to_string(),
                invitation: secret_hash_bytes(&invitation),
                expires_at: Some(timestamp(expires_at)),
                invited_at: Some(timestamp(invited_at)),
            }),
            Domain::InvitationAccepted {
                name,
                password,
                accepted_at,
            } => Event::InvitationAccepted(v1::InvitationAccepted {
                name: Some(sealed_message(&name)),
                password: password.into(),
                accepted_at: Some(timestamp(accepted_at)),
            }),
            Domain::EmailVerificationIssued { token, expires_at } => {
                Event::EmailVerificationIssued(v1::EmailVerificationIssued {
                    token: secret_hash_bytes(&token),
                    expires_at: Some(timestamp(expires_at)),
                })
            }
            Domain::EmailVerified { verified_at } => Event::EmailVerified(v1::EmailVerified {
                verified_at: Some(timestamp(verified_at)),
            }),
            Domain::EmailChanged {
                email,
                email_index,
                previous_index,
                changed_at,
            } => Event::EmailChanged(v1::EmailChanged {
                email: Some(sealed_message(&email)),
                email_index: email_index.into(),
                previous_index: previous_index.into(),
                changed_at: Some(timestamp(changed_at)),
            }),
            Domain::PasswordChanged {
                password,
                changed_at,
            } => Event::PasswordChanged(v1::PasswordChanged {
                password: password.into(),
                changed_at: Some(timestamp(changed_at)),
            }),
            Domain::UserDeactivated { deactivated_at } => {
                Event::UserDeactivated(v1::UserDeactivated {
                    deactivated_at: Some(timestamp(deactivated_at)),
                })
            }
            Domain::LoginFailed {
                at,
                consecutive_failures,
                while_locked,
            } => Event::LoginFailed(v1::LoginFailed {
                at: Some(timestamp(at)),
                consecutive_failures,
                while_locked,
            }),
            Domain::AccountLocked { until, lockout } => Event::AccountLocked(v1::AccountLocked {
                until: Some(timestamp(until)),
                lockout,
            }),
            Domain::LoginSucceeded {
                session_id,
                at,
                mfa_used,
            } => Event::LoginSucceeded(v1::LoginSucceeded {
                session_id: session_id.to_string(),
                at: Some(timestamp(at)),
                mfa_used,
            }),
            Domain::TotpEnrollmentStarted { secret } => {
                Event::TotpEnrollmentStarted(v1::TotpEnrollmentStarted {
                    secret: secret.as_str().to_owned(),
                })
            }
            Domain::TotpConfirmed {
                step,
                recovery_codes,
                confirmed_at,
            } => Event::TotpConfirmed(v1::TotpConfirmed {
                step,
                recovery_codes: recovery_codes.iter().map(secret_hash_bytes).collect(),
                confirmed_at: Some(timestamp(confirmed_at)),
            }),
            Domain::TotpCodeUsed { step } => Event::TotpCodeUsed(v1::TotpCodeUsed { step }),
            Domain::RecoveryCodeUsed { code } => Event::RecoveryCodeUsed(v1::RecoveryCodeUsed {
                code: secret_hash_bytes(&code),
            }),
            Domain::MfaDisabled { step, disabled_at } => Event::MfaDisabled(v1::MfaDisabled {
                step,
                disabled_at: Some(timestamp(disabled_at)),
            }),
            Domain::AllSessionsRevoked { at } => {
                Event::AllSessionsRevoked(v1::AllSessionsRevoked {
                    at: Some(timestamp(at)),
                })
            }
            Domain::SubjectForgotten {
                user_id,
                forgotten_at,
            } => Event::SubjectForgotten(v1::SubjectForgotten {
                user_id: user_id.to_string(),
                forgotten_at: Some(timestamp(forgotten_at)),
            }),
        };
        Self { event: Some(event) }
    }
}

impl TryFrom<v1::UserEvent> for Domain {
    type Error = ConvertError;

    fn try_from(message: v1::UserEvent) -> Result<Self, ConvertError> {
        Ok(match case("UserEvent.event", message.event)? {
            Event::UserRegistered(m) => Self::UserRegistered {
                user_id: parse("UserRegistered.user_id", &m.user_id)?,
                tenant_id: parse("UserRegistered.tenant_id", &m.tenant_id)?,
                email: sealed("UserRegistered.email", m.email)?,
                email_index: from_string("UserRegistered.email_index", m.email_index)?,
                name: sealed("UserRegistered.name", m.name)?,
                password: from_string("UserRegistered.password", m.password)?,
                registered_at: time("UserRegistered.registered_at", m.registered_at)?,
            },
            Event::UserInvited(m) => Self::UserInvited {
                user_id: parse("UserInvited.user_id", &m.user_id)?,
                tenant_id: parse("UserInvited.tenant_id", &m.tenant_id)?,
                email: sealed("UserInvited.email", m.email)?,
                email_index: from_string("UserInvited.email_index", m.email_index)?,
                invited_by: parse("UserInvited.invited_by", &m.invited_by)?,
                invitation: secret_hash("UserInvited.invitation", &m.invitation)?,
                expires_at: time("UserInvited.expires_at", m.expires_at)?,
                invited_at: time("UserInvited.invited_at", m.invited_at)?,
            },
            Event::InvitationAccepted(m) => Self::InvitationAccepted {
                name: sealed("InvitationAccepted.name", m.name)?,
                password: from_string("InvitationAccepted.password", m.password)?,
                accepted_at: time("InvitationAccepted.accepted_at", m.accepted_at)?,
            },
            Event::EmailVerificationIssued(m) => Self::EmailVerificationIssued {
                token: secret_hash("EmailVerificationIssued.token", &m.token)?,
                expires_at: time("EmailVerificationIssued.expires_at", m.expires_at)?,
            },
            Event::EmailVerified(m) => Self::EmailVerified {
                verified_at: time("EmailVerified.verified_at", m.verified_at)?,
            },
            Event::EmailChanged(m) => Self::EmailChanged {
                email: sealed("EmailChanged.email", m.email)?,
                email_index: from_string("EmailChanged.email_index", m.email_index)?,
                previous_index: from_string("EmailChanged.previous_index", m.previous_index)?,
                changed_at: time("EmailChanged.changed_at", m.changed_at)?,
            },
            Event::PasswordChanged(m) => Self::PasswordChanged {
                password: from_string("PasswordChanged.password", m.password)?,
                changed_at: time("PasswordChanged.changed_at", m.changed_at)?,
            },
            Event::UserDeactivated(m) => Self::UserDeactivated {
                deactivated_at: time("UserDeactivated.deactivated_at", m.deactivated_at)?,
            },
            Event::LoginFailed(m) => Self::LoginFailed {
                at: time("LoginFailed.at", m.at)?,
                consecutive_failures: m.consecutive_failures,
                while_locked: m.while_locked,
            },
            Event::AccountLocked(m) => Self::AccountLocked {
                until: time("AccountLocked.until", m.until)?,
                lockout: m.lockout,
            },
            Event::LoginSucceeded(m) => Self::LoginSucceeded {
                session_id: parse("LoginSucceeded.session_id", &m.session_id)?,
                at: time("LoginSucceeded.at", m.at)?,
                mfa_used: m.mfa_used,
            },
            Event::TotpEnrollmentStarted(m) => Self::TotpEnrollmentStarted {
                secret: SealedSecret::from_sealed(m.secret),
            },
            Event::TotpConfirmed(m) => Self::TotpConfirmed {
                step: m.step,
                recovery_codes: m
                    .recovery_codes
                    .iter()
                    .map(|code| secret_hash("TotpConfirmed.recovery_codes", code))
                    .collect::<Result<_, _>>()?,
                confirmed_at: time("TotpConfirmed.confirmed_at", m.confirmed_at)?,
            },
            Event::TotpCodeUsed(m) => Self::TotpCodeUsed { step: m.step },
            Event::RecoveryCodeUsed(m) => Self::RecoveryCodeUsed {
                code: secret_hash("RecoveryCodeUsed.code", &m.code)?,
            },
            Event::MfaDisabled(m) => Self::MfaDisabled {
                step: m.step,
                disabled_at: time("MfaDisabled.disabled_at", m.disabled_at)?,
            },
            Event::AllSessionsRevoked(m) => Self::AllSessionsRevoked {
                at: time("AllSessionsRevoked.at", m.at)?,
            },
            Event::SubjectForgotten(m) => Self::SubjectForgotten {
                user_id: parse("SubjectForgotten.user_id", &m.user_id)?,
                forgotten_at: time("SubjectForgotten.forgotten_at", m.forgotten_at)?,
            },
        })
    }
}
