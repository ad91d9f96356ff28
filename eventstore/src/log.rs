//! The event store as the application layer's [`EventLog`]: loads through the loader,
//! atomic multi-aggregate appends through the appender.

use commands::bus::{Committed, EventLog, LogError};
use cqrs_es::persist::SerializedEvent;

use crate::error::{AppendError, LoadError};
use crate::repository::EventRepository;

impl From<AppendError> for LogError {
    fn from(err: AppendError) -> Self {
        match err {
            AppendError::Conflict {
                aggregate_type,
                aggregate_id,
                ..
            } => Self::Conflict {
                aggregate_type,
                aggregate_id,
            },
            AppendError::Unavailable(_) | AppendError::Stopped => {
                Self::Unavailable(err.to_string())
            }
            other => Self::Failed(other.to_string()),
        }
    }
}

impl From<LoadError> for LogError {
    fn from(err: LoadError) -> Self {
        match err {
            LoadError::Unavailable(_) | LoadError::Stopped => Self::Unavailable(err.to_string()),
            other => Self::Failed(other.to_string()),
        }
    }
}

impl EventLog for EventRepository {
    async fn load(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, LogError> {
        Ok(self.loader().load(aggregate_type, aggregate_id, 0).await?)
    }

    async fn append(&self, writes: Vec<Vec<SerializedEvent>>) -> Result<Committed, LogError> {
        let slices: Vec<&[SerializedEvent]> = writes.iter().map(Vec::as_slice).collect();
        let receipts = self.append_all(&slices).await?;
        match (receipts.first(), receipts.last()) {
            (Some(first), Some(last)) => Ok(Committed {
                first_position: first.first_position,
                last_position: last.last_position,
            }),
            _ => Err(LogError::Failed("an append returned no receipt".into())),
        }
    }

    async fn position_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: usize,
    ) -> Result<Option<i64>, LogError> {
        let sequence = i64::try_from(sequence)
            .map_err(|_| LogError::Failed(format!("sequence {sequence} is out of range")))?;
        sqlx::query_scalar(
            "SELECT global_position FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .fetch_optional(self.pool())
        .await
        .map_err(|err| LoadError::from(err).into())
    }
}
