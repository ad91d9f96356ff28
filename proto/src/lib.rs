//! The protobuf contracts of events on the bus.
//!
//! Downstream services in any language decode the relay's messages with the `.proto` files
//! under `proto/platform/events/v1`; this crate holds those files, the types prost generates
//! from them (module [`v1`]), and the conversions between those types and the domain's
//! events. The key decision is that each [`v1::EventEnvelope`] carries, beside the typed
//! payload, the exact canonical bytes that were hashed (docs/hash-spec.md), so that a
//! consumer can check an event's hash, and its links to the events before it, from the
//! envelope alone, without trusting the transport.
//!
//! - [`EventRecord`] is one row of the log; [`v1::EventEnvelope::from_record`] makes its
//!   envelope and [`v1::EventEnvelope::to_record`] reads it back.
//! - [`TypedEvent`] is the domain side of the typed payload: it decodes a record's JSON
//!   payload ([`TypedEvent::from_json`]) and converts to and from the `oneof`.
//! - Each domain event enum converts `From` the domain into its message, and `TryFrom` the
//!   message back, with a [`ConvertError`] that names the field that failed.
//! - [`v1::EventEnvelope::verify`] is the consumer's check.
//!
//! This crate knows nothing about PostgreSQL or NATS: it does not depend on the event store.

mod convert;
mod envelope;
mod error;
mod typed;

/// The generated types of the protobuf package `platform.events.v1`.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    rust_2018_idioms
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/platform.events.v1.rs"));
}

/// The generated types of the protobuf package `platform.audit.v1`: the items of an audit
/// export in its protobuf form (docs/audit.md section 4).
pub mod audit {
    #[allow(
        missing_docs,
        clippy::all,
        clippy::pedantic,
        clippy::unwrap_used,
        clippy::expect_used,
        rust_2018_idioms
    )]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/platform.audit.v1.rs"));
    }
}

/// `platform.events.v1` under its package path, as the generated code of other packages
/// names it.
pub mod events {
    pub use super::v1;
}

pub use envelope::EventRecord;
pub use error::{ConvertError, VerifyError};
pub use typed::TypedEvent;
