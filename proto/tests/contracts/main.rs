//! The contracts of `platform.events.v1`, as laws over every event the domain can emit:
//! domain -> protobuf -> domain is the identity, an envelope survives its wire encoding,
//! and a consumer can check an event's hash and links from the envelope alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod envelope;
mod hash_vectors;
mod refusals;
mod round_trip;
mod strategies;
