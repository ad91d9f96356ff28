//! The protobuf contracts of events on the bus.
//!
//! Downstream services in any language decode the relay's messages with the `.proto` files
//! under `proto/platform/events/v1`; this crate holds those files and the types prost
//! generates from them (module [`v1`]). The key decision is that each
//! [`v1::EventEnvelope`] carries, beside the typed payload, the exact canonical bytes that
//! were hashed (docs/hash-spec.md), so that a consumer can check an event's hash without
//! trusting the transport.

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
