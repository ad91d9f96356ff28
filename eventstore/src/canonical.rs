//! The canonical encoding of an event record and its hash.
//!
//! The encoding is RFC 8785 (JCS) JSON of an object with exactly these thirteen members, which
//! JCS sorts by name: `aggregate_id`, `aggregate_type`, `event_id`, `event_type`,
//! `event_version`, `global_position`, `metadata`, `payload`, `prev_hash`, `recorded_at`,
//! `sequence`, `tenant_id`, `tenant_prev_hash`. The hash is SHA-256 of those bytes.
//! docs/hash-spec.md is the normative description, and docs/hash-test-vectors.json holds
//! vectors that the tests check this code against.
//!
//! Everything except the position, the two links and the record time is known before an
//! append reaches the appender, so [`CanonicalEvent`] encodes that part once, outside the
//! appender's serial section, and [`CanonicalEvent::hash`] streams the rest into SHA-256.

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The largest integer the encoding accepts (2^53 − 1). JCS writes numbers as IEEE-754
/// doubles, which represent every integer up to this bound exactly and no further.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The deepest nesting of arrays and objects accepted in a payload or metadata. JSON
/// decoders limit depth (serde_json, which reads the log back, stops at 128); a value
/// nested deeper could be written but never read again.
pub const MAX_DEPTH: usize = 64;

/// A SHA-256 digest: an event's hash, or one of its links.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest32(pub [u8; 32]);

/// The link of the first event of a chain: 32 zero bytes.
pub const ZERO_HASH: Digest32 = Digest32([0; 32]);

impl Digest32 {
    /// Reads a digest from the 32 bytes stored in a `bytea` column.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// Lower-case hexadecimal, as it appears in the canonical encoding.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest32({})", self.to_hex())
    }
}

/// A value that cannot be part of an event record. The message names the field and the
/// problem, e.g. `payload.amount: integer 9007199254740993 is beyond ±(2^53 − 1)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct CanonicalError {
    /// Where the offending value is, as a dotted path (`payload.lines[2].amount`).
    pub path: String,
    /// What is wrong with it.
    pub problem: String,
}

impl CanonicalError {
    fn new(path: &str, problem: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }
}

/// The fields of an event record that are fixed before it is appended.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    /// The event's UUID v7.
    pub event_id: Uuid,
    /// The aggregate's type name.
    pub aggregate_type: &'a str,
    /// The aggregate instance's id.
    pub aggregate_id: &'a str,
    /// The event's sequence within its aggregate, from 1.
    pub sequence: i64,
    /// The event's type name.
    pub event_type: &'a str,
    /// The event's schema version.
    pub event_version: &'a str,
    /// The tenant, or `None` for a platform-level event.
    pub tenant_id: Option<Uuid>,
    /// The event's payload.
    pub payload: &'a Value,
    /// The command metadata stored with the event.
    pub metadata: &'a Value,
}

/// The canonical encoding of an event, less the members that the appender fills in:
/// `global_position`, `prev_hash`, `recorded_at` and `tenant_prev_hash`.
#[derive(Debug, Clone)]
pub struct CanonicalEvent {
    /// From `{` up to and including `"global_position":`.
    head: Vec<u8>,
    /// From `,"metadata":` up to and including `"prev_hash":"`.
    body: Vec<u8>,
    /// `,"sequence":N,"tenant_id":...,"tenant_prev_hash":"`: everything after `recorded_at`
    /// up to the last link.
    tail: Vec<u8>,
    /// The canonical JSON text of the payload, which is also what gets stored.
    payload_json: String,
    /// The canonical JSON text of the metadata.
    metadata_json: String,
}

impl CanonicalEvent {
    /// Validates the fields and encodes everything that does not depend on the position.
    ///
    /// Refused, with the offending path: empty aggregate type or id, a sequence below 1 or
    /// above 2^53 − 1, any string or object key containing U+0000 (PostgreSQL cannot store
    /// it), and any integer beyond ±(2^53 − 1).
    pub fn new(fields: &EventFields<'_>) -> Result<Self, CanonicalError> {
        if fields.aggregate_type.is_empty() {
            return Err(CanonicalError::new("aggregate_type", "must not be empty"));
        }
        if fields.aggregate_id.is_empty() {
            return Err(CanonicalError::new("aggregate_id", "must not be empty"));
        }
        if fields.sequence < 1 || fields.sequence.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(CanonicalError::new(
                "sequence",
                format!("{} is outside 1..=2^53-1", fields.sequence),
            ));
        }
        for (path, text) in [
            ("aggregate_type", fields.aggregate_type),
            ("aggregate_id", fields.aggregate_id),
            ("event_type", fields.event_type),
            ("event_version", fields.event_version),
        ] {
            check_string(path, text)?;
        }
        check_value("payload", fields.payload, 0)?;
        check_value("metadata", fields.metadata, 0)?;

        let payload_json = jcs(fields.payload, "payload")?;
        let metadata_json = jcs(fields.metadata, "metadata")?;
        Ok(Self::assemble(fields, payload_json, metadata_json))
    }

    /// The encoding of an event read back from the log, whose payload and metadata are given
    /// as the text the log stores: the canonical text the appender wrote. Nothing is checked
    /// or re-encoded, so the result is right only if that text is still canonical; compare
    /// [`CanonicalEvent::hash`] with the stored hash to know (`fields.payload` and
    /// `fields.metadata` are not read).
    pub fn from_stored(
        fields: &EventFields<'_>,
        payload_json: String,
        metadata_json: String,
    ) -> Self {
        Self::assemble(fields, payload_json, metadata_json)
    }

    fn assemble(fields: &EventFields<'_>, payload_json: String, metadata_json: String) -> Self {
        let mut head = Vec::with_capacity(160);
        head.extend_from_slice(b"{\"aggregate_id\":");
        push_string(&mut head, fields.aggregate_id);
        head.extend_from_slice(b",\"aggregate_type\":");
        push_string(&mut head, fields.aggregate_type);
        head.extend_from_slice(b",\"event_id\":\"");
        head.extend_from_slice(fields.event_id.hyphenated().to_string().as_bytes());
        head.extend_from_slice(b"\",\"event_type\":");
        push_string(&mut head, fields.event_type);
        head.extend_from_slice(b",\"event_version\":");
        push_string(&mut head, fields.event_version);
        head.extend_from_slice(b",\"global_position\":");

        let mut body = Vec::with_capacity(payload_json.len() + metadata_json.len() + 40);
        body.extend_from_slice(b",\"metadata\":");
        body.extend_from_slice(metadata_json.as_bytes());
        body.extend_from_slice(b",\"payload\":");
        body.extend_from_slice(payload_json.as_bytes());
        body.extend_from_slice(b",\"prev_hash\":\"");

        let mut tail = Vec::with_capacity(96);
        tail.extend_from_slice(b",\"sequence\":");
        tail.extend_from_slice(fields.sequence.to_string().as_bytes());
        tail.extend_from_slice(b",\"tenant_id\":");
        match fields.tenant_id {
            Some(tenant) => {
                tail.push(b'"');
                tail.extend_from_slice(tenant.hyphenated().to_string().as_bytes());
                tail.push(b'"');
            }
            None => tail.extend_from_slice(b"null"),
        }
        tail.extend_from_slice(b",\"tenant_prev_hash\":\"");

        Self {
            head,
            body,
            tail,
            payload_json,
            metadata_json,
        }
    }

    /// The canonical JSON text of the payload (valid JSON, stored as is).
    pub fn payload_json(&self) -> &str {
        &self.payload_json
    }

    /// The canonical JSON text of the metadata.
    pub fn metadata_json(&self) -> &str {
        &self.metadata_json
    }

    /// The complete canonical bytes once the appender's members are known.
    pub fn bytes(&self, links: &Links) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + self.body.len() + self.tail.len() + 200);
        self.write(links, |part| out.extend_from_slice(part));
        out
    }

    /// SHA-256 of [`CanonicalEvent::bytes`], computed without building them.
    pub fn hash(&self, links: &Links) -> Digest32 {
        let mut hasher = Sha256::new();
        self.write(links, |part| hasher.update(part));
        Digest32(hasher.finalize().into())
    }

    fn write(&self, links: &Links, mut sink: impl FnMut(&[u8])) {
        let mut hex_buf = [0u8; 64];
        sink(&self.head);
        sink(links.global_position.to_string().as_bytes());
        sink(&self.body);
        sink(hex_into(&links.prev_hash, &mut hex_buf));
        sink(b"\",\"recorded_at\":\"");
        sink(format_recorded_at(&links.recorded_at).as_bytes());
        sink(b"\"");
        sink(&self.tail);
        sink(hex_into(&links.tenant_prev_hash, &mut hex_buf));
        sink(b"\"}");
    }
}

/// The members of the canonical encoding that are assigned at append time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Links {
    /// The event's position in the whole log, from 1.
    pub global_position: i64,
    /// The hash of the previous event of the log, or [`ZERO_HASH`] for the first.
    pub prev_hash: Digest32,
    /// When the event was recorded, at microsecond precision.
    pub recorded_at: DateTime<Utc>,
    /// The hash of the previous event of the same tenant, or [`ZERO_HASH`].
    pub tenant_prev_hash: Digest32,
}

/// `recorded_at` as it appears in the encoding: RFC 3339 in UTC with exactly six fractional
/// digits and a `Z`, e.g. `2026-11-22T01:04:41.123456Z`.
pub fn format_recorded_at(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn hex_into<'b>(digest: &Digest32, buf: &'b mut [u8; 64]) -> &'b [u8] {
    // `encode_to_slice` only fails on a wrong output length, and 64 is exactly 2 × 32.
    if hex::encode_to_slice(digest.0, buf).is_err() {
        buf.fill(b'0');
    }
    &buf[..]
}

fn push_string(out: &mut Vec<u8>, text: &str) {
    // JCS escapes strings exactly as serde_json does: `"` and `\`, the short escapes
    // \b \f \n \r \t, and \u00xx (lower-case) for the other control characters.
    // Serializing a string into a Vec cannot fail: there is no I/O and no map key to check.
    if serde_json::to_writer(&mut *out, text).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

fn jcs(value: &Value, path: &str) -> Result<String, CanonicalError> {
    serde_json_canonicalizer::to_string(value)
        .map_err(|err| CanonicalError::new(path, format!("cannot be canonicalized: {err}")))
}

fn check_string(path: &str, text: &str) -> Result<(), CanonicalError> {
    if text.contains('\0') {
        return Err(CanonicalError::new(path, nul_problem()));
    }
    Ok(())
}

fn check_value(path: &str, value: &Value, depth: usize) -> Result<(), CanonicalError> {
    // The walk allocates nothing while the value is valid: the path of an offending value
    // is put together only on the way back up from it.
    check_within(value, depth).map_err(|fault| {
        let mut full = path.to_owned();
        for step in fault.steps.iter().rev() {
            match step {
                Step::Index(i) => full.push_str(&format!("[{i}]")),
                Step::Key(key) => {
                    full.push('.');
                    full.push_str(key);
                }
            }
        }
        CanonicalError::new(&full, fault.problem)
    })
}

/// One step from a value to a value inside it.
enum Step<'v> {
    Index(usize),
    Key(&'v str),
}

/// What is wrong, and the steps from the offending value back up to where the walk began.
struct Fault<'v> {
    steps: Vec<Step<'v>>,
    problem: String,
}

impl<'v> Fault<'v> {
    fn new(problem: String) -> Self {
        Self {
            steps: Vec::new(),
            problem,
        }
    }

    fn at(mut self, step: Step<'v>) -> Self {
        self.steps.push(step);
        self
    }
}

fn nul_problem() -> String {
    "contains the NUL character U+0000, which PostgreSQL cannot store".to_owned()
}

fn check_within(value: &Value, depth: usize) -> Result<(), Fault<'_>> {
    match value {
        Value::Null | Value::Bool(_) => Ok(()),
        Value::String(text) if text.contains('\0') => Err(Fault::new(nul_problem())),
        Value::String(_) => Ok(()),
        Value::Number(number) => {
            let beyond = match (number.as_u64(), number.as_i64(), number.as_f64()) {
                (Some(u), _, _) => u > MAX_SAFE_INTEGER,
                (None, Some(i), _) => i.unsigned_abs() > MAX_SAFE_INTEGER,
                // A whole float beyond the safe range is written as an integer, and read
                // back as one: it would no longer be accepted.
                (None, None, Some(f)) => f.fract() == 0.0 && f.abs() > MAX_SAFE_INTEGER as f64,
                (None, None, None) => false,
            };
            if beyond {
                Err(Fault::new(format!(
                    "number {number} is a whole number beyond ±(2^53 − 1); store large quantities as strings"
                )))
            } else {
                Ok(())
            }
        }
        Value::Array(_) | Value::Object(_) if depth >= MAX_DEPTH => Err(Fault::new(format!(
            "nests arrays and objects deeper than {MAX_DEPTH} levels"
        ))),
        Value::Array(items) => items.iter().enumerate().try_for_each(|(i, item)| {
            check_within(item, depth + 1).map_err(|fault| fault.at(Step::Index(i)))
        }),
        Value::Object(members) => members.iter().try_for_each(|(key, item)| {
            if key.contains('\0') {
                return Err(Fault::new(nul_problem()).at(Step::Key(key)));
            }
            check_within(item, depth + 1).map_err(|fault| fault.at(Step::Key(key)))
        }),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn fields<'a>(payload: &'a Value, metadata: &'a Value) -> EventFields<'a> {
        EventFields {
            event_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            aggregate_type: "Account",
            aggregate_id: "acc-1",
            sequence: 3,
            event_type: "Deposited",
            event_version: "1",
            tenant_id: Some(Uuid::from_u128(0x42)),
            payload,
            metadata,
        }
    }

    fn links() -> Links {
        Links {
            global_position: 17,
            prev_hash: Digest32([0xab; 32]),
            recorded_at: Utc.with_ymd_and_hms(2026, 11, 22, 1, 4, 41).unwrap()
                + chrono::Duration::microseconds(123_456),
            tenant_prev_hash: ZERO_HASH,
        }
    }

    /// The whole record as one JSON value, canonicalized by the JCS library: the assembled
    /// encoding must equal it byte for byte.
    fn reference(fields: &EventFields<'_>, links: &Links) -> Vec<u8> {
        let record = json!({
            "aggregate_id": fields.aggregate_id,
            "aggregate_type": fields.aggregate_type,
            "event_id": fields.event_id.to_string(),
            "event_type": fields.event_type,
            "event_version": fields.event_version,
            "global_position": links.global_position,
            "metadata": fields.metadata,
            "payload": fields.payload,
            "prev_hash": links.prev_hash.to_hex(),
            "recorded_at": format_recorded_at(&links.recorded_at),
            "sequence": fields.sequence,
            "tenant_id": fields.tenant_id.map(|t| t.to_string()),
            "tenant_prev_hash": links.tenant_prev_hash.to_hex(),
        });
        serde_json_canonicalizer::to_vec(&record).unwrap()
    }

    #[test]
    fn assembled_encoding_is_the_jcs_of_the_whole_record() {
        let payload = json!({"b": [1, 2.5, "x\ny"], "a": {"é": null, "z": true}});
        let metadata = json!({"actor_id": "u-1", "tenant_id": "t"});
        let f = fields(&payload, &metadata);
        let event = CanonicalEvent::new(&f).unwrap();
        assert_eq!(event.bytes(&links()), reference(&f, &links()));
        let digest: [u8; 32] = Sha256::digest(reference(&f, &links())).into();
        assert_eq!(event.hash(&links()), Digest32(digest));
    }

    #[test]
    fn recorded_at_always_has_six_fractional_digits() {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(format_recorded_at(&at), "2026-01-02T03:04:05.000000Z");
    }

    #[test]
    fn refuses_an_integer_beyond_the_safe_range_and_names_it() {
        let payload = json!({"lines": [{"amount": 9_007_199_254_740_993_u64}]});
        let metadata = json!({});
        let err = CanonicalEvent::new(&fields(&payload, &metadata)).unwrap_err();
        assert_eq!(err.path, "payload.lines[0].amount");
        assert!(err.problem.contains("9007199254740993"), "{err}");
    }

    #[test]
    fn refuses_a_whole_float_beyond_the_safe_range() {
        let payload = json!({"big": 1e17, "fine": 2.5e300, "small": -1.5});
        let metadata = json!({});
        let err = CanonicalEvent::new(&fields(&payload, &metadata)).unwrap_err();
        assert_eq!(err.path, "payload.big");
    }

    #[test]
    fn refuses_nesting_deeper_than_the_limit() {
        let mut deep = json!(1);
        for _ in 0..MAX_DEPTH {
            deep = json!([deep]);
        }
        let metadata = json!({});
        assert!(CanonicalEvent::new(&fields(&deep, &metadata)).is_ok());
        let deeper = json!({"x": deep});
        let err = CanonicalEvent::new(&fields(&deeper, &metadata)).unwrap_err();
        assert!(err.problem.contains("deeper than 64"), "{err}");
    }

    #[test]
    fn accepts_the_largest_safe_integers() {
        let payload = json!({"max": MAX_SAFE_INTEGER, "min": -(MAX_SAFE_INTEGER as i64)});
        let metadata = json!({});
        assert!(CanonicalEvent::new(&fields(&payload, &metadata)).is_ok());
    }

    #[test]
    fn refuses_nul_in_strings_keys_and_ids() {
        let metadata = json!({});
        let payload = json!({"name": "a\u{0}b"});
        let err = CanonicalEvent::new(&fields(&payload, &metadata)).unwrap_err();
        assert_eq!(err.path, "payload.name");
        let payload = json!({"na\u{0}me": 1});
        assert!(CanonicalEvent::new(&fields(&payload, &metadata)).is_err());
        let payload = json!({});
        let mut f = fields(&payload, &metadata);
        f.aggregate_id = "a\u{0}";
        assert_eq!(CanonicalEvent::new(&f).unwrap_err().path, "aggregate_id");
    }

    #[test]
    fn refuses_an_empty_aggregate_id_and_a_zero_sequence() {
        let (payload, metadata) = (json!({}), json!({}));
        let mut f = fields(&payload, &metadata);
        f.aggregate_id = "";
        assert_eq!(CanonicalEvent::new(&f).unwrap_err().path, "aggregate_id");
        let mut f = fields(&payload, &metadata);
        f.sequence = 0;
        assert_eq!(CanonicalEvent::new(&f).unwrap_err().path, "sequence");
    }

    /// docs/hash-test-vectors.json, checked against an independent implementation by
    /// docs/verify_hash_vectors.py, must come out byte for byte the same here.
    #[test]
    fn the_published_test_vectors_hold() {
        let document: Value =
            serde_json::from_str(include_str!("../../docs/hash-test-vectors.json")).unwrap();
        let vectors = document["vectors"].as_array().unwrap();
        assert_eq!(vectors.len(), 3);
        for vector in vectors {
            let record = &vector["record"];
            let text = |name: &str| record[name].as_str().unwrap().to_owned();
            let digest =
                |name: &str| Digest32(hex::decode(text(name)).unwrap().try_into().unwrap());
            let (aggregate_type, aggregate_id) = (text("aggregate_type"), text("aggregate_id"));
            let (event_type, event_version) = (text("event_type"), text("event_version"));
            let fields = EventFields {
                event_id: Uuid::parse_str(&text("event_id")).unwrap(),
                aggregate_type: &aggregate_type,
                aggregate_id: &aggregate_id,
                sequence: record["sequence"].as_i64().unwrap(),
                event_type: &event_type,
                event_version: &event_version,
                tenant_id: record["tenant_id"]
                    .as_str()
                    .map(|t| Uuid::parse_str(t).unwrap()),
                payload: &record["payload"],
                metadata: &record["metadata"],
            };
            let links = Links {
                global_position: record["global_position"].as_i64().unwrap(),
                prev_hash: digest("prev_hash"),
                recorded_at: DateTime::parse_from_rfc3339(&text("recorded_at"))
                    .unwrap()
                    .with_timezone(&Utc),
                tenant_prev_hash: digest("tenant_prev_hash"),
            };
            let event = CanonicalEvent::new(&fields).unwrap();
            let canonical = String::from_utf8(event.bytes(&links)).unwrap();
            assert_eq!(
                canonical,
                vector["canonical"].as_str().unwrap(),
                "{}",
                vector["name"]
            );
            assert_eq!(
                event.hash(&links).to_hex(),
                vector["hash"].as_str().unwrap()
            );
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-(MAX_SAFE_INTEGER as i64)..=(MAX_SAFE_INTEGER as i64)).prop_map(Value::from),
            any::<f64>()
                .prop_filter(
                    "finite, and not a whole number beyond the safe range",
                    |f| {
                        f.is_finite() && !(f.fract() == 0.0 && f.abs() > MAX_SAFE_INTEGER as f64)
                    }
                )
                .prop_map(Value::from),
            "[^\u{0}]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[^\u{0}]{0,8}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn the_encoding_is_stable_and_equals_jcs_of_the_record(payload in arb_json(), metadata in arb_json()) {
            let f = fields(&payload, &metadata);
            let first = CanonicalEvent::new(&f).unwrap();
            // Stable: encoding again, or encoding what was stored and read back, gives the same bytes.
            let reparsed: Value = serde_json::from_str(first.payload_json()).unwrap();
            let again = CanonicalEvent::new(&fields(&reparsed, &metadata)).unwrap();
            prop_assert_eq!(first.bytes(&links()), again.bytes(&links()));
            prop_assert_eq!(first.bytes(&links()), reference(&f, &links()));
        }

        #[test]
        fn changing_any_single_byte_changes_the_hash(
            payload in arb_json(),
            index in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let metadata = json!({"actor_id": "u-1"});
            let event = CanonicalEvent::new(&fields(&payload, &metadata)).unwrap();
            let bytes = event.bytes(&links());
            let original: [u8; 32] = Sha256::digest(&bytes).into();
            prop_assert_eq!(event.hash(&links()), Digest32(original));
            let mut tampered = bytes.clone();
            let at = index.index(tampered.len());
            tampered[at] ^= flip;
            let changed: [u8; 32] = Sha256::digest(&tampered).into();
            prop_assert_ne!(changed, original);
        }

        /// Every member is covered by the hash: changing one byte of any one of them changes it.
        #[test]
        fn changing_one_byte_of_any_field_changes_the_hash(
            field in 0usize..13,
            byte in any::<prop::sample::Index>(),
            flip in 1u8..=127,
        ) {
            let payload = json!({"amount": 1250, "currency": "NGN"});
            let metadata = json!({"actor_id": "user-7"});
            let base_fields = fields(&payload, &metadata);
            let base_links = links();
            let original = CanonicalEvent::new(&base_fields).unwrap().hash(&base_links);

            let mutate_str = |s: &str| -> String {
                let mut bytes = s.as_bytes().to_vec();
                let at = byte.index(bytes.len());
                // Stay in ASCII (and away from NUL) so the string remains valid.
                bytes[at] = if bytes[at] == b'a' { b'b' } else { (bytes[at] ^ flip).clamp(1, 127) };
                if bytes[at] == s.as_bytes()[at] { bytes[at] = if bytes[at] == 1 { 2 } else { 1 }; }
                String::from_utf8(bytes).unwrap()
            };
            let mutate_digest = |d: Digest32| { let mut d = d; d.0[byte.index(32)] ^= flip; d };
            let mutate_uuid = |u: Uuid| { let mut b = *u.as_bytes(); b[byte.index(16)] ^= flip; Uuid::from_bytes(b) };

            let (mut f, mut l) = (base_fields, base_links);
            let (s_type, s_id, s_etype, s_ever);
            let (new_payload, new_metadata);
            match field {
                0 => { s_id = mutate_str(f.aggregate_id); f.aggregate_id = &s_id; }
                1 => { s_type = mutate_str(f.aggregate_type); f.aggregate_type = &s_type; }
                2 => f.event_id = mutate_uuid(f.event_id),
                3 => { s_etype = mutate_str(f.event_type); f.event_type = &s_etype; }
                4 => { s_ever = mutate_str(f.event_version); f.event_version = &s_ever; }
                5 => l.global_position ^= i64::from(flip),
                6 => { new_metadata = json!({"actor_id": mutate_str("user-7")}); f.metadata = &new_metadata; }
                7 => { new_payload = json!({"amount": 1250 ^ i64::from(flip), "currency": "NGN"}); f.payload = &new_payload; }
                8 => l.prev_hash = mutate_digest(l.prev_hash),
                9 => l.recorded_at += chrono::Duration::microseconds(i64::from(flip)),
                10 => f.sequence ^= i64::from(flip) | 1,
                11 => f.tenant_id = f.tenant_id.map(mutate_uuid),
                _ => l.tenant_prev_hash = mutate_digest(l.tenant_prev_hash),
            }
            prop_assume!(f.sequence >= 1);
            let changed = CanonicalEvent::new(&f).unwrap().hash(&l);
            prop_assert_ne!(changed, original, "field {} did not change the hash", field);
        }
    }
}
