//! An event as the log holds it: one row of `events`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::canonical::{CanonicalError, CanonicalEvent, Digest32, EventFields, Links};
use crate::error::StoreError;

/// One event of the log, with every column of its row.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
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
    /// The event's payload.
    pub payload: Value,
    /// The command metadata (see `commands::metadata`).
    pub metadata: Value,
    /// The hash of the previous event of the log.
    pub prev_hash: Digest32,
    /// The hash of the previous event of the same tenant.
    pub tenant_prev_hash: Digest32,
    /// SHA-256 of the canonical encoding of every other column.
    pub hash: Digest32,
}

/// Reads a 32-byte digest from a `bytea` column of `row`.
pub(crate) fn digest_column(row: &PgRow, column: &'static str) -> Result<Digest32, StoreError> {
    let bytes: Vec<u8> = row.try_get(column)?;
    Digest32::from_slice(&bytes).ok_or(StoreError::Corrupt {
        column,
        problem: format!("holds {} bytes where a SHA-256 digest has 32", bytes.len()),
    })
}

impl RecordedEvent {
    pub(crate) fn from_row(row: &PgRow) -> Result<Self, StoreError> {
        let digest = |column: &'static str| digest_column(row, column);
        Ok(Self {
            global_position: row.try_get("global_position")?,
            event_id: row.try_get("event_id")?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
            event_type: row.try_get("event_type")?,
            event_version: row.try_get("event_version")?,
            tenant_id: row.try_get("tenant_id")?,
            recorded_at: row.try_get("recorded_at")?,
            payload: row.try_get("payload")?,
            metadata: row.try_get("metadata")?,
            prev_hash: digest("prev_hash")?,
            tenant_prev_hash: digest("tenant_prev_hash")?,
            hash: digest("hash")?,
        })
    }

    /// The members of the canonical encoding that the appender assigned.
    pub fn links(&self) -> Links {
        Links {
            global_position: self.global_position,
            prev_hash: self.prev_hash,
            recorded_at: self.recorded_at,
            tenant_prev_hash: self.tenant_prev_hash,
        }
    }

    fn canonical(&self) -> Result<CanonicalEvent, CanonicalError> {
        CanonicalEvent::new(&EventFields {
            event_id: self.event_id,
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            sequence: self.sequence,
            event_type: &self.event_type,
            event_version: &self.event_version,
            tenant_id: self.tenant_id,
            payload: &self.payload,
            metadata: &self.metadata,
        })
    }

    /// The canonical bytes this event's hash is computed over (docs/hash-spec.md).
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        Ok(self.canonical()?.bytes(&self.links()))
    }

    /// Recomputes the hash from the other columns. It equals [`RecordedEvent::hash`] for
    /// every event that has not been altered.
    pub fn compute_hash(&self) -> Result<Digest32, CanonicalError> {
        Ok(self.canonical()?.hash(&self.links()))
    }
}

/// An event read back with its payload and metadata as the text the log stores (the
/// canonical JSON the appender wrote), not yet parsed: what the relay publishes from.
/// `record` holds every other column; its `payload` is `null`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// The row, less the payload.
    pub record: RecordedEvent,
    /// The payload's stored JSON text.
    pub payload_json: String,
    /// The metadata's stored JSON text.
    pub metadata_json: String,
}

impl StoredEvent {
    pub(crate) fn from_row(row: &PgRow) -> Result<Self, StoreError> {
        let digest = |column: &'static str| digest_column(row, column);
        let metadata_json: String = row.try_get("metadata")?;
        let metadata = serde_json::from_str(&metadata_json).map_err(|err| StoreError::Corrupt {
            column: "metadata",
            problem: format!("is not JSON: {err}"),
        })?;
        Ok(Self {
            record: RecordedEvent {
                global_position: row.try_get("global_position")?,
                event_id: row.try_get("event_id")?,
                aggregate_type: row.try_get("aggregate_type")?,
                aggregate_id: row.try_get("aggregate_id")?,
                sequence: row.try_get("sequence")?,
                event_type: row.try_get("event_type")?,
                event_version: row.try_get("event_version")?,
                tenant_id: row.try_get("tenant_id")?,
                recorded_at: row.try_get("recorded_at")?,
                payload: Value::Null,
                metadata,
                prev_hash: digest("prev_hash")?,
                tenant_prev_hash: digest("tenant_prev_hash")?,
                hash: digest("hash")?,
            },
            payload_json: row.try_get("payload")?,
            metadata_json,
        })
    }

    /// The canonical bytes, put together from the stored text without parsing it, if they
    /// hash to the stored hash; `None` when they do not (the text is not the canonical text
    /// it was written as), and the bytes must be computed from the parsed values.
    pub fn canonical_bytes_as_stored(&self) -> Option<Vec<u8>> {
        let event = &self.record;
        let canonical = CanonicalEvent::from_stored(
            &EventFields {
                event_id: event.event_id,
                aggregate_type: &event.aggregate_type,
                aggregate_id: &event.aggregate_id,
                sequence: event.sequence,
                event_type: &event.event_type,
                event_version: &event.event_version,
                tenant_id: event.tenant_id,
                payload: &Value::Null,
                metadata: &Value::Null,
            },
            self.payload_json.clone(),
            self.metadata_json.clone(),
        );
        let bytes = canonical.bytes(&event.links());
        let hash = Digest32(Sha256::digest(&bytes).into());
        (hash == event.hash).then_some(bytes)
    }

    /// The event with its payload parsed.
    pub fn parsed(&self) -> Result<RecordedEvent, StoreError> {
        let payload =
            serde_json::from_str(&self.payload_json).map_err(|err| StoreError::Corrupt {
                column: "payload",
                problem: format!("is not JSON: {err}"),
            })?;
        Ok(RecordedEvent {
            payload,
            ..self.record.clone()
        })
    }
}

impl RecordedEvent {
    /// The record as the bus contracts carry it (`proto::EventRecord`).
    pub fn to_proto(&self) -> proto::EventRecord {
        self.to_proto_with_payload(self.payload.clone())
    }

    /// [`RecordedEvent::to_proto`] with another payload: an envelope carries the payload in
    /// its canonical bytes and typed message, so the relay need not copy it here.
    pub(crate) fn to_proto_with_payload(&self, payload: Value) -> proto::EventRecord {
        proto::EventRecord {
            global_position: self.global_position,
            event_id: self.event_id,
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            sequence: self.sequence,
            event_type: self.event_type.clone(),
            event_version: self.event_version.clone(),
            tenant_id: self.tenant_id,
            recorded_at: self.recorded_at,
            payload,
            metadata: self.metadata.clone(),
            prev_hash: self.prev_hash.0,
            tenant_prev_hash: self.tenant_prev_hash.0,
            hash: self.hash.0,
        }
    }
}

impl From<proto::EventRecord> for RecordedEvent {
    fn from(record: proto::EventRecord) -> Self {
        Self {
            global_position: record.global_position,
            event_id: record.event_id,
            aggregate_type: record.aggregate_type,
            aggregate_id: record.aggregate_id,
            sequence: record.sequence,
            event_type: record.event_type,
            event_version: record.event_version,
            tenant_id: record.tenant_id,
            recorded_at: record.recorded_at,
            payload: record.payload,
            metadata: record.metadata,
            prev_hash: Digest32(record.prev_hash),
            tenant_prev_hash: Digest32(record.tenant_prev_hash),
            hash: Digest32(record.hash),
        }
    }
}
