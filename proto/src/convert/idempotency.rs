//! `IdempotencyEvent` and its messages.

use commands::idempotency::IdempotencyEvent as Domain;

use super::case;
use crate::error::ConvertError;
use crate::v1::{self, idempotency_event::Event};

impl From<Domain> for v1::IdempotencyEvent {
    fn from(event: Domain) -> Self {
        let event = match event {
            Domain::CommandRecorded {
                fingerprint,
                result,
            } => Event::CommandRecorded(v1::CommandRecorded {
                fingerprint,
                // Serializing a `Value` cannot fail: its map keys are strings.
                result_json: result.to_string(),
            }),
        };
        Self { event: Some(event) }
    }
}

impl TryFrom<v1::IdempotencyEvent> for Domain {
    type Error = ConvertError;

    fn try_from(message: v1::IdempotencyEvent) -> Result<Self, ConvertError> {
        Ok(match case("IdempotencyEvent.event", message.event)? {
            Event::CommandRecorded(m) => Self::CommandRecorded {
                fingerprint: m.fingerprint,
                result: serde_json::from_str(&m.result_json).map_err(|err| {
                    ConvertError::invalid(
                        "CommandRecorded.result_json",
                        format!("is not JSON: {err}"),
                    )
                })?,
            },
        })
    }
}
