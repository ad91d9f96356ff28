//! `ServiceAccountEvent` and its messages.

use domain::identity::service_account::ServiceAccountEvent as Domain;

use super::{
    case, parse, principal, principal_message, secret_hash, secret_hash_bytes, time, timestamp,
    uuid,
};
use crate::error::ConvertError;
use crate::v1::{self, service_account_event::Event};

impl From<Domain> for v1::ServiceAccountEvent {
    fn from(event: Domain) -> Self {
        let event = match event {
            Domain::ServiceAccountCreated {
                account_id,
                tenant_id,
                name,
                created_by,
                created_at,
            } => Event::ServiceAccountCreated(v1::ServiceAccountCreated {
                account_id: account_id.to_string(),
                tenant_id: tenant_id.to_string(),
                name,
                created_by: Some(principal_message(created_by)),
                created_at: Some(timestamp(created_at)),
            }),
            Domain::ServiceAccountRenamed { name, renamed_at } => {
                Event::ServiceAccountRenamed(v1::ServiceAccountRenamed {
                    name,
                    renamed_at: Some(timestamp(renamed_at)),
                })
            }
            Domain::ServiceAccountDisabled { disabled_at } => {
                Event::ServiceAccountDisabled(v1::ServiceAccountDisabled {
                    disabled_at: Some(timestamp(disabled_at)),
                })
            }
            Domain::ServiceAccountEnabled { enabled_at } => {
                Event::ServiceAccountEnabled(v1::ServiceAccountEnabled {
                    enabled_at: Some(timestamp(enabled_at)),
                })
            }
            Domain::ClientSecretIssued {
                secret_id,
                hash,
                issued_at,
            } => Event::ClientSecretIssued(v1::ClientSecretIssued {
                secret_id: secret_id.to_string(),
                hash: secret_hash_bytes(&hash),
                issued_at: Some(timestamp(issued_at)),
            }),
            Domain::ClientSecretRevoked {
                secret_id,
                revoked_at,
            } => Event::ClientSecretRevoked(v1::ClientSecretRevoked {
                secret_id: secret_id.to_string(),
                revoked_at: Some(timestamp(revoked_at)),
            }),
        };
        Self { event: Some(event) }
    }
}

impl TryFrom<v1::ServiceAccountEvent> for Domain {
    type Error = ConvertError;

    fn try_from(message: v1::ServiceAccountEvent) -> Result<Self, ConvertError> {
        Ok(match case("ServiceAccountEvent.event", message.event)? {
            Event::ServiceAccountCreated(m) => Self::ServiceAccountCreated {
                account_id: parse("ServiceAccountCreated.account_id", &m.account_id)?,
                tenant_id: parse("ServiceAccountCreated.tenant_id", &m.tenant_id)?,
                name: m.name,
                created_by: principal("ServiceAccountCreated.created_by", m.created_by)?,
                created_at: time("ServiceAccountCreated.created_at", m.created_at)?,
            },
            Event::ServiceAccountRenamed(m) => Self::ServiceAccountRenamed {
                name: m.name,
                renamed_at: time("ServiceAccountRenamed.renamed_at", m.renamed_at)?,
            },
            Event::ServiceAccountDisabled(m) => Self::ServiceAccountDisabled {
                disabled_at: time("ServiceAccountDisabled.disabled_at", m.disabled_at)?,
            },
            Event::ServiceAccountEnabled(m) => Self::ServiceAccountEnabled {
                enabled_at: time("ServiceAccountEnabled.enabled_at", m.enabled_at)?,
            },
            Event::ClientSecretIssued(m) => Self::ClientSecretIssued {
                secret_id: uuid("ClientSecretIssued.secret_id", &m.secret_id)?,
                hash: secret_hash("ClientSecretIssued.hash", &m.hash)?,
                issued_at: time("ClientSecretIssued.issued_at", m.issued_at)?,
            },
            Event::ClientSecretRevoked(m) => Self::ClientSecretRevoked {
                secret_id: uuid("ClientSecretRevoked.secret_id", &m.secret_id)?,
                revoked_at: time("ClientSecretRevoked.revoked_at", m.revoked_at)?,
            },
        })
    }
}
