//! Personal data, sealed in one place: the data-key store, sealing and opening of
//! [`PersonalData`], and the keyed blind index that lets the platform look up an email
//! address it cannot read.
//!
//! Each data subject (a person) has a 256-bit data key of their own, kept by a
//! [`SubjectKeys`] store apart from the events. A personal field is sealed with
//! XChaCha20-Poly1305 under that key, with a fresh 192-bit random nonce and, as associated
//! data, the subject's id and the field's name, so a sealed value cannot be replayed as
//! another person's or another field's. Destroying the key (crypto-shredding) makes every
//! value sealed with it unreadable; [`open`] then answers [`Opened::Forgotten`].
//!
//! The sealed text is `base64url(version ‖ nonce ‖ ciphertext ‖ tag)` without padding,
//! version 1 being the only one. docs/identity.md specifies it.

use std::fmt;
use std::future::Future;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use domain::identity::values::{Email, EmailIndex, TenantId};
use domain::personal::{PersonalData, SubjectId};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// A 256-bit key. Its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; 32]);

impl DataKey {
    /// A fresh random key from the operating system.
    pub fn generate() -> Result<Self, PrivacyError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|_| PrivacyError::Random)?;
        Ok(Self(key))
    }

    /// Wraps key bytes (as read back from the key store).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key bytes, to be stored (wrapped) by a key store.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// Why sealing or opening failed (not a forgotten subject: that is [`Opened::Forgotten`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrivacyError {
    /// The operating system's random source failed.
    #[error("the operating system's random source failed")]
    Random,
    /// The sealed text is not base64url of a version 1 sealed value.
    #[error("sealed {field} of subject {subject} is malformed: {problem}")]
    Malformed {
        /// The field.
        field: String,
        /// Whose field.
        subject: SubjectId,
        /// What is wrong.
        problem: &'static str,
    },
    /// The ciphertext does not authenticate under the subject's key for this field: it was
    /// altered, or belongs to another subject or field.
    #[error("sealed {field} of subject {subject} does not authenticate")]
    Unauthentic {
        /// The field.
        field: String,
        /// Whose field.
        subject: SubjectId,
    },
    /// The key store failed.
    #[error("the data-key store failed: {0}")]
    Store(String),
    /// The subject's key was destroyed: nothing new can be sealed for them.
    #[error("data subject {0} was forgotten; nothing can be recorded for them")]
    Forgotten(SubjectId),
}

/// Where subjects' data keys are kept, apart from the events.
pub trait SubjectKeys: Send + Sync {
    /// The subject's key, created on first use. Fails with [`PrivacyError::Forgotten`] for
    /// a subject whose key was destroyed.
    fn key_for(
        &self,
        subject: SubjectId,
    ) -> impl Future<Output = Result<DataKey, PrivacyError>> + Send;

    /// The subject's key, or `None` if it was destroyed or never made.
    fn find(
        &self,
        subject: SubjectId,
    ) -> impl Future<Output = Result<Option<DataKey>, PrivacyError>> + Send;

    /// Destroys the subject's key for good. Returns whether there was a key to destroy.
    fn forget(&self, subject: SubjectId)
    -> impl Future<Output = Result<bool, PrivacyError>> + Send;
}

fn associated_data(subject: SubjectId, field: &str) -> Vec<u8> {
    format!("platform personal data v1\n{subject}\n{field}").into_bytes()
}

/// Seals `plaintext` as the personal field `field` of `subject`.
pub fn seal(
    key: &DataKey,
    subject: SubjectId,
    field: &str,
    plaintext: &str,
) -> Result<PersonalData, PrivacyError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|_| PrivacyError::Random)?;
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let aad = associated_data(subject, field);
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext.as_bytes(),
                aad: &aad,
            },
        )
        .map_err(|_| PrivacyError::Random)?;
    let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    sealed.push(VERSION);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    Ok(PersonalData::from_sealed(
        subject,
        URL_SAFE_NO_PAD.encode(sealed),
    ))
}

/// Seals the personal data of a request's metadata (its client IP and user agent) under
/// `subject`'s key, the person the command concerns. Missing or already sealed values are
/// left as they are. When `subject` was forgotten nothing can be sealed for them, so the
/// plain values are dropped: they never reach the log unsealed, and the command goes on to
/// its own decision (which, about a forgotten person, is a refusal).
pub async fn seal_request_metadata<K: SubjectKeys>(
    keys: &K,
    metadata: &mut crate::metadata::CommandMetadata,
    subject: SubjectId,
) -> Result<(), PrivacyError> {
    use crate::metadata::{CLIENT_IP, ClientIp, USER_AGENT, UserAgent};
    let ip = match &metadata.client_ip {
        Some(ClientIp::Plain(ip)) => Some(ip.to_string()),
        _ => None,
    };
    let agent = match &metadata.user_agent {
        Some(UserAgent::Plain(agent)) => Some(agent.clone()),
        _ => None,
    };
    if ip.is_none() && agent.is_none() {
        return Ok(());
    }
    let key = match keys.key_for(subject).await {
        Ok(key) => key,
        Err(PrivacyError::Forgotten(_)) => {
            if ip.is_some() {
                metadata.client_ip = None;
            }
            if agent.is_some() {
                metadata.user_agent = None;
            }
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    if let Some(ip) = ip {
        metadata.client_ip = Some(ClientIp::Sealed(seal(&key, subject, CLIENT_IP, &ip)?));
    }
    if let Some(agent) = agent {
        metadata.user_agent = Some(UserAgent::Sealed(seal(&key, subject, USER_AGENT, &agent)?));
    }
    Ok(())
}

/// Seals a secret the platform must read back (a TOTP secret) with the secrets key, bound to
/// `purpose` (for example `totp:<user id>`).
pub fn seal_secret(
    key: &DataKey,
    purpose: &str,
    secret: &[u8],
) -> Result<domain::identity::credentials::SealedSecret, PrivacyError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|_| PrivacyError::Random)?;
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let aad = format!("platform secret v1\n{purpose}");
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: secret,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| PrivacyError::Random)?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(domain::identity::credentials::SealedSecret::from_sealed(
        URL_SAFE_NO_PAD.encode(out),
    ))
}

/// Opens a secret sealed by [`seal_secret`] for the same `purpose`.
pub fn open_secret(
    key: &DataKey,
    purpose: &str,
    sealed: &domain::identity::credentials::SealedSecret,
) -> Result<Vec<u8>, PrivacyError> {
    let fail = |problem: &'static str| {
        PrivacyError::Store(format!("sealed secret for {purpose} {problem}"))
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(sealed.as_str())
        .map_err(|_| fail("is not unpadded base64url"))?;
    let Some((&version, rest)) = bytes.split_first() else {
        return Err(fail("is empty"));
    };
    if version != VERSION || rest.len() < NONCE_LEN + TAG_LEN {
        return Err(fail("has an unknown format"));
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let aad = format!("platform secret v1\n{purpose}");
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| fail("does not open with the configured secrets key"))
}

/// What opening a personal field gives.
#[derive(Clone, PartialEq, Eq)]
pub enum Opened {
    /// The plaintext.
    Plain(String),
    /// The subject was forgotten: the field is gone for good, and shown as redacted.
    Forgotten,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(_) => f.write_str("Plain(..)"),
            Self::Forgotten => f.write_str("Forgotten"),
        }
    }
}

/// Opens the personal field `field` with its subject's key (`None`: the key was destroyed).
pub fn open(
    key: Option<&DataKey>,
    data: &PersonalData,
    field: &str,
) -> Result<Opened, PrivacyError> {
    let subject = data.subject();
    let malformed = |problem| PrivacyError::Malformed {
        field: field.to_owned(),
        subject,
        problem,
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(data.sealed())
        .map_err(|_| malformed("not unpadded base64url"))?;
    let Some((&version, rest)) = bytes.split_first() else {
        return Err(malformed("empty"));
    };
    if version != VERSION {
        return Err(malformed("unknown version"));
    }
    if rest.len() < NONCE_LEN + TAG_LEN {
        return Err(malformed("too short"));
    }
    let Some(key) = key else {
        return Ok(Opened::Forgotten);
    };
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let aad = associated_data(subject, field);
    let plaintext = cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| PrivacyError::Unauthentic {
            field: field.to_owned(),
            subject,
        })?;
    String::from_utf8(plaintext)
        .map(Opened::Plain)
        .map_err(|_| malformed("not UTF-8 inside"))
}

/// The platform's master key, from configuration. The database never sees it; the keys
/// the platform uses are derived from it, each for one purpose (HMAC-SHA-256 of the master
/// key over a purpose label), so one secret configures them all.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    /// Wraps 32 key bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads a key written as 64 hex digits or as unpadded or padded base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, PrivacyError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| PrivacyError::Store("the master key is not hex".into()))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
                .map_err(|_| {
                    PrivacyError::Store("the master key is neither 64 hex digits nor base64".into())
                })?
        };
        let bytes: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            PrivacyError::Store(format!(
                "the master key has {} bytes; it needs 32",
                bytes.len()
            ))
        })?;
        Ok(Self(bytes))
    }

    fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        mac.update(b"platform key v1\n");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The key that wraps subjects' data keys in the key store.
    pub fn key_wrapping_key(&self) -> KeyWrapper {
        KeyWrapper(DataKey(self.derive("subject key wrapping")))
    }

    /// The key of the email blind index.
    pub fn blind_index_key(&self) -> BlindIndexKey {
        BlindIndexKey::from_bytes(&self.derive("email blind index"))
    }

    /// The key that seals secrets the platform reads back (TOTP secrets).
    pub fn secrets_key(&self) -> DataKey {
        DataKey(self.derive("secrets"))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// Wraps and unwraps subjects' data keys for storage, bound to the subject's id.
#[derive(Clone, Debug)]
pub struct KeyWrapper(DataKey);

impl KeyWrapper {
    /// `version ‖ nonce ‖ sealed key`, to store.
    pub fn wrap(&self, subject: SubjectId, key: &DataKey) -> Result<Vec<u8>, PrivacyError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| PrivacyError::Random)?;
        let cipher = XChaCha20Poly1305::new(self.0.as_bytes().into());
        let aad = format!("platform subject key v1\n{subject}");
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: key.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| PrivacyError::Random)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The data key inside a stored value. Fails if it was altered, belongs to another
    /// subject, or was wrapped under another master key.
    pub fn unwrap_key(&self, subject: SubjectId, wrapped: &[u8]) -> Result<DataKey, PrivacyError> {
        let fail = |problem: &str| {
            PrivacyError::Store(format!("the stored key of subject {subject} {problem}"))
        };
        let Some((&version, rest)) = wrapped.split_first() else {
            return Err(fail("is empty"));
        };
        if version != VERSION || rest.len() != NONCE_LEN + 32 + TAG_LEN {
            return Err(fail("has an unknown format"));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new(self.0.as_bytes().into());
        let aad = format!("platform subject key v1\n{subject}");
        let key = cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| {
                fail("does not open: it was altered, or the master key is not the one it was stored with")
            })?;
        let key: [u8; 32] = key.try_into().map_err(|_| fail("has the wrong length"))?;
        Ok(DataKey(key))
    }
}

/// The key of the email blind index, ready to use. Its `Debug` form does not show it.
#[derive(Clone)]
pub struct BlindIndexKey(Hmac<Sha256>);

impl BlindIndexKey {
    /// Prepares a key from configuration.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail; a fallback keeps the type
        // total without a panic.
        Self(
            <Hmac<Sha256> as KeyInit>::new_from_slice(bytes)
                .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default())),
        )
    }

    /// The blind index of `email` in `tenant`: HMAC-SHA-256 over a version label, the
    /// tenant id and the normalised address, as 64 hex digits. Equal addresses in one
    /// tenant give equal indexes; nothing about the address can be read back from it
    /// without the key.
    pub fn email(&self, tenant: TenantId, email: &Email) -> EmailIndex {
        let mut mac = self.0.clone();
        mac.update(b"platform email index v1\n");
        mac.update(tenant.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(email.as_str().as_bytes());
        EmailIndex::from_digest(mac.finalize().into_bytes().into())
    }

    /// A keyed digest of a request's fields, as 64 hex digits: what an idempotency record
    /// compares, without a guessable hash of personal data in the log.
    pub fn request_digest(&self, parts: &[&str]) -> String {
        let mut mac = self.0.clone();
        mac.update(b"platform request digest v1\n");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl fmt::Debug for BlindIndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndexKey(..)")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use uuid::Uuid;

    use super::*;

    fn subject() -> SubjectId {
        SubjectId::from_uuid(Uuid::now_v7())
    }

    #[test]
    fn a_sealed_field_opens_with_its_subjects_key_and_holds_no_plaintext() {
        let key = DataKey::generate().unwrap();
        let who = subject();
        let sealed = seal(&key, who, "email", "ada@example.org").unwrap();
        assert!(!sealed.sealed().contains("ada"));
        assert_eq!(sealed.subject(), who);
        assert_eq!(
            open(Some(&key), &sealed, "email").unwrap(),
            Opened::Plain("ada@example.org".into())
        );
    }

    #[test]
    fn sealing_twice_gives_different_texts() {
        let key = DataKey::generate().unwrap();
        let who = subject();
        let a = seal(&key, who, "name", "Ada").unwrap();
        let b = seal(&key, who, "name", "Ada").unwrap();
        assert_ne!(a.sealed(), b.sealed());
    }

    #[test]
    fn a_forgotten_subjects_field_opens_as_forgotten() {
        let key = DataKey::generate().unwrap();
        let sealed = seal(&key, subject(), "email", "ada@example.org").unwrap();
        assert_eq!(open(None, &sealed, "email").unwrap(), Opened::Forgotten);
    }

    #[test]
    fn a_sealed_field_does_not_open_as_another_field_subject_or_key() {
        let key = DataKey::generate().unwrap();
        let who = subject();
        let sealed = seal(&key, who, "email", "ada@example.org").unwrap();
        assert!(matches!(
            open(Some(&key), &sealed, "name"),
            Err(PrivacyError::Unauthentic { .. })
        ));
        let moved = PersonalData::from_sealed(subject(), sealed.sealed().to_owned());
        assert!(matches!(
            open(Some(&key), &moved, "email"),
            Err(PrivacyError::Unauthentic { .. })
        ));
        let other = DataKey::generate().unwrap();
        assert!(matches!(
            open(Some(&other), &sealed, "email"),
            Err(PrivacyError::Unauthentic { .. })
        ));
    }

    #[test]
    fn any_changed_byte_of_a_sealed_field_is_detected() {
        let key = DataKey::generate().unwrap();
        let who = subject();
        let sealed = seal(&key, who, "email", "ada@example.org").unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(sealed.sealed()).unwrap();
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x01;
            let tampered = PersonalData::from_sealed(who, URL_SAFE_NO_PAD.encode(&changed));
            assert!(open(Some(&key), &tampered, "email").is_err(), "byte {i}");
        }
    }

    #[test]
    fn malformed_sealed_text_is_named() {
        let key = DataKey::generate().unwrap();
        let bad = PersonalData::from_sealed(subject(), "***".into());
        let err = open(Some(&key), &bad, "email").unwrap_err();
        assert!(err.to_string().contains("not unpadded base64url"), "{err}");
    }

    #[test]
    fn a_wrapped_key_unwraps_only_for_its_subject_and_master_key() {
        let master = MasterKey::parse(&"ab".repeat(32)).unwrap();
        let wrapper = master.key_wrapping_key();
        let key = DataKey::generate().unwrap();
        let who = subject();
        let wrapped = wrapper.wrap(who, &key).unwrap();
        assert_eq!(wrapper.unwrap_key(who, &wrapped).unwrap(), key);
        assert!(wrapper.unwrap_key(subject(), &wrapped).is_err());
        let other = MasterKey::from_bytes([1; 32]).key_wrapping_key();
        assert!(other.unwrap_key(who, &wrapped).is_err());
    }

    #[test]
    fn a_master_key_is_read_from_hex_or_base64_and_must_have_32_bytes() {
        let hex = MasterKey::parse(&"0f".repeat(32)).unwrap();
        let base64 =
            MasterKey::parse(&base64::engine::general_purpose::STANDARD.encode([15u8; 32]))
                .unwrap();
        assert_eq!(hex.derive("x"), base64.derive("x"));
        let err = MasterKey::parse("c2hvcnQ=").unwrap_err();
        assert!(
            err.to_string().contains("has 5 bytes; it needs 32"),
            "{err}"
        );
        assert_ne!(hex.derive("a"), hex.derive("b"));
    }

    #[test]
    fn the_email_index_is_keyed_per_tenant_and_ignores_case() {
        let index = BlindIndexKey::from_bytes(&[7; 32]);
        let tenant = TenantId::from_uuid(Uuid::now_v7());
        let a = Email::parse("Ada@Example.org").unwrap();
        let b = Email::parse("ada@example.org").unwrap();
        assert_eq!(index.email(tenant, &a), index.email(tenant, &b));
        let elsewhere = TenantId::from_uuid(Uuid::now_v7());
        assert_ne!(index.email(tenant, &a), index.email(elsewhere, &a));
        let other_key = BlindIndexKey::from_bytes(&[8; 32]);
        assert_ne!(index.email(tenant, &a), other_key.email(tenant, &a));
    }
}
