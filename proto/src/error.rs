//! Why a message does not convert, and why an envelope does not verify.

/// A protobuf message that does not convert to a domain event, or a record that does not
/// convert to an envelope. The message names the field, as `Message.field`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// A required field, or a required case of a `oneof`, is absent.
    #[error("`{0}` is missing")]
    Missing(&'static str),
    /// A field holds a value that the domain does not accept.
    #[error("`{field}` is invalid: {problem}")]
    Invalid {
        /// The field, as `Message.field`.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The JSON payload of an event does not decode as the event its record names.
    #[error(
        "the payload of the {aggregate_type} event {event_type} (version {event_version}) does \
         not decode: {problem}"
    )]
    Payload {
        /// The record's aggregate type.
        aggregate_type: String,
        /// The record's event type.
        event_type: String,
        /// The record's event version.
        event_version: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl ConvertError {
    pub(crate) fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            problem: problem.into(),
        }
    }
}

/// An envelope that fails a check a consumer makes before trusting it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// SHA-256 of the canonical bytes is not the envelope's `hash`: the event, or its
    /// envelope, was altered.
    #[error("the envelope's hash is {stated}, but SHA-256 of its canonical bytes is {computed}")]
    HashMismatch {
        /// The `hash` field, as hex.
        stated: String,
        /// SHA-256 of the `canonical` field, as hex.
        computed: String,
    },
    /// The canonical bytes are not a JSON object.
    #[error("the canonical bytes are not a JSON object: {0}")]
    NotAnObject(String),
    /// A field of the envelope says something other than the canonical bytes, which the
    /// hash covers.
    #[error("`{field}` is {envelope} in the envelope but {canonical} in the canonical bytes")]
    FieldMismatch {
        /// The field.
        field: &'static str,
        /// Its value in the envelope (as JSON).
        envelope: String,
        /// Its value in the canonical bytes (as JSON), or `absent`.
        canonical: String,
    },
    /// The typed payload does not convert to a domain event.
    #[error("the typed payload does not convert: {0}")]
    Payload(ConvertError),
    /// The event does not come right after the one it was checked against.
    #[error("position {position} does not follow position {previous}")]
    NotNext {
        /// The earlier event's position.
        previous: u64,
        /// This event's position.
        position: u64,
    },
    /// The event's link is not the hash of the event it was checked against.
    #[error("`{link}` is {stated}, but the previous event's hash is {expected}")]
    BrokenLink {
        /// `prev_hash` or `tenant_prev_hash`.
        link: &'static str,
        /// The link, as hex.
        stated: String,
        /// The previous event's hash, as hex.
        expected: String,
    },
    /// A tenant link checked against an event of another tenant.
    #[error("the events belong to different tenants ({previous} and {this})")]
    OtherTenant {
        /// The earlier event's tenant, or `platform`.
        previous: String,
        /// This event's tenant, or `platform`.
        this: String,
    },
}
