//! `EmailClaimEvent` and its messages.

use domain::identity::email_claim::EmailClaimEvent as Domain;

use super::{case, from_string, parse, time, timestamp};
use crate::error::ConvertError;
use crate::v1::{self, email_claim_event::Event};

impl From<Domain> for v1::EmailClaimEvent {
    fn from(event: Domain) -> Self {
        let event = match event {
            Domain::EmailClaimed {
                tenant_id,
                index,
                user_id,
                claimed_at,
            } => Event::EmailClaimed(v1::EmailClaimed {
                tenant_id: tenant_id.to_string(),
                index: index.into(),
                user_id: user_id.to_string(),
                claimed_at: Some(timestamp(claimed_at)),
            }),
            Domain::EmailReleased {
                user_id,
                released_at,
            } => Event::EmailReleased(v1::EmailReleased {
                user_id: user_id.to_string(),
                released_at: Some(timestamp(released_at)),
            }),
        };
        Self { event: Some(event) }
    }
}

impl TryFrom<v1::EmailClaimEvent> for Domain {
    type Error = ConvertError;

    fn try_from(message: v1::EmailClaimEvent) -> Result<Self, ConvertError> {
        Ok(match case("EmailClaimEvent.event", message.event)? {
            Event::EmailClaimed(m) => Self::EmailClaimed {
                tenant_id: parse("EmailClaimed.tenant_id", &m.tenant_id)?,
                index: from_string("EmailClaimed.index", m.index)?,
                user_id: parse("EmailClaimed.user_id", &m.user_id)?,
                claimed_at: time("EmailClaimed.claimed_at", m.claimed_at)?,
            },
            Event::EmailReleased(m) => Self::EmailReleased {
                user_id: parse("EmailReleased.user_id", &m.user_id)?,
                released_at: time("EmailReleased.released_at", m.released_at)?,
            },
        })
    }
}
