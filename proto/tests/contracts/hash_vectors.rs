//! The published hash test vectors (docs/hash-test-vectors.json), as envelopes: a consumer
//! checks each event's hash and its links from the envelopes alone.

use chrono::{DateTime, Utc};
use prost::Message;
use proto::{EventRecord, VerifyError, v1};
use serde_json::Value;
use uuid::Uuid;

const VECTORS: &str = include_str!("../../../docs/hash-test-vectors.json");

struct Vector {
    record: EventRecord,
    canonical: Vec<u8>,
    hash: String,
}

fn vectors() -> Vec<Vector> {
    let document: Value = serde_json::from_str(VECTORS).unwrap();
    document["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vector| {
            let record = &vector["record"];
            let text = |name: &str| record[name].as_str().unwrap().to_owned();
            let digest =
                |name: &str| -> [u8; 32] { hex::decode(text(name)).unwrap().try_into().unwrap() };
            Vector {
                record: EventRecord {
                    global_position: record["global_position"].as_i64().unwrap(),
                    event_id: Uuid::parse_str(&text("event_id")).unwrap(),
                    aggregate_type: text("aggregate_type"),
                    aggregate_id: text("aggregate_id"),
                    sequence: record["sequence"].as_i64().unwrap(),
                    event_type: text("event_type"),
                    event_version: text("event_version"),
                    tenant_id: record["tenant_id"]
                        .as_str()
                        .map(|tenant| Uuid::parse_str(tenant).unwrap()),
                    recorded_at: DateTime::parse_from_rfc3339(&text("recorded_at"))
                        .unwrap()
                        .with_timezone(&Utc),
                    payload: record["payload"].clone(),
                    metadata: record["metadata"].clone(),
                    prev_hash: digest("prev_hash"),
                    tenant_prev_hash: digest("tenant_prev_hash"),
                    hash: hex::decode(vector["hash"].as_str().unwrap())
                        .unwrap()
                        .try_into()
                        .unwrap(),
                },
                canonical: vector["canonical"].as_str().unwrap().as_bytes().to_vec(),
                hash: vector["hash"].as_str().unwrap().to_owned(),
            }
        })
        .collect()
}

/// The envelopes as a consumer receives them: built by the relay, encoded, decoded. The
/// vectors' payloads illustrate the encoding and are not domain events, so the envelopes
/// carry no typed payload.
fn received() -> Vec<v1::EventEnvelope> {
    vectors()
        .into_iter()
        .map(|vector| {
            let envelope =
                v1::EventEnvelope::without_payload(vector.record, vector.canonical).unwrap();
            v1::EventEnvelope::decode(envelope.encode_to_vec().as_slice()).unwrap()
        })
        .collect()
}

#[test]
fn the_published_vectors_verify_from_their_envelopes_alone() {
    let vectors = vectors();
    let envelopes = received();
    assert_eq!(envelopes.len(), 3);
    for (vector, envelope) in vectors.iter().zip(&envelopes) {
        assert_eq!(hex::encode(envelope.computed_hash()), vector.hash);
        assert_eq!(envelope.verify_hash(), Ok(()));
        assert_eq!(envelope.verify(), Ok(()));
        // Read back, the record is the vector's, its payload taken from the canonical bytes.
        assert_eq!(envelope.to_record().unwrap(), vector.record);
    }
}

#[test]
fn the_published_vectors_chain_from_their_envelopes_alone() {
    let [first, platform, third] = <[_; 3]>::try_from(received()).unwrap();
    assert_eq!(
        first.prev_hash, [0; 32],
        "the log starts with the zero link"
    );
    assert_eq!(first.tenant_prev_hash, [0; 32]);
    assert_eq!(platform.verify_follows(&first), Ok(()));
    assert_eq!(third.verify_follows(&platform), Ok(()));
    // The third event is the first one's tenant's next event; the platform-level event in
    // between belongs to another chain.
    assert_eq!(third.verify_follows_in_tenant(&first), Ok(()));
    assert!(matches!(
        third.verify_follows_in_tenant(&platform),
        Err(VerifyError::OtherTenant { .. })
    ));
}

#[test]
fn a_consumer_notices_a_gap_and_a_broken_link() {
    let [first, _, third] = <[_; 3]>::try_from(received()).unwrap();
    assert_eq!(
        third.verify_follows(&first),
        Err(VerifyError::NotNext {
            previous: 1,
            position: 3
        })
    );

    let [first, mut second, _] = <[_; 3]>::try_from(received()).unwrap();
    second.prev_hash[0] ^= 0x80;
    assert!(matches!(
        second.verify_follows(&first),
        Err(VerifyError::BrokenLink {
            link: "prev_hash",
            ..
        })
    ));
    // The link is inside the canonical bytes, so the changed field no longer matches them.
    assert!(matches!(
        second.verify(),
        Err(VerifyError::FieldMismatch {
            field: "prev_hash",
            ..
        })
    ));
}

#[test]
fn a_consumer_notices_an_altered_event() {
    let [mut first, ..] = <[_; 3]>::try_from(received()).unwrap();
    let at = first
        .canonical
        .windows(8)
        .position(|window| window == b"Acme Ltd")
        .unwrap();
    first.canonical[at] = b'X';
    assert!(matches!(
        first.verify_hash(),
        Err(VerifyError::HashMismatch { .. })
    ));
    assert!(first.verify().is_err());
}
