//! The event store's errors: what an append, a read or a verification can fail with.

use std::sync::Arc;

use cqrs_es::persist::PersistenceError;

use crate::canonical::CanonicalError;

/// A failure of the store itself: the database, the schema, or a stored value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused or failed a statement, or could not be reached.
    #[error("event store database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration could not be applied.
    #[error("event store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value has a shape the schema forbids (for example a 31-byte hash).
    #[error("events column `{column}` {problem}")]
    Corrupt {
        /// The column.
        column: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
}

/// Why one command's append did not happen. Each append fails or succeeds on its own:
/// the other appends of the same batch are unaffected by a [`AppendError::Conflict`] or an
/// [`AppendError::Invalid`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The aggregate moved on since the command loaded it (optimistic concurrency).
    #[error(
        "aggregate {aggregate_type}/{aggregate_id} is at sequence {actual}, but the append expected {expected}"
    )]
    Conflict {
        /// The aggregate's type.
        aggregate_type: String,
        /// The aggregate's id.
        aggregate_id: String,
        /// The sequence the command's events were based on.
        expected: i64,
        /// The aggregate's sequence in the log.
        actual: i64,
    },
    /// The events cannot be recorded as they are; the message names the field and problem.
    #[error("cannot append: {0}")]
    Invalid(String),
    /// The database could not be reached, or the connection broke before the commit.
    /// Nothing was written.
    #[error("event store database unavailable: {0}")]
    Unavailable(Arc<sqlx::Error>),
    /// The database failed the transaction. Nothing was written.
    #[error("event store database error: {0}")]
    Database(Arc<sqlx::Error>),
    /// The connection broke while committing, and a later check could not tell whether the
    /// commit happened. The events are either all in the log or all absent.
    #[error("the outcome of the commit is unknown: {0}")]
    CommitUnknown(Arc<sqlx::Error>),
    /// The appender task is not running (the process is shutting down).
    #[error("the event store appender has stopped")]
    Stopped,
}

/// Why loading an aggregate's events failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The database could not be reached, or the connection broke during the read.
    #[error("event store database unavailable: {0}")]
    Unavailable(Arc<sqlx::Error>),
    /// The database failed the read.
    #[error("event store database error: {0}")]
    Database(Arc<sqlx::Error>),
    /// A stored value has a shape the schema forbids.
    #[error("events column `{column}` {problem}")]
    Corrupt {
        /// The column.
        column: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
    /// The loader is not running (the process is shutting down).
    #[error("the event store loader has stopped")]
    Stopped,
}

impl From<sqlx::Error> for LoadError {
    fn from(err: sqlx::Error) -> Self {
        if is_connection_error(&err) {
            Self::Unavailable(Arc::new(err))
        } else {
            Self::Database(Arc::new(err))
        }
    }
}

impl From<StoreError> for LoadError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Database(db) => db.into(),
            StoreError::Corrupt { column, problem } => Self::Corrupt { column, problem },
            StoreError::Migrate(migrate) => {
                Self::Database(Arc::new(sqlx::Error::Migrate(Box::new(migrate))))
            }
        }
    }
}

impl From<LoadError> for PersistenceError {
    fn from(err: LoadError) -> Self {
        match err {
            LoadError::Unavailable(_) | LoadError::Stopped => Self::ConnectionError(Box::new(err)),
            LoadError::Corrupt { .. } => Self::DeserializationError(Box::new(err)),
            LoadError::Database(_) => Self::UnknownError(Box::new(err)),
        }
    }
}

impl From<CanonicalError> for AppendError {
    fn from(err: CanonicalError) -> Self {
        Self::Invalid(err.to_string())
    }
}

impl From<AppendError> for PersistenceError {
    fn from(err: AppendError) -> Self {
        match err {
            AppendError::Conflict { .. } => Self::OptimisticLockError,
            AppendError::Unavailable(_) | AppendError::Stopped => {
                Self::ConnectionError(Box::new(err))
            }
            AppendError::Invalid(_) | AppendError::Database(_) | AppendError::CommitUnknown(_) => {
                Self::UnknownError(Box::new(err))
            }
        }
    }
}

impl From<StoreError> for PersistenceError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Database(db) if is_connection_error(&db) => {
                Self::ConnectionError(Box::new(db))
            }
            StoreError::Corrupt { .. } => Self::DeserializationError(Box::new(err)),
            other => Self::UnknownError(Box::new(other)),
        }
    }
}

/// Whether an error means the connection (not the statement) failed: the server went away,
/// shut down, or the pool could not provide a connection.
pub(crate) fn is_connection_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}
