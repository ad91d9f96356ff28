//! What the log may hold of a credential: never the secret, only a hash of it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A password hash as a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
///
/// The domain never sees a password; it stores and compares this value only by handing it
/// back to the hasher.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PasswordHash(String);

/// A value that is not a PHC string of an Argon2id hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an Argon2id PHC string: {0}")]
pub struct NotAPasswordHash(&'static str);

impl PasswordHash {
    /// Accepts an Argon2id PHC string: `$argon2id$`, then `$`-separated fields with no
    /// whitespace.
    pub fn parse(phc: impl Into<String>) -> Result<Self, NotAPasswordHash> {
        let phc = phc.into();
        if !phc.starts_with("$argon2id$") {
            return Err(NotAPasswordHash("it does not start with `$argon2id$`"));
        }
        if phc.split('$').count() != 6 {
            return Err(NotAPasswordHash(
                "it needs six `$`-separated fields (algorithm, version, parameters, salt, hash)",
            ));
        }
        if phc.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(NotAPasswordHash("it contains whitespace"));
        }
        Ok(Self(phc))
    }

    /// The PHC string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PasswordHash {
    type Error = NotAPasswordHash;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<PasswordHash> for String {
    fn from(hash: PasswordHash) -> Self {
        hash.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The salt and hash are not secret, but there is no reason to spread them in logs.
        f.write_str("PasswordHash(argon2id, ..)")
    }
}

/// The SHA-256 digest of a high-entropy secret (an API key, a refresh token, a recovery
/// code, an email verification token). Such secrets are too random to guess, so a fast hash
/// is enough; it lets the secret be found by its hash. Serialized as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretHash([u8; 32]);

/// A value that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a secret hash is 64 hex digits")]
pub struct NotASecretHash;

impl SecretHash {
    /// Wraps a digest.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({self})")
    }
}

impl TryFrom<String> for SecretHash {
    type Error = NotASecretHash;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let bytes = value.as_bytes();
        if bytes.len() != 64 {
            return Err(NotASecretHash);
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| NotASecretHash)?;
            if text.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(NotASecretHash);
            }
            out[i] = u8::from_str_radix(text, 16).map_err(|_| NotASecretHash)?;
        }
        Ok(Self(out))
    }
}

impl From<SecretHash> for String {
    fn from(hash: SecretHash) -> Self {
        hash.to_string()
    }
}

/// A secret the platform must read back later (a TOTP secret), sealed with the platform's
/// configured secrets key by the `commands` crate. Opaque here.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SealedSecret(String);

impl SealedSecret {
    /// Wraps a sealed text.
    pub fn from_sealed(sealed: String) -> Self {
        Self(sealed)
    }

    /// The sealed text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealedSecret(..)")
    }
}
