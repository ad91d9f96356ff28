//! `ApiKeyEvent` and its messages.

use domain::identity::api_key::ApiKeyEvent as Domain;

use super::{
    case, optional_time, parse, permission_strings, permissions, principal, principal_message,
    secret_hash, secret_hash_bytes, time, timestamp,
};
use crate::error::ConvertError;
use crate::v1::{self, api_key_event::Event};

impl From<Domain> for v1::ApiKeyEvent {
    fn from(event: Domain) -> Self {
        let event = match event {
            Domain::ApiKeyCreated {
                key_id,
                tenant_id,
                owner,
                name,
                hash,
                display_prefix,
                scopes,
                expires_at,
                created_at,
            } => Event::ApiKeyCreated(v1::ApiKeyCreated {
                key_id: key_id.to_string(),
                tenant_id: tenant_id.to_string(),
                owner: Some(principal_message(owner)),
                name,
                hash: secret_hash_bytes(&hash),
                display_prefix,
                scopes: permission_strings(scopes),
                expires_at: expires_at.map(timestamp),
                created_at: Some(timestamp(created_at)),
            }),
            Domain::ApiKeyRevoked { revoked_at } => Event::ApiKeyRevoked(v1::ApiKeyRevoked {
                revoked_at: Some(timestamp(revoked_at)),
            }),
        };
        Self { event: Some(event) }
    }
}

impl TryFrom<v1::ApiKeyEvent> for Domain {
    type Error = ConvertError;

    fn try_from(message: v1::ApiKeyEvent) -> Result<Self, ConvertError> {
        Ok(match case("ApiKeyEvent.event", message.event)? {
            Event::ApiKeyCreated(m) => Self::ApiKeyCreated {
                key_id: parse("ApiKeyCreated.key_id", &m.key_id)?,
                tenant_id: parse("ApiKeyCreated.tenant_id", &m.tenant_id)?,
                owner: principal("ApiKeyCreated.owner", m.owner)?,
                name: m.name,
                hash: secret_hash("ApiKeyCreated.hash", &m.hash)?,
                display_prefix: m.display_prefix,
                scopes: permissions("ApiKeyCreated.scopes", &m.scopes)?,
                expires_at: optional_time("ApiKeyCreated.expires_at", m.expires_at)?,
                created_at: time("ApiKeyCreated.created_at", m.created_at)?,
            },
            Event::ApiKeyRevoked(m) => Self::ApiKeyRevoked {
                revoked_at: time("ApiKeyRevoked.revoked_at", m.revoked_at)?,
            },
        })
    }
}
