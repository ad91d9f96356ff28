//! The audit signing key and its public half.
//!
//! The private key is Ed25519 in PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes
//! it. It comes from a file or an environment variable of the signing process and never
//! reaches the database: only its public half is stored (`audit_keys`), published
//! (`/audit/public-key`) and exported. A key id is the first 16 hex characters of SHA-256
//! of the raw public key (docs/audit.md section 2).

use std::fmt;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// The only algorithm of audit keys.
pub const ALGORITHM: &str = "Ed25519";

/// Why a key could not be read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not a PKCS#8 PEM Ed25519 private key.
    #[error("not an Ed25519 private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`): {0}")]
    NotAPrivateKey(String),
    /// The text is not a public key as docs/audit.md section 2 writes it.
    #[error("not an audit public key: {0}")]
    NotAPublicKey(String),
    /// The system's random source failed while making a key.
    #[error("the system's random source failed")]
    Random,
}

/// The private signing key. Its `Debug` shows the key id only.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public.kid)
    }
}

impl SigningKey {
    /// Reads a PKCS#8 PEM private key (v1, as OpenSSL writes it, or v2).
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let der = pem_body(text)?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|err| KeyError::NotAPrivateKey(err.to_string()))?;
        let public = PublicKey::from_raw(pair.public_key().as_ref())?;
        Ok(Self { pair, public })
    }

    /// Makes a new key, and returns it with its PKCS#8 PEM text.
    pub fn generate() -> Result<(Self, String), KeyError> {
        let document =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Random)?;
        let pem = to_pem(document.as_ref());
        Ok((Self::from_pem(&pem)?, pem))
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.public.kid
    }

    /// Signs `message`: 64 bytes of pure Ed25519 (RFC 8032).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0_u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

fn pem_body(text: &str) -> Result<Vec<u8>, KeyError> {
    let text = text.trim();
    let inner = text
        .strip_prefix(PEM_BEGIN)
        .and_then(|rest| rest.strip_suffix(PEM_END))
        .ok_or_else(|| KeyError::NotAPrivateKey(format!("expected {PEM_BEGIN} … {PEM_END}")))?;
    let body: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|err| KeyError::NotAPrivateKey(format!("the PEM body is not base64: {err}")))
}

fn to_pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from(PEM_BEGIN);
    pem.push('\n');
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    pem
}

/// The key id of a raw 32-byte Ed25519 public key.
pub fn kid_of(raw: &[u8; 32]) -> String {
    let digest = Sha256::digest(raw);
    hex::encode(&digest[..8])
}

/// A public key as docs/audit.md section 2 writes it:
/// `{"kid": …, "algorithm": "Ed25519", "public_key": <64 hex>}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// The key id.
    pub kid: String,
    /// Always `Ed25519`.
    pub algorithm: String,
    /// The raw 32-byte key, in lower-case hex.
    pub public_key: String,
    #[serde(skip)]
    raw: [u8; 32],
}

impl PublicKey {
    /// A public key from its raw 32 bytes.
    pub fn from_raw(raw: &[u8]) -> Result<Self, KeyError> {
        let raw: [u8; 32] = raw.try_into().map_err(|_| {
            KeyError::NotAPublicKey(format!("an Ed25519 key has 32 bytes, not {}", raw.len()))
        })?;
        Ok(Self {
            kid: kid_of(&raw),
            algorithm: ALGORITHM.to_owned(),
            public_key: hex::encode(raw),
            raw,
        })
    }

    /// Checks a key read from JSON: the algorithm, the key's length, and that the key id
    /// is the one derived from the key.
    pub fn checked(self) -> Result<Self, KeyError> {
        if self.algorithm != ALGORITHM {
            return Err(KeyError::NotAPublicKey(format!(
                "algorithm is {:?}; audit keys are {ALGORITHM}",
                self.algorithm
            )));
        }
        let raw = hex::decode(&self.public_key).map_err(|err| {
            KeyError::NotAPublicKey(format!("public_key is not hexadecimal: {err}"))
        })?;
        let key = Self::from_raw(&raw)?;
        if key.kid != self.kid || key.public_key != self.public_key {
            return Err(KeyError::NotAPublicKey(format!(
                "kid {:?} is not derived from this public_key (it would be {:?})",
                self.kid, key.kid
            )));
        }
        Ok(key)
    }

    /// The raw 32 bytes.
    pub fn raw(&self) -> &[u8; 32] {
        &self.raw
    }

    /// Whether `signature` is this key's Ed25519 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(message, signature)
            .is_ok()
    }
}

/// Parses the `--public-key` forms of docs/audit.md section 5: one key object, or
/// `{"keys": [...]}` as `/audit/public-key` serves it. Every key is checked.
pub fn parse_public_keys(json: &str) -> Result<Vec<PublicKey>, KeyError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Set { keys: Vec<PublicKey> },
        One(PublicKey),
    }
    let form: Form = serde_json::from_str(json).map_err(|err| {
        KeyError::NotAPublicKey(format!(
            "expected {{\"kid\", \"algorithm\", \"public_key\"}} or {{\"keys\": [...]}}: {err}"
        ))
    })?;
    let keys = match form {
        Form::Set { keys } => keys,
        Form::One(key) => vec![key],
    };
    keys.into_iter().map(PublicKey::checked).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // `openssl genpkey -algorithm ed25519` output (PKCS#8 v1).
    const OPENSSL_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC
-----END PRIVATE KEY-----
";

    #[test]
    fn reads_an_openssl_key_and_derives_its_id_from_the_public_half() {
        let key = SigningKey::from_pem(OPENSSL_PEM).unwrap();
        let raw = *key.public().raw();
        assert_eq!(key.kid(), kid_of(&raw));
        assert_eq!(key.kid().len(), 16);
        let signature = key.sign(b"message");
        assert!(key.public().verifies(b"message", &signature));
        assert!(!key.public().verifies(b"messagf", &signature));
    }

    #[test]
    fn a_generated_key_round_trips_through_its_pem() {
        let (key, pem) = SigningKey::generate().unwrap();
        let again = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(key.public(), again.public());
    }

    #[test]
    fn refuses_text_that_is_not_a_private_key() {
        assert!(matches!(
            SigningKey::from_pem("hello"),
            Err(KeyError::NotAPrivateKey(_))
        ));
        let broken = OPENSSL_PEM.replace("MC4C", "MC4D");
        assert!(SigningKey::from_pem(&broken).is_err());
    }

    #[test]
    fn a_public_key_whose_id_is_not_its_own_is_refused() {
        let (key, _) = SigningKey::generate().unwrap();
        let mut json = serde_json::to_value(key.public()).unwrap();
        json["kid"] = "0000000000000000".into();
        let err = parse_public_keys(&json.to_string()).unwrap_err();
        assert!(err.to_string().contains("not derived"), "{err}");
        let set = serde_json::json!({ "keys": [key.public()] }).to_string();
        assert_eq!(parse_public_keys(&set).unwrap(), vec![key.public().clone()]);
    }
}
