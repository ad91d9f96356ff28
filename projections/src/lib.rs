//! Projections: named, versioned functions of the ordered event log that build read models.
//!
//! A projection's runner applies events in `global_position` order and stores the last
//! applied position atomically with the effect (in the same PostgreSQL transaction, or the
//! same Redis Lua call), so that at-least-once delivery yields exactly-once effects. The
//! runner, the JetStream consumers and the read models arrive with the relay; today this
//! crate re-exports the event store's global reader, the API projections are built on.

pub use eventstore::reader::LogReader;
