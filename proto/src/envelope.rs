//! The envelope of one event: built from a row of the log, read back into one, and checked
//! against the canonical bytes its hash covers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::convert::{time, timestamp, uuid};
use crate::error::{ConvertError, VerifyError};
use crate::typed::TypedEvent;
use crate::v1::EventEnvelope;

/// One event of the log with every column of its row (docs/event-store.md), as the relay
/// reads it and as a consumer can rebuild it from an envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Position in the whole log: gap-free from 1, in commit order.
    pub global_position: i64,
    /// The event's UUID v7.
    pub event_id: Uuid,
    /// The aggregate's type name.
    pub aggregate_type: String,
    /// The aggregate instance's id.
    pub aggregate_id: String,
    /// Position within the aggregate, gap-free from 1.
    pub sequence: i64,
    /// The event's type name.
    pub event_type: String,
    /// The event's schema version.
    pub event_version: String,
    /// The tenant, or `None` for a platform-level event.
    pub tenant_id: Option<Uuid>,
    /// When the appender recorded it.
    pub recorded_at: DateTime<Utc>,
    /// The event's payload: serde's JSON of the domain event.
    pub payload: Value,
    /// The command metadata: an object of strings.
    pub metadata: Value,
    /// The hash of the previous event of the log.
    pub prev_hash: [u8; 32],
    /// The hash of the previous event of the same tenant (or platform-level event).
    pub tenant_prev_hash: [u8; 32],
    /// SHA-256 of the canonical encoding of every other column.
    pub hash: [u8; 32],
}

impl EventEnvelope {
    /// The envelope of a record, with `canonical` the bytes its hash was computed over
    /// (docs/hash-spec.md), and the payload typed if its aggregate is one the contracts
    /// cover. Fails if the payload of a covered aggregate does not decode as the event the
    /// record names, or if the metadata is not an object of strings.
    pub fn from_record(record: EventRecord, canonical: Vec<u8>) -> Result<Self, ConvertError> {
        let typed = TypedEvent::from_json(
            &record.aggregate_type,
            &record.event_type,
            &record.event_version,
            &record.payload,
        )?;
        let mut envelope = Self::without_payload(record, canonical)?;
        envelope.payload = typed.map(Into::into);
        Ok(envelope)
    }

    /// The envelope of a record without a typed payload: a consumer reads the payload from
    /// the canonical bytes. For an event the contracts do not type, or one a relay must
    /// publish although its payload does not decode.
    pub fn without_payload(record: EventRecord, canonical: Vec<u8>) -> Result<Self, ConvertError> {
        let position = |field: &'static str, value: i64| {
            u64::try_from(value)
                .map_err(|_| ConvertError::invalid(field, format!("{value} is negative")))
        };
        Ok(Self {
            global_position: position("EventRecord.global_position", record.global_position)?,
            event_id: record.event_id.hyphenated().to_string(),
            aggregate_type: record.aggregate_type,
            aggregate_id: record.aggregate_id,
            sequence: position("EventRecord.sequence", record.sequence)?,
            event_type: record.event_type,
            event_version: record.event_version,
            tenant_id: record
                .tenant_id
                .map(|tenant| tenant.hyphenated().to_string()),
            recorded_at: Some(timestamp(record.recorded_at)),
            metadata: metadata_map(record.metadata)?,
            prev_hash: record.prev_hash.to_vec(),
            tenant_prev_hash: record.tenant_prev_hash.to_vec(),
            hash: record.hash.to_vec(),
            canonical,
            payload: None,
        })
    }

    /// The typed payload as a domain event; `None` if the envelope carries none.
    pub fn typed_event(&self) -> Result<Option<TypedEvent>, ConvertError> {
        self.payload.clone().map(TypedEvent::try_from).transpose()
    }

    /// The record back: the payload from the typed payload when there is one, else from the
    /// canonical bytes (member `payload`).
    pub fn to_record(&self) -> Result<EventRecord, ConvertError> {
        let position = |field: &'static str, value: u64| {
            i64::try_from(value)
                .map_err(|_| ConvertError::invalid(field, format!("{value} is beyond 2^63 - 1")))
        };
        let payload = match self.typed_event()? {
            Some(event) => event.to_json()?,
            None => {
                let mut canonical = canonical_object(&self.canonical)
                    .map_err(|problem| ConvertError::invalid("EventEnvelope.canonical", problem))?;
                canonical
                    .remove("payload")
                    .ok_or(ConvertError::Missing("EventEnvelope.canonical.payload"))?
            }
        };
        Ok(EventRecord {
            global_position: position("EventEnvelope.global_position", self.global_position)?,
            event_id: uuid("EventEnvelope.event_id", &self.event_id)?,
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            sequence: position("EventEnvelope.sequence", self.sequence)?,
            event_type: self.event_type.clone(),
            event_version: self.event_version.clone(),
            tenant_id: self
                .tenant_id
                .as_deref()
                .map(|tenant| uuid("EventEnvelope.tenant_id", tenant))
                .transpose()?,
            recorded_at: time("EventEnvelope.recorded_at", self.recorded_at)?,
            payload,
            metadata: metadata_value(&self.metadata),
            prev_hash: digest("EventEnvelope.prev_hash", &self.prev_hash)?,
            tenant_prev_hash: digest("EventEnvelope.tenant_prev_hash", &self.tenant_prev_hash)?,
            hash: digest("EventEnvelope.hash", &self.hash)?,
        })
    }

    /// SHA-256 of the canonical bytes.
    pub fn computed_hash(&self) -> [u8; 32] {
        Sha256::digest(&self.canonical).into()
    }

    /// Checks that SHA-256 of the canonical bytes is the envelope's `hash`.
    pub fn verify_hash(&self) -> Result<(), VerifyError> {
        let computed = self.computed_hash();
        if self.hash == computed {
            Ok(())
        } else {
            Err(VerifyError::HashMismatch {
                stated: hex::encode(&self.hash),
                computed: hex::encode(computed),
            })
        }
    }

    /// Checks the hash, then that every field of the envelope says what the canonical bytes
    /// say, the typed payload included: after this, nothing in the envelope is unvouched for.
    pub fn verify(&self) -> Result<(), VerifyError> {
        self.verify_hash()?;
        let canonical = canonical_object(&self.canonical).map_err(VerifyError::NotAnObject)?;
        let check = |field: &'static str, envelope: Value| match canonical.get(field) {
            Some(member) if *member == envelope => Ok(()),
            member => Err(VerifyError::FieldMismatch {
                field,
                envelope: envelope.to_string(),
                canonical: member.map_or_else(|| "absent".to_owned(), Value::to_string),
            }),
        };
        check("aggregate_id", self.aggregate_id.clone().into())?;
        check("aggregate_type", self.aggregate_type.clone().into())?;
        check("event_id", self.event_id.clone().into())?;
        check("event_type", self.event_type.clone().into())?;
        check("event_version", self.event_version.clone().into())?;
        check("global_position", self.global_position.into())?;
        check("metadata", metadata_value(&self.metadata))?;
        check("prev_hash", hex::encode(&self.prev_hash).into())?;
        check("sequence", self.sequence.into())?;
        check(
            "tenant_id",
            self.tenant_id.clone().map_or(Value::Null, Value::String),
        )?;
        check(
            "tenant_prev_hash",
            hex::encode(&self.tenant_prev_hash).into(),
        )?;

        // The time is compared as an instant, not as text: the envelope's timestamp holds
        // nanoseconds, the canonical text microseconds.
        let recorded_at = time("EventEnvelope.recorded_at", self.recorded_at).ok();
        let canonical_at = canonical
            .get("recorded_at")
            .and_then(Value::as_str)
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            .map(|at| at.with_timezone(&Utc));
        if recorded_at.is_none() || recorded_at != canonical_at {
            return Err(VerifyError::FieldMismatch {
                field: "recorded_at",
                envelope: format!("{recorded_at:?}"),
                canonical: canonical
                    .get("recorded_at")
                    .map_or_else(|| "absent".to_owned(), Value::to_string),
            });
        }

        if let Some(event) = self.typed_event().map_err(VerifyError::Payload)? {
            check("payload", event.to_json().map_err(VerifyError::Payload)?)?;
            for (field, typed, stated) in [
                (
                    "aggregate_type",
                    event.aggregate_type().to_owned(),
                    &self.aggregate_type,
                ),
                ("event_type", event.event_type(), &self.event_type),
                ("event_version", event.event_version(), &self.event_version),
            ] {
                if typed != *stated {
                    return Err(VerifyError::FieldMismatch {
                        field,
                        envelope: format!("{typed:?} (the typed payload)"),
                        canonical: format!("{stated:?}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks that this event comes right after `previous` in the log: the next position,
    /// and `prev_hash` equal to its hash.
    pub fn verify_follows(&self, previous: &Self) -> Result<(), VerifyError> {
        if previous.global_position.checked_add(1) != Some(self.global_position) {
            return Err(VerifyError::NotNext {
                previous: previous.global_position,
                position: self.global_position,
            });
        }
        link("prev_hash", &self.prev_hash, &previous.hash)
    }

    /// Checks that this event comes right after `previous` in its tenant's chain (or the
    /// chain of platform-level events): the same tenant, an earlier position, and
    /// `tenant_prev_hash` equal to its hash. That no event of the tenant lies between the
    /// two is what the link proves.
    pub fn verify_follows_in_tenant(&self, previous: &Self) -> Result<(), VerifyError> {
        if previous.tenant_id != self.tenant_id {
            let name =
                |tenant: &Option<String>| tenant.clone().unwrap_or_else(|| "platform".to_owned());
            return Err(VerifyError::OtherTenant {
                previous: name(&previous.tenant_id),
                this: name(&self.tenant_id),
            });
        }
        if previous.global_position >= self.global_position {
            return Err(VerifyError::NotNext {
                previous: previous.global_position,
                position: self.global_position,
            });
        }
        link("tenant_prev_hash", &self.tenant_prev_hash, &previous.hash)
    }
}

fn link(name: &'static str, stated: &[u8], expected: &[u8]) -> Result<(), VerifyError> {
    if stated == expected {
        Ok(())
    } else {
        Err(VerifyError::BrokenLink {
            link: name,
            stated: hex::encode(stated),
            expected: hex::encode(expected),
        })
    }
}

/// The metadata object as the envelope's map. Every value must be a string, as the
/// command metadata's are.
fn metadata_map(metadata: Value) -> Result<BTreeMap<String, String>, ConvertError> {
    const FIELD: &str = "EventRecord.metadata";
    let Value::Object(members) = metadata else {
        return Err(ConvertError::invalid(
            FIELD,
            format!("is {metadata}, not an object"),
        ));
    };
    members
        .into_iter()
        .map(|(key, value)| match value {
            Value::String(text) => Ok((key, text)),
            other => Err(ConvertError::invalid(
                FIELD,
                format!("member {key:?} is {other}, not a string"),
            )),
        })
        .collect()
}

fn metadata_value(metadata: &BTreeMap<String, String>) -> Value {
    Value::Object(
        metadata
            .iter()
            .map(|(key, value)| (key.clone(), Value::String(value.clone())))
            .collect::<Map<String, Value>>(),
    )
}

fn digest(field: &'static str, bytes: &[u8]) -> Result<[u8; 32], ConvertError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| {
        ConvertError::invalid(
            field,
            format!("holds {} bytes where a SHA-256 digest has 32", bytes.len()),
        )
    })
}

fn canonical_object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(members)) => Ok(members),
        Ok(other) => Err(format!("they hold {other}, not an object")),
        Err(err) => Err(format!("they are not JSON: {err}")),
    }
}
