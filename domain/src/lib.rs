//! The platform's domain: aggregates, the commands they accept, the events they emit, and the
//! value types those are made of.
//!
//! The one rule of this crate is that decisions are pure. Nothing here reads a clock, a
//! database, the network or the environment: an aggregate's `handle` receives every outside
//! fact it needs inside the command (the time, whether an email address is taken), so that the
//! same events always follow from the same history and the same command. This crate knows
//! nothing about PostgreSQL, NATS, Redis, HTTP, GraphQL or protobuf.

pub mod actor;
pub mod identity;
pub mod personal;
pub mod refusal;
pub mod tenancy;

pub use actor::ActorKind;
pub use refusal::{Refusal, RefusalKind};
pub use tenancy::Tenanted;
