//! Recovery codes for multi-factor sign-in: makes a set of one-time codes for a user to keep
//! for the day their authenticator is lost, and turns a typed code into the hash stored for
//! it.
//!
//! A code is 80 random bits written as 16 characters of lowercase Crockford base32 in four
//! groups (`abcd-efgh-jkmn-pqrs`); the letters i, l, o and u are never used, and when typed
//! `i` and `l` are read as `1` and `o` as `0`. Only the SHA-256 of the normalized code
//! ([`SecretHash`]) is stored. That each code is used only once is enforced by the domain,
//! which records the hashes already used; this module only makes and checks codes.

use std::fmt;

use domain::identity::credentials::SecretHash;
use sha2::{Digest, Sha256};

/// The number of codes in a set.
pub const COUNT: usize = 10;
/// The number of characters of a code, not counting hyphens.
pub const LENGTH: usize = 16;

/// Crockford's base32 alphabet, lowercase: the digits and the letters except i, l, o, u.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Characters per group in the formatted code.
const GROUP: usize = 4;
/// Random bytes per code (80 bits, 16 base32 characters).
const RANDOM_BYTES: usize = LENGTH * 5 / 8;

/// A recovery code as shown to the user once, e.g. `abcd-efgh-jkmn-pqrs`.
///
/// Its `Debug` output does not show the code.
#[derive(Clone)]
pub struct RecoveryCode(String);

/// Text that is not a recovery code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryCodeError {
    /// A character is neither a digit, a letter of the code's alphabet, a space nor a hyphen.
    #[error(
        "a recovery code has only digits and the letters a to z except u (with hyphens or spaces between groups); character {position} is not one of them"
    )]
    InvalidCharacter {
        /// The 1-based position of the character in the text as typed.
        position: usize,
    },
    /// The text has the wrong number of digits and letters.
    #[error(
        "a recovery code has {LENGTH} letters and digits (not counting hyphens and spaces), this one has {actual}"
    )]
    WrongLength {
        /// The number of letters and digits found.
        actual: usize,
    },
}

impl RecoveryCode {
    /// The formatted code, to show to the user.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode(..)")
    }
}

/// A new set of [`COUNT`] distinct codes, each with the hash to store for it.
pub fn generate() -> Result<Vec<(RecoveryCode, SecretHash)>, getrandom::Error> {
    let mut codes: Vec<(RecoveryCode, SecretHash)> = Vec::with_capacity(COUNT);
    while codes.len() < COUNT {
        let mut bytes = [0u8; RANDOM_BYTES];
        getrandom::fill(&mut bytes)?;
        let normalized = encode(&bytes);
        let hash = hash_normalized(&normalized);
        // 80-bit codes never collide in practice; a set must still never hold one twice.
        if codes.iter().any(|(_, existing)| *existing == hash) {
            continue;
        }
        codes.push((RecoveryCode(format_groups(&normalized)), hash));
    }
    Ok(codes)
}

/// The canonical form of a typed code: lowercase, without spaces and hyphens, with `i` and
/// `l` read as `1` and `o` as `0`; 16 characters of the code's alphabet.
pub fn normalize(input: &str) -> Result<String, RecoveryCodeError> {
    let mut out = String::with_capacity(LENGTH);
    for (index, c) in input.trim().chars().enumerate() {
        let c = match c.to_ascii_lowercase() {
            c if c.is_whitespace() || c == '-' => continue,
            'i' | 'l' => '1',
            'o' => '0',
            c if c.is_ascii() && ALPHABET.contains(&(c as u8)) => c,
            _ => {
                return Err(RecoveryCodeError::InvalidCharacter {
                    position: index + 1 + leading_trimmed(input),
                });
            }
        };
        out.push(c);
    }
    if out.len() != LENGTH {
        return Err(RecoveryCodeError::WrongLength { actual: out.len() });
    }
    Ok(out)
}

/// The hash stored for a code: SHA-256 of its [normalized](normalize) form.
pub fn hash(input: &str) -> Result<SecretHash, RecoveryCodeError> {
    normalize(input).map(|normalized| hash_normalized(&normalized))
}

fn hash_normalized(normalized: &str) -> SecretHash {
    SecretHash::from_bytes(Sha256::digest(normalized.as_bytes()).into())
}

/// The number of characters `trim` removes from the start of `input`.
fn leading_trimmed(input: &str) -> usize {
    input.chars().take_while(|c| c.is_whitespace()).count()
}

/// Base32 (Crockford alphabet) of the random bytes: 5 bits per character.
fn encode(bytes: &[u8; RANDOM_BYTES]) -> String {
    let mut out = String::with_capacity(LENGTH);
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 0x1f) as usize]));
        }
        buffer &= (1 << bits) - 1;
    }
    out
}

/// `abcdefghjkmnpqrs` → `abcd-efgh-jkmn-pqrs`.
fn format_groups(normalized: &str) -> String {
    let mut out = String::with_capacity(LENGTH + LENGTH / GROUP);
    for (index, c) in normalized.chars().enumerate() {
        if index > 0 && index % GROUP == 0 {
            out.push('-');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn generates_count_distinct_well_formed_codes() {
        let codes = generate().unwrap();
        assert_eq!(codes.len(), COUNT);
        let texts: HashSet<&str> = codes.iter().map(|(code, _)| code.as_str()).collect();
        assert_eq!(texts.len(), COUNT);
        let hashes: HashSet<SecretHash> = codes.iter().map(|(_, hash)| *hash).collect();
        assert_eq!(hashes.len(), COUNT);
        for (code, _) in &codes {
            let text = code.as_str();
            assert_eq!(text.len(), LENGTH + 3, "{text}");
            let groups: Vec<&str> = text.split('-').collect();
            assert_eq!(groups.len(), 4, "{text}");
            for group in groups {
                assert_eq!(group.len(), GROUP);
                assert!(group.bytes().all(|b| ALPHABET.contains(&b)), "{text}");
            }
            for confusable in ['i', 'l', 'o', 'u'] {
                assert!(!text.contains(confusable), "{text}");
            }
        }
    }

    #[test]
    fn generated_codes_hash_like_typed_codes() {
        for (code, stored) in generate().unwrap() {
            let text = code.as_str();
            assert_eq!(hash(text).unwrap(), stored, "as shown");
            assert_eq!(hash(&text.to_uppercase()).unwrap(), stored, "uppercased");
            assert_eq!(hash(&text.replace('-', "")).unwrap(), stored, "no hyphens");
            assert_eq!(hash(&text.replace('-', " ")).unwrap(), stored, "spaces");
            assert_eq!(
                hash(&format!("  {}\n", text.replace('-', " - "))).unwrap(),
                stored,
                "padded"
            );
        }
    }

    #[test]
    fn hash_is_sha256_of_the_normalized_code() {
        let expected = SecretHash::from_bytes(Sha256::digest(b"0123456789abcdef").into());
        assert_eq!(hash("0123-4567-89ab-cdef").unwrap(), expected);
    }

    #[test]
    fn confusable_characters_are_read_per_crockford() {
        assert_eq!(
            normalize("OIL0-1234-5678-9abc").unwrap(),
            "0110123456789abc"
        );
        assert_eq!(
            hash("oil0-1234-5678-9abc").unwrap(),
            hash("0110-1234-5678-9abc").unwrap()
        );
    }

    #[test]
    fn bad_input_errors() {
        assert_eq!(
            normalize("abcd-efgh-jkmn-pqr"),
            Err(RecoveryCodeError::WrongLength { actual: 15 })
        );
        assert_eq!(
            normalize("abcd-efgh-jkmn-pqrst"),
            Err(RecoveryCodeError::WrongLength { actual: 17 })
        );
        assert_eq!(
            normalize(""),
            Err(RecoveryCodeError::WrongLength { actual: 0 })
        );
        assert_eq!(
            normalize(" - -"),
            Err(RecoveryCodeError::WrongLength { actual: 0 })
        );
        assert_eq!(
            normalize("abcd-efgh-jkmn-pqru"),
            Err(RecoveryCodeError::InvalidCharacter { position: 19 })
        );
        assert_eq!(
            normalize("  abcd_efgh-jkmn-pqrs"),
            Err(RecoveryCodeError::InvalidCharacter { position: 7 })
        );
        assert_eq!(
            normalize("abcd-efgh-jkmn-pqré"),
            Err(RecoveryCodeError::InvalidCharacter { position: 19 })
        );
        assert!(hash("abcd-efgh-jkmn-pqr!").is_err());
        let message = normalize("abc").unwrap_err().to_string();
        assert!(message.contains("16 letters and digits"), "{message}");
    }

    #[test]
    fn debug_does_not_print_the_code() {
        let (code, _) = generate().unwrap().remove(0);
        let debug = format!("{code:?}");
        assert!(!debug.contains(code.as_str()));
        assert!(!debug.contains(&code.as_str()[..4]));
    }
}
