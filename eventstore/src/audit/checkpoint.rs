//! Signed checkpoints: an Ed25519 signature over (position, head hash, tenant heads root,
//! time), with a key the database never sees (docs/audit.md section 2).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::canonical::{Digest32, format_recorded_at};

use super::key::{PublicKey, SigningKey};

/// The `spec` member of every signed message.
pub const CHECKPOINT_SPEC: &str = "platform-audit-checkpoint/1";

/// One signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The global position it signs.
    pub position: i64,
    /// The hash of the event at `position`.
    pub head_hash: Digest32,
    /// The root of the tenant heads tree at `position` (docs/audit.md section 3).
    pub tenants_root: Digest32,
    /// When it was signed, at microsecond precision.
    pub signed_at: DateTime<Utc>,
    /// The signing key's id.
    pub kid: String,
    /// The Ed25519 signature of [`Checkpoint::message`].
    pub signature: [u8; 64],
}

/// The bytes a checkpoint's signature covers: the JCS encoding of its six signed members.
/// Every member is ASCII without characters JCS escapes (hex, digits, a fixed-format time,
/// a key id checked to be hex), so the encoding is written directly.
pub fn signed_message(
    position: i64,
    head_hash: &Digest32,
    tenants_root: &Digest32,
    signed_at: &DateTime<Utc>,
    kid: &str,
) -> Vec<u8> {
    let kid = serde_json::Value::String(kid.to_owned()).to_string();
    format!(
        "{{\"head_hash\":\"{head_hash}\",\"kid\":{kid},\"position\":{position},\"signed_at\":\"{}\",\"spec\":\"{CHECKPOINT_SPEC}\",\"tenants_root\":\"{tenants_root}\"}}",
        format_recorded_at(signed_at)
    )
    .into_bytes()
}

impl Checkpoint {
    /// Signs a checkpoint. `signed_at` is cut to microseconds first, the precision it is
    /// stored and exported with.
    pub fn sign(
        key: &SigningKey,
        position: i64,
        head_hash: Digest32,
        tenants_root: Digest32,
        signed_at: DateTime<Utc>,
    ) -> Self {
        let signed_at = to_micros(signed_at);
        let message = signed_message(position, &head_hash, &tenants_root, &signed_at, key.kid());
        Self {
            position,
            head_hash,
            tenants_root,
            signed_at,
            kid: key.kid().to_owned(),
            signature: key.sign(&message),
        }
    }

    /// The bytes the signature covers.
    pub fn message(&self) -> Vec<u8> {
        signed_message(
            self.position,
            &self.head_hash,
            &self.tenants_root,
            &self.signed_at,
            &self.kid,
        )
    }

    /// Whether `key` signed this checkpoint (and is the key its `kid` names).
    pub fn verifies_under(&self, key: &PublicKey) -> bool {
        key.kid == self.kid && key.verifies(&self.message(), &self.signature)
    }

    /// The checkpoint as an export item (docs/audit.md section 4).
    pub fn to_item(&self) -> CheckpointItem {
        CheckpointItem {
            kind: "checkpoint".to_owned(),
            position: self.position,
            head_hash: self.head_hash.to_hex(),
            tenants_root: self.tenants_root.to_hex(),
            signed_at: format_recorded_at(&self.signed_at),
            kid: self.kid.clone(),
            signature: hex::encode(self.signature),
        }
    }
}

/// Cuts a time to whole microseconds.
pub fn to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

/// A checkpoint as JSON: a line of an export or of a witness file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointItem {
    /// Always `checkpoint`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The position signed.
    pub position: i64,
    /// The head hash, hex.
    pub head_hash: String,
    /// The tenant heads root, hex.
    pub tenants_root: String,
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    pub signed_at: String,
    /// The key id.
    pub kid: String,
    /// The signature, hex.
    pub signature: String,
}

/// Why an item does not hold a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("checkpoint member {member}: {problem}")]
pub struct ItemError {
    /// The member at fault.
    pub member: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl TryFrom<&CheckpointItem> for Checkpoint {
    type Error = ItemError;

    fn try_from(item: &CheckpointItem) -> Result<Self, ItemError> {
        let digest = |member: &'static str, text: &str| {
            hex::decode(text)
                .ok()
                .and_then(|bytes| Digest32::from_slice(&bytes))
                .ok_or_else(|| ItemError {
                    member,
                    problem: "is not 64 hexadecimal characters".to_owned(),
                })
        };
        let signature = hex::decode(&item.signature)
            .ok()
            .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
            .ok_or_else(|| ItemError {
                member: "signature",
                problem: "is not 128 hexadecimal characters".to_owned(),
            })?;
        let signed_at = DateTime::parse_from_rfc3339(&item.signed_at)
            .ok()
            .map(|at| at.with_timezone(&Utc))
            .filter(|at| format_recorded_at(at) == item.signed_at)
            .ok_or_else(|| ItemError {
                member: "signed_at",
                problem: "is not a UTC time written YYYY-MM-DDTHH:MM:SS.ffffffZ".to_owned(),
            })?;
        Ok(Self {
            position: item.position,
            head_hash: digest("head_hash", &item.head_hash)?,
            tenants_root: digest("tenants_root", &item.tenants_root)?,
            signed_at,
            kid: item.kid.clone(),
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_message_is_the_jcs_encoding_of_the_six_members() {
        let at = DateTime::parse_from_rfc3339("2026-12-01T08:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let message = signed_message(
            42,
            &Digest32([0xab; 32]),
            &Digest32([0x01; 32]),
            &at,
            "00112233aabbccdd",
        );
        let value: serde_json::Value = serde_json::from_slice(&message).unwrap();
        let jcs = serde_json_canonicalizer::to_string(&value).unwrap();
        assert_eq!(String::from_utf8(message).unwrap(), jcs);
        assert_eq!(value["spec"], CHECKPOINT_SPEC);
        assert_eq!(value.as_object().unwrap().len(), 6);
    }

    #[test]
    fn a_checkpoint_survives_its_item_form_and_detects_any_change() {
        let (key, _) = SigningKey::generate().unwrap();
        let checkpoint =
            Checkpoint::sign(&key, 7, Digest32([3; 32]), Digest32([4; 32]), Utc::now());
        assert!(checkpoint.verifies_under(key.public()));
        let item = checkpoint.to_item();
        let back = Checkpoint::try_from(&item).unwrap();
        assert_eq!(back, checkpoint);

        let mut moved = back.clone();
        moved.position = 8;
        assert!(!moved.verifies_under(key.public()));
        let (other, _) = SigningKey::generate().unwrap();
        assert!(!checkpoint.verifies_under(other.public()));
    }
}
