//! The platform's system of record: a hash-chained, gap-free event log in PostgreSQL, and a
//! cqrs-es repository over it.
//!
//! Every event gets a `global_position` that is gap-free and in commit order, because
//! positions are assigned under one lock on the `log_head` row inside the appending
//! transaction; a reader that tails `global_position > checkpoint` can never skip an event.
//! Every event is hash-chained to the one before it and to the previous event of its tenant,
//! over a canonical encoding that an auditor can recompute (docs/hash-spec.md).
//!
//! The key decision is the group-commit [`Appender`]: one task per process batches the
//! appends of concurrent commands into one transaction with one multi-row insert, which
//! buys back the throughput that serializing writers on the head lock costs. Each append
//! stays all-or-nothing, and a stale one fails alone. The [`Loader`] does the same for
//! reads: the aggregate loads of concurrent commands share one query.
//!
//! - [`EventRepository`] implements cqrs-es's `PersistedEventRepository`;
//! - [`LogReader`] reads the log in order in bounded memory, and verifies the chain;
//! - [`History`] rebuilds an aggregate as it was at a position or a time;
//! - [`schema`] creates the database and applies the migrations.

pub mod appender;
pub mod audit;
pub mod canonical;
pub mod cqrs;
pub mod error;
pub mod history;
pub mod key_usage;
pub mod loader;
mod log;
pub mod reader;
pub mod record;
pub mod relay;
pub mod repository;
pub mod schema;
pub mod subject_keys;
pub mod verify;

pub use appender::{AppendReceipt, Appender, AppenderConfig, AppenderTask};
pub use canonical::{Digest32, ZERO_HASH};
pub use cqrs::{PlatformCqrs, platform_cqrs, platform_snapshot_cqrs};
pub use error::{AppendError, LoadError, StoreError};
pub use history::{AsOf, History, HistoryError};
pub use key_usage::{KeyUsage, KeyUsageTask, KeyUse};
pub use loader::{Loader, LoaderConfig, LoaderStats, LoaderTask};
pub use reader::{LogHead, LogReader};
pub use record::{RecordedEvent, StoredEvent};
pub use relay::{EncodeEvent, ProtoEncoder, Relay, RelayConfig, RelayError, RelayStats};
pub use repository::EventRepository;
pub use subject_keys::PgSubjectKeys;
pub use verify::{ChainFault, FaultReason, Verification};
