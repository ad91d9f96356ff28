//! `SessionEvent` and its messages.

use domain::identity::session::{EndReason, RevocationReason, SessionEvent as Domain};

use super::{case, parse, secret_hash, secret_hash_bytes, time, timestamp};
use crate::error::ConvertError;
use crate::v1::{self, session_event::Event};

impl From<RevocationReason> for v1::RevocationReason {
    fn from(reason: RevocationReason) -> Self {
        match reason {
            RevocationReason::UserRequest => Self::UserRequest,
            RevocationReason::AdminRequest => Self::AdminRequest,
            RevocationReason::AllSessionsRevoked => Self::AllSessionsRevoked,
            RevocationReason::PasswordChanged => Self::PasswordChanged,
            RevocationReason::UserDeactivated => Self::UserDeactivated,
            RevocationReason::TokenReuse => Self::TokenReuse,
        }
    }
}

fn revocation_reason(value: i32) -> Result<RevocationReason, ConvertError> {
    const FIELD: &str = "SessionRevoked.reason";
    match v1::RevocationReason::try_from(value) {
        Ok(v1::RevocationReason::UserRequest) => Ok(RevocationReason::UserRequest),
        Ok(v1::RevocationReason::AdminRequest) => Ok(RevocationReason::AdminRequest),
        Ok(v1::RevocationReason::AllSessionsRevoked) => Ok(RevocationReason::AllSessionsRevoked),
        Ok(v1::RevocationReason::PasswordChanged) => Ok(RevocationReason::PasswordChanged),
        Ok(v1::RevocationReason::UserDeactivated) => Ok(RevocationReason::UserDeactivated),
        Ok(v1::RevocationReason::TokenReuse) => Ok(RevocationReason::TokenReuse),
        Ok(v1::RevocationReason::Unspecified) => Err(ConvertError::Missing(FIELD)),
        Err(_) => Err(ConvertError::invalid(
            FIELD,
            format!("{value} is not a revocation reason"),
        )),
    }
}

impl From<EndReason> for v1::EndReason {
    fn from(reason: EndReason) -> Self {
        match reason {
            EndReason::Logout => Self::Logout,
        }
    }
}

fn end_reason(value: i32) -> Result<EndReason, ConvertError> {
    const FIELD: &str = "SessionEnded.reason";
    match v1::EndReason::try_from(value) {
        Ok(v1::EndReason::Logout) => Ok(EndReason::Logout),
        Ok(v1::EndReason::Unspecified) => Err(ConvertError::Missing(FIELD)),
        Err(_) => Err(ConvertError::invalid(
            FIELD,
            format!("{value} is not an end reason"),
        )),
    }
}

impl From<Domain> for v1::SessionEvent {
    fn from(event: Domain) -> Self {
        let event = match event {
            Domain::SessionOpened {
                session_id,
                user_id,
                tenant_id,
                refresh,
                expires_at,
                mfa,
                opened_at,
            } => Event::SessionOpened(v1::SessionOpened {
                session_id: session_id.to_string(),
                user_id: user_id.to_string(),
                tenant_id: tenant_id.to_string(),
                refresh: secret_hash_bytes(&refresh),
                expires_at: Some(timestamp(expires_at)),
                mfa,
                opened_at: Some(timestamp(opened_at)),
            }),
            Domain::RefreshTokenRotated {
                generation,
                refresh,
                rotated_at,
            } => Event::RefreshTokenRotated(v1::RefreshTokenRotated {
                generation,
                refresh: secret_hash_bytes(&refresh),
                rotated_at: Some(timestamp(rotated_at)),
            }),
            Domain::RefreshTokenReused {
                presented_generation,
                detected_at,
            } => Event::RefreshTokenReused(v1::RefreshTokenReused {
                presented_generation,
                detected_at: Some(timestamp(detected_at)),
            }),
            Domain::SessionRevoked { reason, revoked_at } => {
                Event::SessionRevoked(v1::SessionRevoked {
                    reason: v1::RevocationReason::from(reason).into(),
                    revoked_at: Some(timestamp(revoked_at)),
                })
            }
            Domain::SessionEnded { reason, ended_at } => Event::SessionEnded(v1::SessionEnded {
                reason: v1::EndReason::from(reason).into(),
                ended_at: Some(timestamp(ended_at)),
            }),
            Domain::SessionExpired { expired_at } => Event::SessionExpired(v1::SessionExpired {
                expired_at: Some(timestamp(expired_at)),
            }),
        };
        Self { event: Some(event) }
    }
}

impl TryFrom<v1::SessionEvent> for Domain {
    type Error = ConvertError;

    fn try_from(message: v1::SessionEvent) -> Result<Self, ConvertError> {
        Ok(match case("SessionEvent.event", message.event)? {
            Event::SessionOpened(m) => Self::SessionOpened {
                session_id: parse("SessionOpened.session_id", &m.session_id)?,
                user_id: parse("SessionOpened.user_id", &m.user_id)?,
                tenant_id: parse("SessionOpened.tenant_id", &m.tenant_id)?,
                refresh: secret_hash("SessionOpened.refresh", &m.refresh)?,
                expires_at: time("SessionOpened.expires_at", m.expires_at)?,
                mfa: m.mfa,
                opened_at: time("SessionOpened.opened_at", m.opened_at)?,
            },
            Event::RefreshTokenRotated(m) => Self::RefreshTokenRotated {
                generation: m.generation,
                refresh: secret_hash("RefreshTokenRotated.refresh", &m.refresh)?,
                rotated_at: time("RefreshTokenRotated.rotated_at", m.rotated_at)?,
            },
            Event::RefreshTokenReused(m) => Self::RefreshTokenReused {
                presented_generation: m.presented_generation,
                detected_at: time("RefreshTokenReused.detected_at", m.detected_at)?,
            },
            Event::SessionRevoked(m) => Self::SessionRevoked {
                reason: revocation_reason(m.reason)?,
                revoked_at: time("SessionRevoked.revoked_at", m.revoked_at)?,
            },
            Event::SessionEnded(m) => Self::SessionEnded {
                reason: end_reason(m.reason)?,
                ended_at: time("SessionEnded.ended_at", m.ended_at)?,
            },
            Event::SessionExpired(m) => Self::SessionExpired {
                expired_at: time("SessionExpired.expired_at", m.expired_at)?,
            },
        })
    }
}
