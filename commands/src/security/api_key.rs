//! API keys: makes them, checks their format, and gives the hash stored for them.
//!
//! A key is `pck_` ("platform core key"), 40 random base62 characters (about 238 bits), and
//! 6 base62 characters of a CRC-32 of everything before them, 50 characters in all. The
//! format follows GitHub's tokens: the prefix tells people and secret scanners what the
//! string is, and the checksum lets a scanner (or [`ApiKeySecret::parse`]) tell a key from a
//! random string, or a mistyped key, without asking the server. A scanner matches
//!
//! ```text
//! \bpck_[0-9A-Za-z]{46}\b
//! ```
//!
//! and verifies the last 6 characters: the CRC-32 (IEEE) of the first 44 characters, written
//! in base62 (`0-9A-Za-z`, most significant digit first) and padded with `0` to 6 characters.
//!
//! Only the SHA-256 of the whole key ([`SecretHash`]) is stored; the key is shown to its
//! creator once.

use std::fmt;

use domain::identity::credentials::SecretHash;
use sha2::{Digest, Sha256};

/// The prefix of every key.
pub const PREFIX: &str = "pck_";
/// The length of a key, prefix and checksum included.
pub const LENGTH: usize = PREFIX.len() + SECRET_CHARS + CHECKSUM_CHARS;
/// The number of characters shown when keys are listed ([`ApiKeySecret::display_prefix`]).
pub const DISPLAY_PREFIX_LEN: usize = 12;

/// Random base62 characters after the prefix.
const SECRET_CHARS: usize = 40;
/// Base62 characters of the checksum (62^6 > 2^32).
const CHECKSUM_CHARS: usize = 6;
/// The base62 digits, in order of value.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random bytes below this bound map uniformly onto base62 digits (4 × 62 = 248).
const UNBIASED_BOUND: u8 = 248;

/// An API key in full, as given to its creator or presented by a client.
///
/// Its `Debug` output does not show the key.
#[derive(Clone)]
pub struct ApiKeySecret(String);

/// Text that is not an API key, with the first problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiKeyFormatError {
    /// The text does not start with [`PREFIX`].
    #[error("an API key starts with `pck_`")]
    WrongPrefix,
    /// The text does not have [`LENGTH`] characters.
    #[error("an API key has {LENGTH} characters, this one has {actual}")]
    WrongLength {
        /// The number of characters found.
        actual: usize,
    },
    /// A character after the prefix is not a base62 digit.
    #[error(
        "an API key has only the letters A to Z, a to z and the digits 0 to 9 after `pck_`; character {position} is not one of them"
    )]
    InvalidCharacter {
        /// The 1-based position of the character in the key.
        position: usize,
    },
    /// The last 6 characters are not the checksum of the rest.
    #[error("an API key's checksum does not match: it was mistyped or is not a key")]
    ChecksumMismatch,
}

impl ApiKeySecret {
    /// A new random key, with the hash to store for it.
    pub fn generate() -> Result<(Self, SecretHash), getrandom::Error> {
        let mut body = String::with_capacity(LENGTH);
        body.push_str(PREFIX);
        let mut random = [0u8; 64];
        while body.len() < PREFIX.len() + SECRET_CHARS {
            getrandom::fill(&mut random)?;
            for &byte in &random {
                if body.len() == PREFIX.len() + SECRET_CHARS {
                    break;
                }
                // Rejection sampling keeps every character uniform over the 62 digits.
                if byte < UNBIASED_BOUND {
                    body.push(char::from(BASE62[usize::from(byte % 62)]));
                }
            }
        }
        let key = Self(with_checksum(body));
        let hash = key.hash();
        Ok((key, hash))
    }

    /// Reads a key a client presented. Surrounding whitespace is ignored; then the prefix,
    /// the length, the characters and the checksum are checked, in that order.
    pub fn parse(text: &str) -> Result<Self, ApiKeyFormatError> {
        let text = text.trim();
        if !text.starts_with(PREFIX) {
            return Err(ApiKeyFormatError::WrongPrefix);
        }
        let actual = text.chars().count();
        if actual != LENGTH {
            return Err(ApiKeyFormatError::WrongLength { actual });
        }
        if let Some(index) = text
            .chars()
            .skip(PREFIX.len())
            .position(|c| !c.is_ascii_alphanumeric())
        {
            return Err(ApiKeyFormatError::InvalidCharacter {
                position: PREFIX.len() + index + 1,
            });
        }
        // All ASCII from here on, so byte offsets are character offsets.
        let (body, checksum) = text.split_at(LENGTH - CHECKSUM_CHARS);
        if checksum_of(body) != checksum.as_bytes() {
            return Err(ApiKeyFormatError::ChecksumMismatch);
        }
        Ok(Self(text.to_owned()))
    }

    /// The hash stored for the key: SHA-256 of the whole key.
    pub fn hash(&self) -> SecretHash {
        SecretHash::from_bytes(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The key, to show it to its creator once.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 characters (`pck_` and 8 more), to tell keys apart in a list.
    pub fn display_prefix(&self) -> String {
        self.0.chars().take(DISPLAY_PREFIX_LEN).collect()
    }
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeySecret(..)")
    }
}

/// The key made of `body` (prefix and secret characters) and its checksum.
fn with_checksum(mut body: String) -> String {
    let checksum = checksum_of(&body);
    body.extend(checksum.iter().map(|&b| char::from(b)));
    body
}

/// CRC-32 of `body` in base62, fixed width, most significant digit first.
fn checksum_of(body: &str) -> [u8; CHECKSUM_CHARS] {
    let mut value = crc32fast::hash(body.as_bytes());
    let mut out = [BASE62[0]; CHECKSUM_CHARS];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key() -> ApiKeySecret {
        ApiKeySecret::generate().unwrap().0
    }

    #[test]
    fn generate_parse_round_trip() {
        for _ in 0..50 {
            let (key, hash) = ApiKeySecret::generate().unwrap();
            let text = key.as_str();
            assert_eq!(text.len(), LENGTH);
            assert_eq!(LENGTH, 50);
            assert!(text.starts_with(PREFIX));
            assert!(text[PREFIX.len()..].bytes().all(|b| BASE62.contains(&b)));
            let parsed = ApiKeySecret::parse(text).unwrap();
            assert_eq!(parsed.as_str(), text);
            assert_eq!(parsed.hash(), hash);
            let padded = ApiKeySecret::parse(&format!(" {text}\n")).unwrap();
            assert_eq!(padded.as_str(), text);
        }
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(key().as_str(), key().as_str());
    }

    #[test]
    fn hash_is_sha256_of_the_key() {
        let (key, hash) = ApiKeySecret::generate().unwrap();
        let expected = SecretHash::from_bytes(Sha256::digest(key.as_str().as_bytes()).into());
        assert_eq!(hash, expected);
        assert_eq!(key.hash(), expected);
    }

    #[test]
    fn checksum_is_crc32_in_base62() {
        let body = format!("{PREFIX}{}", "0".repeat(SECRET_CHARS));
        let mut value = u64::from(crc32fast::hash(body.as_bytes()));
        let mut digits = Vec::new();
        for _ in 0..CHECKSUM_CHARS {
            digits.push(BASE62[(value % 62) as usize]);
            value /= 62;
        }
        digits.reverse();
        assert_eq!(checksum_of(&body).to_vec(), digits);
        assert!(ApiKeySecret::parse(&with_checksum(body)).is_ok());
    }

    #[test]
    fn every_single_character_substitution_is_rejected() {
        let key = key();
        let original = key.as_str().as_bytes().to_vec();
        let mut checked = 0usize;
        for position in PREFIX.len()..LENGTH {
            for &replacement in BASE62.iter() {
                if replacement == original[position] {
                    continue;
                }
                let mut typo = original.clone();
                typo[position] = replacement;
                let typo = String::from_utf8(typo).unwrap();
                assert_eq!(
                    ApiKeySecret::parse(&typo).err(),
                    Some(ApiKeyFormatError::ChecksumMismatch),
                    "position {position}, {}",
                    char::from(replacement)
                );
                checked += 1;
            }
        }
        assert_eq!(checked, (LENGTH - PREFIX.len()) * 61);
    }

    #[test]
    fn adjacent_transpositions_are_rejected() {
        for _ in 0..20 {
            let key = key();
            let original = key.as_str().as_bytes();
            for position in PREFIX.len()..LENGTH - 1 {
                if original[position] == original[position + 1] {
                    continue;
                }
                let mut swapped = original.to_vec();
                swapped.swap(position, position + 1);
                let swapped = String::from_utf8(swapped).unwrap();
                assert_eq!(
                    ApiKeySecret::parse(&swapped).err(),
                    Some(ApiKeyFormatError::ChecksumMismatch),
                    "position {position}"
                );
            }
        }
    }

    #[test]
    fn wrong_prefix() {
        let key = key();
        let rest = &key.as_str()[PREFIX.len()..];
        for prefix in ["pcx_", "PCK_", "", "ghp_"] {
            assert_eq!(
                ApiKeySecret::parse(&format!("{prefix}{rest}")).err(),
                Some(ApiKeyFormatError::WrongPrefix)
            );
        }
        assert_eq!(
            ApiKeyFormatError::WrongPrefix.to_string(),
            "an API key starts with `pck_`"
        );
    }

    #[test]
    fn wrong_length() {
        let key = key();
        let short = &key.as_str()[..LENGTH - 1];
        let error = ApiKeySecret::parse(short).err();
        assert_eq!(error, Some(ApiKeyFormatError::WrongLength { actual: 49 }));
        assert_eq!(
            error.map(|e| e.to_string()).unwrap_or_default(),
            "an API key has 50 characters, this one has 49"
        );
        assert_eq!(
            ApiKeySecret::parse(&format!("{}A", key.as_str())).err(),
            Some(ApiKeyFormatError::WrongLength { actual: 51 })
        );
        assert_eq!(
            ApiKeySecret::parse(PREFIX).err(),
            Some(ApiKeyFormatError::WrongLength { actual: 4 })
        );
    }

    #[test]
    fn non_base62_character() {
        let key = key();
        for bad in ['_', '-', ' ', 'é', '+'] {
            let mut text: Vec<char> = key.as_str().chars().collect();
            text[10] = bad;
            let text: String = text.into_iter().collect();
            assert_eq!(
                ApiKeySecret::parse(&text).err(),
                Some(ApiKeyFormatError::InvalidCharacter { position: 11 }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn checksum_message() {
        assert_eq!(
            ApiKeyFormatError::ChecksumMismatch.to_string(),
            "an API key's checksum does not match: it was mistyped or is not a key"
        );
    }

    #[test]
    fn display_prefix_and_debug() {
        let key = key();
        assert_eq!(key.display_prefix(), &key.as_str()[..12]);
        assert!(key.display_prefix().starts_with(PREFIX));
        let debug = format!("{key:?}");
        assert!(!debug.contains(&key.as_str()[PREFIX.len()..PREFIX.len() + 8]));
        assert!(!debug.contains(PREFIX));
    }

    proptest! {
        #[test]
        fn random_substitution_is_rejected(
            secret in "[0-9A-Za-z]{40}",
            position in PREFIX.len()..LENGTH,
            replacement in 0usize..62,
        ) {
            let key = with_checksum(format!("{PREFIX}{secret}"));
            prop_assert!(ApiKeySecret::parse(&key).is_ok());
            let mut typo = key.clone().into_bytes();
            prop_assume!(typo[position] != BASE62[replacement]);
            typo[position] = BASE62[replacement];
            let typo = String::from_utf8(typo).unwrap();
            prop_assert_eq!(
                ApiKeySecret::parse(&typo).err(),
                Some(ApiKeyFormatError::ChecksumMismatch)
            );
        }
    }
}
