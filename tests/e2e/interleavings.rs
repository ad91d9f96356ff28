//! Property: random interleavings of concurrent appends keep the log's invariants.
