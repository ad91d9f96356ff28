//! Idempotent commands: the same key with the same command returns the first result again
//! and writes nothing; the same key with another command is refused.
//!
//! The record of a keyed command is itself an aggregate, `IdempotencyRecord`, keyed by the
//! actor and the key, and its one event is appended in the same atomic write as the
//! command's own events. Two concurrent requests with one key therefore cannot both run:
//! the second meets the first's record (or conflicts on it and, retried, meets it). The
//! record holds a fingerprint of the command (SHA-256 of its JSON) and the result the
//! command chose to record, which never holds a secret: a command whose result is a
//! secret shown once (a new API key) records only what identifies it.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The longest idempotency key accepted.
pub const MAX_KEY_LENGTH: usize = 255;

/// The record of one idempotency key of one actor.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    recorded: Option<Recorded>,
}

/// What a key was first used for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// SHA-256 of the command's JSON, as hex.
    pub fingerprint: String,
    /// The command's recorded result.
    pub result: Value,
}

impl IdempotencyRecord {
    /// What the key was first used for, if anything.
    pub fn recorded(&self) -> Option<&Recorded> {
        self.recorded.as_ref()
    }
}

/// Record a key's first use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The command's fingerprint.
    pub fingerprint: String,
    /// Its recorded result.
    pub result: Value,
}

/// A key's first use was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdempotencyEvent {
    /// The key was used for the command with this fingerprint, with this result.
    CommandRecorded {
        /// The command's fingerprint.
        fingerprint: String,
        /// Its recorded result.
        result: Value,
    },
}

impl DomainEvent for IdempotencyEvent {
    fn event_type(&self) -> String {
        "CommandRecorded".to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// A key is recorded once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this idempotency key was already used")]
pub struct AlreadyRecorded;

/// A record belongs to no tenant of its own: it is written in the unit of the command it
/// records, under that command's tenant.
impl domain::Tenanted for IdempotencyRecord {
    fn tenant_uuid(&self) -> Option<uuid::Uuid> {
        None
    }
}

impl Aggregate for IdempotencyRecord {
    const TYPE: &'static str = "IdempotencyRecord";
    type Command = Record;
    type Event = IdempotencyEvent;
    type Error = AlreadyRecorded;
    type Services = ();

    async fn handle(
        &mut self,
        command: Record,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), AlreadyRecorded> {
        if self.recorded.is_some() {
            return Err(AlreadyRecorded);
        }
        sink.write(
            IdempotencyEvent::CommandRecorded {
                fingerprint: command.fingerprint,
                result: command.result,
            },
            self,
        )
        .await;
        Ok(())
    }

    fn apply(&mut self, event: IdempotencyEvent) {
        match event {
            IdempotencyEvent::CommandRecorded {
                fingerprint,
                result,
            } => {
                self.recorded = Some(Recorded {
                    fingerprint,
                    result,
                })
            }
        }
    }
}

/// The record's id: the actor and the key, so that two actors' keys never meet.
pub fn record_id(actor_id: &str, key: &str) -> String {
    format!("{actor_id}:{key}")
}

/// SHA-256 of a command's JSON, as hex.
pub fn fingerprint<T: Serialize>(command: &T) -> Result<String, serde_json::Error> {
    let json = serde_json::to_vec(command)?;
    Ok(Sha256::digest(&json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Checks a caller's idempotency key: 1 to 255 printable ASCII characters.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LENGTH {
        return Err(format!(
            "the idempotency key must have 1 to {MAX_KEY_LENGTH} characters, not {}",
            key.len()
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the idempotency key must be printable ASCII without spaces".to_owned());
    }
    Ok(())
}
