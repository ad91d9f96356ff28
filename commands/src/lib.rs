//! The application layer: everything between a request and an aggregate's decision.
//!
//! It turns a caller's identity and request into [`CommandMetadata`], wires aggregates into
//! cqrs-es, authorizes commands, enforces idempotency, and hides the outside world (password
//! hashing, TOTP, payment and cloud providers) behind traits so that the domain stays pure.
//! Its key decision is that every command carries the same metadata, and that metadata
//! travels unchanged into every event the command produces: the event log itself answers
//! "who did this, on whose behalf, and as part of what".

pub mod bus;
pub mod idempotency;
pub mod identity;
pub mod metadata;
pub mod privacy;
pub mod security;

pub use metadata::{ClientIp, CommandMetadata, MetadataError, UserAgent};
