//! An envelope built from a record of the log carries the record whole: it survives its wire
//! encoding, reads back as the same record, and verifies against its own canonical bytes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use prost::Message;
use proto::{EventRecord, TypedEvent, VerifyError, v1};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::strategies::*;

/// The canonical bytes of a record (docs/hash-spec.md): RFC 8785 of its thirteen members,
/// made here with an independent JCS library.
pub fn canonical(record: &EventRecord) -> Vec<u8> {
    let value = json!({
        "aggregate_id": record.aggregate_id,
        "aggregate_type": record.aggregate_type,
        "event_id": record.event_id.to_string(),
        "event_type": record.event_type,
        "event_version": record.event_version,
        "global_position": record.global_position,
        "metadata": record.metadata,
        "payload": record.payload,
        "prev_hash": hex::encode(record.prev_hash),
        "recorded_at": record.recorded_at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        "sequence": record.sequence,
        "tenant_id": record.tenant_id.map(|tenant| tenant.to_string()),
        "tenant_prev_hash": hex::encode(record.tenant_prev_hash),
    });
    serde_json_canonicalizer::to_vec(&value).unwrap()
}

/// A record of the log holding `event`, with its hash computed over its canonical bytes.
pub fn record_of(
    event: &TypedEvent,
    position: i64,
    sequence: i64,
    tenant_id: Option<Uuid>,
    recorded_at: DateTime<Utc>,
    metadata: BTreeMap<String, String>,
    links: ([u8; 32], [u8; 32]),
) -> (EventRecord, Vec<u8>) {
    let mut record = EventRecord {
        global_position: position,
        event_id: Uuid::from_u128(0x0193_2b6e_9000_7abc_8def_0000_0000_0000 | position as u128),
        aggregate_type: event.aggregate_type().to_owned(),
        aggregate_id: format!("aggregate-{sequence}"),
        sequence,
        event_type: event.event_type(),
        event_version: event.event_version(),
        tenant_id,
        recorded_at,
        payload: event.to_json().unwrap(),
        metadata: Value::Object(
            metadata
                .into_iter()
                .map(|(key, value)| (key, Value::String(value)))
                .collect(),
        ),
        prev_hash: links.0,
        tenant_prev_hash: links.1,
        hash: [0; 32],
    };
    let bytes = canonical(&record);
    record.hash = Sha256::digest(&bytes).into();
    (record, bytes)
}

fn metadata() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(
        prop_oneof![
            Just("actor_id".to_owned()),
            Just("actor_kind".to_owned()),
            Just("request_id".to_owned()),
            Just("client_ip".to_owned()),
            "[a-z_]{1,12}",
        ],
        text(),
        0..6,
    )
}

fn record() -> impl Strategy<Value = (EventRecord, Vec<u8>)> {
    (
        typed_event(),
        1..=MAX_SAFE_INTEGER as i64,
        1..=MAX_SAFE_INTEGER as i64,
        proptest::option::of(uuid()),
        recorded_at(),
        metadata(),
        any::<([u8; 32], [u8; 32])>(),
    )
        .prop_map(|(event, position, sequence, tenant, at, metadata, links)| {
            record_of(&event, position, sequence, tenant, at, metadata, links)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// record -> envelope -> bytes -> envelope -> record, for an event of every variant.
    #[test]
    fn an_envelope_survives_its_wire_encoding_and_reads_back_as_its_record(
        (record, canonical) in record()
    ) {
        let envelope = v1::EventEnvelope::from_record(record.clone(), canonical.clone()).unwrap();
        prop_assert!(envelope.payload.is_some(), "every event of the strategies is typed");
        prop_assert_eq!(&envelope.canonical, &canonical);

        let bytes = envelope.encode_to_vec();
        let decoded = v1::EventEnvelope::decode(bytes.as_slice()).unwrap();
        prop_assert_eq!(&decoded, &envelope);
        prop_assert_eq!(decoded.to_record().unwrap(), record.clone());

        let typed = decoded.typed_event().unwrap().unwrap();
        prop_assert_eq!(typed.to_json().unwrap(), record.payload);
    }

    /// What a consumer checks holds for every honest envelope: the hash over the canonical
    /// bytes, and every field, the typed payload included, against those bytes.
    #[test]
    fn an_honest_envelope_verifies((record, canonical) in record()) {
        let envelope = v1::EventEnvelope::from_record(record, canonical).unwrap();
        prop_assert_eq!(envelope.verify(), Ok(()));
    }

    /// Flipping any bit of the canonical bytes is caught by the hash.
    #[test]
    fn an_altered_canonical_byte_fails_the_hash(
        (record, canonical) in record(),
        at in any::<prop::sample::Index>(),
        bit in 0..8_u8,
    ) {
        let mut envelope = v1::EventEnvelope::from_record(record, canonical).unwrap();
        let index = at.index(envelope.canonical.len());
        envelope.canonical[index] ^= 1 << bit;
        let refused = matches!(envelope.verify_hash(), Err(VerifyError::HashMismatch { .. }));
        prop_assert!(refused);
    }

    /// A field of the envelope changed in transit, while the canonical bytes and hash stay
    /// honest, is caught by comparing it with the canonical bytes.
    #[test]
    fn an_envelope_field_that_disagrees_with_the_canonical_bytes_is_caught(
        (record, canonical) in record(),
        field in 0..9_u8,
    ) {
        let mut envelope = v1::EventEnvelope::from_record(record, canonical).unwrap();
        match field {
            0 => envelope.aggregate_id.push('x'),
            1 => envelope.global_position += 1,
            2 => envelope.sequence += 1,
            3 => envelope.prev_hash[0] ^= 1,
            4 => envelope.tenant_prev_hash[31] ^= 1,
            5 => {
                envelope.metadata.insert("actor_id".into(), "someone-else".into());
                envelope.metadata.insert("injected".into(), "x".into());
            }
            6 => {
                envelope.tenant_id = match envelope.tenant_id {
                    Some(_) => None,
                    None => Some(Uuid::from_u128(7).to_string()),
                };
            }
            7 => {
                let at = envelope.recorded_at.as_mut().unwrap();
                at.nanos = (at.nanos + 1000) % 1_000_000_000;
                at.seconds += 1;
            }
            _ => {
                // Another event's typed payload under this event's canonical bytes.
                envelope.payload = Some(
                    TypedEvent::Idempotency(commands::idempotency::IdempotencyEvent::CommandRecorded {
                        fingerprint: "forged".into(),
                        result: Value::Null,
                    })
                    .into(),
                );
            }
        }
        let refused = matches!(envelope.verify(), Err(VerifyError::FieldMismatch { .. }));
        prop_assert!(refused, "{:?}", envelope.verify());
    }
}

#[test]
fn an_event_of_an_aggregate_the_contracts_do_not_type_travels_untyped() {
    let mut record = record_of(
        &TypedEvent::User(domain::identity::user::UserEvent::TotpCodeUsed { step: 5 }),
        3,
        1,
        None,
        DateTime::from_timestamp(1_800_000_000, 123_456_000).unwrap(),
        BTreeMap::from([("actor_id".to_owned(), "system".to_owned())]),
        ([1; 32], [2; 32]),
    )
    .0;
    record.aggregate_type = "Wallet".into();
    record.event_type = "Deposited".into();
    record.payload = json!({"Deposited": {"amount": 1250, "currency": "NGN"}});
    let bytes = canonical(&record);
    record.hash = Sha256::digest(&bytes).into();

    let envelope = v1::EventEnvelope::from_record(record.clone(), bytes).unwrap();
    assert_eq!(envelope.payload, None);
    assert_eq!(envelope.verify(), Ok(()));
    // The payload is read from the canonical bytes.
    assert_eq!(envelope.to_record().unwrap(), record);
}

#[test]
fn a_platform_level_event_has_no_tenant() {
    let (record, bytes) = record_of(
        &TypedEvent::Tenant(domain::identity::tenant::TenantEvent::TenantReactivated {
            reactivated_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        }),
        9,
        4,
        None,
        DateTime::from_timestamp(1_800_000_001, 0).unwrap(),
        BTreeMap::new(),
        ([0; 32], [0; 32]),
    );
    let envelope = v1::EventEnvelope::from_record(record, bytes).unwrap();
    assert_eq!(envelope.tenant_id, None);
    let decoded = v1::EventEnvelope::decode(envelope.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.tenant_id, None);
    assert_eq!(decoded.verify(), Ok(()));
}
