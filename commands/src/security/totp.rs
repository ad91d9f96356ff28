//! Time-based one-time passwords (RFC 6238) for multi-factor sign-in: makes TOTP secrets,
//! shows them to authenticator apps (base32, `otpauth://` URIs) and checks the codes they
//! produce.
//!
//! The parameters are the ones every authenticator app supports: HMAC-SHA-1, 6 digits,
//! 30-second steps, and a tolerance of one step either side for clock drift. A code is
//! accepted at most once: [`verify`] returns the step it matched, the caller records it, and
//! passes it back as `last_used_step` next time, so that neither the same code nor an older
//! one is accepted again.

use std::fmt;

use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use totp_rs::{Algorithm, TOTP};

/// The number of digits of a code.
pub const DIGITS: u32 = 6;
/// The length of a step, in seconds.
pub const STEP_SECONDS: u64 = 30;
/// The length of a secret, in bytes (160 bits, the size RFC 4226 recommends).
pub const SECRET_LEN: usize = 20;

/// The RFC 4648 base32 alphabet.
const BASE32_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// Hex digits for percent-encoding.
const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
/// The number of base32 characters of a secret (160 bits / 5 bits).
const SECRET_BASE32_LEN: usize = SECRET_LEN * 8 / 5;

/// A TOTP secret shared with the user's authenticator app: 160 random bits.
///
/// Its `Debug` output does not show the secret.
#[derive(Clone)]
pub struct TotpSecret([u8; SECRET_LEN]);

/// A value that is not the base32 text of a TOTP secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TotpError {
    /// The text does not have the number of base32 characters of a 160-bit secret.
    #[error(
        "a TOTP secret in base32 has {SECRET_BASE32_LEN} characters (not counting spaces and `=`), this one has {actual}"
    )]
    WrongLength {
        /// The number of base32 characters found.
        actual: usize,
    },
    /// A character is not in the base32 alphabet.
    #[error(
        "a TOTP secret in base32 has only the letters A to Z and the digits 2 to 7; character {position} is not one of them"
    )]
    InvalidCharacter {
        /// The 1-based position of the character in the text.
        position: usize,
    },
}

/// Why a code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TotpRejected {
    /// The code is not 6 digits.
    #[error("a one-time code is 6 digits")]
    Malformed,
    /// The code matches a step already used, or older than one already used.
    #[error("this one-time code was already used: wait for the next one")]
    AlreadyUsed,
    /// The code matches none of the accepted steps.
    #[error("the one-time code is wrong or has expired")]
    Wrong,
}

impl TotpSecret {
    /// A new random secret from the operating system's generator.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; SECRET_LEN];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// Wraps stored secret bytes.
    pub const fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// The secret bytes (to seal them for storage).
    pub const fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// The secret as RFC 4648 base32 without padding (32 characters), the form
    /// authenticator apps accept when the user types the secret in.
    pub fn to_base32(&self) -> String {
        base32_encode(&self.0)
    }

    /// Reads a secret written in base32. Case is ignored, and so are whitespace (apps often
    /// show the secret in groups) and trailing `=` padding.
    pub fn from_base32(text: &str) -> Result<Self, TotpError> {
        let mut values = Vec::with_capacity(SECRET_BASE32_LEN);
        let body = text.trim().trim_end_matches('=');
        for (index, c) in body.chars().enumerate() {
            if c.is_whitespace() {
                continue;
            }
            let value = base32_value(c).ok_or(TotpError::InvalidCharacter {
                position: index + 1,
            })?;
            values.push(value);
        }
        if values.len() != SECRET_BASE32_LEN {
            return Err(TotpError::WrongLength {
                actual: values.len(),
            });
        }
        let mut bytes = [0u8; SECRET_LEN];
        let mut buffer: u64 = 0;
        let mut bits = 0u32;
        let mut out = 0usize;
        for value in values {
            buffer = (buffer << 5) | u64::from(value);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                bytes[out] = (buffer >> bits) as u8;
                out += 1;
                buffer &= (1 << bits) - 1;
            }
        }
        Ok(Self(bytes))
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(..)")
    }
}

/// The step (30-second window since the Unix epoch) that contains `unix_seconds`.
pub const fn step_at(unix_seconds: u64) -> u64 {
    unix_seconds / STEP_SECONDS
}

/// The 6-digit code of `secret` at `step`.
pub fn code_at_step(secret: &TotpSecret, step: u64) -> u32 {
    code_with_digits(&secret.0, step, DIGITS)
}

/// Checks a code the user typed against the steps just before, at and just after
/// `unix_seconds`, and returns the step it matched.
///
/// The code is trimmed and must then be exactly 6 ASCII digits. A step at or before
/// `last_used_step` is refused, so a code is accepted at most once and an older code is
/// refused once a newer one was used. The candidates are all computed and compared in
/// constant time; when a code matches more than one step, the latest is returned.
pub fn verify(
    secret: &TotpSecret,
    code: &str,
    unix_seconds: u64,
    last_used_step: Option<u64>,
) -> Result<u64, TotpRejected> {
    let given = parse_code(code).ok_or(TotpRejected::Malformed)?;
    let now = step_at(unix_seconds);
    let mut matched = Choice::from(0);
    let mut matched_step = 0u64;
    for candidate in [now.checked_sub(1), Some(now), now.checked_add(1)]
        .into_iter()
        .flatten()
    {
        let hit = code_at_step(secret, candidate).ct_eq(&given);
        matched |= hit;
        // Candidates come in increasing order, so the last hit is the latest step.
        matched_step = u64::conditional_select(&matched_step, &candidate, hit);
    }
    if !bool::from(matched) {
        return Err(TotpRejected::Wrong);
    }
    match last_used_step {
        Some(last) if matched_step <= last => Err(TotpRejected::AlreadyUsed),
        _ => Ok(matched_step),
    }
}

/// The `otpauth://` URI authenticator apps read from a QR code (Google Authenticator's key
/// URI format), with the issuer and account percent-encoded.
pub fn otpauth_uri(secret: &TotpSecret, issuer: &str, account: &str) -> String {
    let issuer = percent_encode(issuer);
    let account = percent_encode(account);
    format!(
        "otpauth://totp/{issuer}:{account}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
        secret.to_base32()
    )
}

/// The HOTP value (RFC 4226: HMAC-SHA-1 and dynamic truncation) of `step` with `digits`
/// digits (at most 9).
fn code_with_digits(secret_bytes: &[u8], step: u64, digits: u32) -> u32 {
    // With a step length of one second, totp-rs signs `step` itself as the counter.
    let mac = TOTP::new_unchecked(
        Algorithm::SHA1,
        digits as usize,
        0,
        1,
        secret_bytes.to_vec(),
    )
    .sign(step);
    let offset = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
    let mut word = [0u8; 4];
    if let Some(window) = mac.get(offset..offset + 4) {
        word.copy_from_slice(window);
    }
    let truncated = u32::from_be_bytes(word) & 0x7fff_ffff;
    truncated % 10u32.pow(digits)
}

/// The value of a code: trimmed, then exactly 6 ASCII digits.
fn parse_code(code: &str) -> Option<u32> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        code.bytes()
            .fold(0u32, |value, b| value * 10 + u32::from(b - b'0')),
    )
}

/// RFC 4648 base32 without padding.
fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(
                BASE32_ALPHABET[((buffer >> bits) & 0x1f) as usize],
            ));
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(
            BASE32_ALPHABET[((buffer << (5 - bits)) & 0x1f) as usize],
        ));
    }
    out
}

/// The 5-bit value of a base32 character, either case.
fn base32_value(c: char) -> Option<u8> {
    match c {
        'A'..='Z' => Some(c as u8 - b'A'),
        'a'..='z' => Some(c as u8 - b'a'),
        '2'..='7' => Some(c as u8 - b'2' + 26),
        _ => None,
    }
}

/// Percent-encodes every byte of the UTF-8 text outside RFC 3986's unreserved set.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(byte >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(byte & 0x0f)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RFC_SECRET: &[u8; 20] = b"12345678901234567890";

    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(*RFC_SECRET)
    }

    /// RFC 6238 Appendix B, SHA-1 rows: (time, 8-digit code).
    const RFC_VECTORS: [(u64, u32); 6] = [
        (59, 94_287_082),
        (1_111_111_109, 7_081_804),
        (1_111_111_111, 14_050_471),
        (1_234_567_890, 89_005_924),
        (2_000_000_000, 69_279_037),
        (20_000_000_000, 65_353_130),
    ];

    fn code_string(secret: &TotpSecret, step: u64) -> String {
        format!("{:06}", code_at_step(secret, step))
    }

    #[test]
    fn rfc6238_sha1_vectors_with_8_digits() {
        for (time, expected) in RFC_VECTORS {
            assert_eq!(
                code_with_digits(RFC_SECRET, step_at(time), 8),
                expected,
                "T = {time}"
            );
        }
    }

    #[test]
    fn six_digit_codes_are_the_last_six_digits_of_the_rfc_vectors() {
        for (time, expected) in RFC_VECTORS {
            assert_eq!(
                code_at_step(&rfc_secret(), step_at(time)),
                expected % 1_000_000,
                "T = {time}"
            );
        }
    }

    #[test]
    fn accepts_previous_current_and_next_step() {
        let secret = rfc_secret();
        let now = 1_111_111_111;
        let step = step_at(now);
        for candidate in [step - 1, step, step + 1] {
            assert_eq!(
                verify(&secret, &code_string(&secret, candidate), now, None),
                Ok(candidate)
            );
        }
    }

    #[test]
    fn accepts_surrounding_whitespace() {
        let secret = rfc_secret();
        let now = 1_234_567_890;
        let code = format!("  {}\n", code_string(&secret, step_at(now)));
        assert_eq!(verify(&secret, &code, now, None), Ok(step_at(now)));
    }

    #[test]
    fn refuses_codes_two_steps_away() {
        let secret = rfc_secret();
        let now = 1_111_111_111;
        let step = step_at(now);
        for candidate in [step - 2, step + 2] {
            let code = code_string(&secret, candidate);
            // Skip the (one in a million) case where the code also matches an accepted step.
            if (step - 1..=step + 1).any(|s| code_string(&secret, s) == code) {
                continue;
            }
            assert_eq!(verify(&secret, &code, now, None), Err(TotpRejected::Wrong));
        }
    }

    #[test]
    fn refuses_a_wrong_code() {
        let secret = rfc_secret();
        let now = 2_000_000_000;
        let step = step_at(now);
        let wrong = (0..1_000_000u32)
            .map(|c| format!("{c:06}"))
            .find(|c| (step - 1..=step + 1).all(|s| &code_string(&secret, s) != c))
            .unwrap();
        assert_eq!(verify(&secret, &wrong, now, None), Err(TotpRejected::Wrong));
    }

    #[test]
    fn refuses_a_reused_code() {
        let secret = rfc_secret();
        let now = 1_111_111_111;
        let code = code_string(&secret, step_at(now));
        let used = verify(&secret, &code, now, None).unwrap();
        assert_eq!(
            verify(&secret, &code, now, Some(used)),
            Err(TotpRejected::AlreadyUsed)
        );
        // Still refused a step later, while the code is within the tolerance window.
        assert_eq!(
            verify(&secret, &code, now + STEP_SECONDS, Some(used)),
            Err(TotpRejected::AlreadyUsed)
        );
    }

    #[test]
    fn refuses_an_older_step_after_a_newer_one() {
        let secret = rfc_secret();
        let now = 1_234_567_890;
        let step = step_at(now);
        let newer = verify(&secret, &code_string(&secret, step + 1), now, None).unwrap();
        assert_eq!(newer, step + 1);
        for older in [step - 1, step] {
            assert_eq!(
                verify(&secret, &code_string(&secret, older), now, Some(newer)),
                Err(TotpRejected::AlreadyUsed)
            );
        }
        // The next step's code is accepted once it is newer than the last used one.
        let later = now + 2 * STEP_SECONDS;
        assert_eq!(
            verify(&secret, &code_string(&secret, step + 2), later, Some(newer)),
            Ok(step + 2)
        );
    }

    #[test]
    fn refuses_malformed_codes() {
        let secret = rfc_secret();
        for code in [
            "12345",
            "1234567",
            "12a456",
            "",
            "123 456",
            "１２３４５６",
            "+12345",
        ] {
            assert_eq!(
                verify(&secret, code, 59, None),
                Err(TotpRejected::Malformed),
                "{code:?}"
            );
        }
    }

    #[test]
    fn works_at_the_epoch() {
        let secret = rfc_secret();
        assert_eq!(verify(&secret, &code_string(&secret, 0), 0, None), Ok(0));
    }

    #[test]
    fn base32_of_the_rfc_secret() {
        assert_eq!(rfc_secret().to_base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let read = TotpSecret::from_base32("gezd gnbv gy3t qojq gezd gnbv gy3t qojq").unwrap();
        assert_eq!(read.as_bytes(), RFC_SECRET);
    }

    #[test]
    fn base32_errors() {
        assert_eq!(
            TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJ").err(),
            Some(TotpError::WrongLength { actual: 31 })
        );
        assert_eq!(
            TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJ1").err(),
            Some(TotpError::InvalidCharacter { position: 32 })
        );
    }

    #[test]
    fn generated_secrets_differ() {
        let a = TotpSecret::generate().unwrap();
        let b = TotpSecret::generate().unwrap();
        assert_ne!(a.as_bytes(), b.as_bytes());
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let secret = rfc_secret();
        let debug = format!("{secret:?}");
        assert!(!debug.contains("GEZDGNBV"));
        assert!(!debug.contains("1234567890"));
    }

    #[test]
    fn otpauth_uri_percent_encodes_issuer_and_account() {
        let uri = otpauth_uri(&rfc_secret(), "Acme Corp", "ada:lovelace@example.com");
        assert_eq!(
            uri,
            "otpauth://totp/Acme%20Corp:ada%3Alovelace%40example.com\
             ?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Acme%20Corp\
             &algorithm=SHA1&digits=6&period=30"
        );
    }

    proptest! {
        #[test]
        fn base32_round_trip(bytes in any::<[u8; 20]>()) {
            let secret = TotpSecret::from_bytes(bytes);
            let text = secret.to_base32();
            prop_assert_eq!(text.len(), 32);
            prop_assert_eq!(*TotpSecret::from_base32(&text).unwrap().as_bytes(), bytes);
            let lower = text.to_lowercase();
            prop_assert_eq!(*TotpSecret::from_base32(&lower).unwrap().as_bytes(), bytes);
        }
    }
}
