//! Personal data as events hold it: sealed with the data subject's own key.
//!
//! Every personal field of every event (an email address, a name, a client IP address) is a
//! [`PersonalData`] value: the ciphertext of the field under a key that belongs to one data
//! subject (a person), plus the subject's id so that a reader knows which key opens it. The
//! keys live apart from the events. Destroying a subject's key makes every field sealed with
//! it unreadable at once, everywhere it was copied, while the events (and the hash chain,
//! which covers the ciphertext) stay as they are. This crate never sees a key or plaintext
//! of a sealed field: sealing and opening happen in one place, the `commands` crate.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A data subject: the person whose key seals their personal data. For a user, the user id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SubjectId(Uuid);

impl SubjectId {
    /// Wraps an id.
    pub const fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The id.
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One personal field, sealed. Opaque here: its `sealed` text is the base64 of a nonce and
/// an authenticated ciphertext (the format is in docs/identity.md), bound to the subject and
/// the field's name so that it cannot be moved to another field or person.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonalData {
    subject: SubjectId,
    sealed: String,
}

impl PersonalData {
    /// Wraps a field sealed by the `commands` crate's sealer.
    pub fn from_sealed(subject: SubjectId, sealed: String) -> Self {
        Self { subject, sealed }
    }

    /// Whose key seals the field.
    pub const fn subject(&self) -> SubjectId {
        self.subject
    }

    /// The sealed text.
    pub fn sealed(&self) -> &str {
        &self.sealed
    }
}

impl fmt::Debug for PersonalData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PersonalData(subject {}, sealed)", self.subject)
    }
}
