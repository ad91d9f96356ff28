//! The protobuf contracts of events on the bus.
//!
//! Downstream services in any language decode the relay's messages with these `.proto`
//! files. The key decision is that each envelope carries, beside the typed payload, the exact
//! canonical bytes that were hashed, so that a consumer can check an event's hash without
//! trusting the transport. The generated types arrive with the relay.
