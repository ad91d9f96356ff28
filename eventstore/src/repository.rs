//! The cqrs-es repository over the hash-chained log.
//!
//! [`EventRepository`] implements cqrs-es's `PersistedEventRepository`, so
//! `PersistedEventStore` and `CqrsFramework` use it unchanged, with or without snapshots and
//! upcasters. Aggregate loads go through the [`Loader`], every write through the
//! [`Appender`]; snapshots and replays read from the pool.

use cqrs_es::Aggregate;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::appender::{AppendReceipt, Appender, PendingAppend, PreparedEvent, SnapshotWrite};
use crate::canonical::{CanonicalEvent, EventFields};
use crate::error::{AppendError, StoreError};
use crate::loader::Loader;

const DEFAULT_STREAM_CHANNEL_SIZE: usize = 200;

const SELECT_EVENTS: &str = "\
SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence";

const SELECT_ALL_EVENTS: &str = "\
SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
  FROM events
 WHERE aggregate_type = $1
 ORDER BY global_position";

const SELECT_SNAPSHOT: &str = "\
SELECT aggregate_id, payload, last_sequence, current_snapshot
  FROM snapshots
 WHERE aggregate_type = $1 AND aggregate_id = $2";

/// The metadata key whose value becomes the event's `tenant_id` column.
const TENANT_KEY: &str = commands::metadata::TENANT_ID;

/// A cqrs-es event repository over the platform's event log.
#[derive(Debug, Clone)]
pub struct EventRepository {
    pool: PgPool,
    appender: Appender,
    loader: Loader,
    stream_channel_size: usize,
}

impl EventRepository {
    /// A repository that loads aggregates through `loader`, appends through `appender`, and
    /// reads snapshots and replays from `pool`.
    pub fn new(pool: PgPool, appender: Appender, loader: Loader) -> Self {
        Self {
            pool,
            appender,
            loader,
            stream_channel_size: DEFAULT_STREAM_CHANNEL_SIZE,
        }
    }

    /// The appender this repository writes through.
    pub fn appender(&self) -> &Appender {
        &self.appender
    }

    /// The loader this repository loads aggregates through.
    pub fn loader(&self) -> &Loader {
        &self.loader
    }

    /// The pool this repository reads snapshots and replays from.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Sets how many events a replay stream buffers ahead of its reader.
    #[must_use]
    pub fn with_streaming_channel_size(mut self, size: usize) -> Self {
        self.stream_channel_size = size.max(1);
        self
    }

    /// Appends one command's events (all for one aggregate, with consecutive sequences) and
    /// returns where they landed. This is what `persist` does, with the positions returned.
    pub async fn append(
        &self,
        events: &[SerializedEvent],
        snapshot: Option<SnapshotWrite>,
    ) -> Result<Option<AppendReceipt>, AppendError> {
        if events.is_empty() {
            return if snapshot.is_some() {
                Err(AppendError::Invalid(
                    "a snapshot can only be stored together with events".into(),
                ))
            } else {
                Ok(None)
            };
        }
        let pending = prepare(events, snapshot)?;
        self.appender.append(pending).await.map(Some)
    }

    /// Appends one command's events to several aggregates (one slice of events per
    /// aggregate), atomically: all of them are committed, at consecutive positions in the
    /// order given, or none is. A stale aggregate fails the whole command with
    /// [`AppendError::Conflict`]. This is how a command keeps an invariant that spans
    /// aggregates, such as claiming a unique email address while registering a user.
    pub async fn append_all(
        &self,
        writes: &[&[SerializedEvent]],
    ) -> Result<Vec<AppendReceipt>, AppendError> {
        let pending = writes
            .iter()
            .map(|events| prepare(events, None))
            .collect::<Result<Vec<_>, _>>()?;
        self.appender.append_all(pending).await
    }

    async fn select_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        after: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        Ok(self.loader.load(A::TYPE, aggregate_id, after).await?)
    }
}

/// Validates and encodes one command's events for the appender.
pub fn prepare(
    events: &[SerializedEvent],
    snapshot: Option<SnapshotWrite>,
) -> Result<PendingAppend, AppendError> {
    let Some(first) = events.first() else {
        return Err(AppendError::Invalid(
            "an append needs at least one event".into(),
        ));
    };
    let mut prepared = Vec::with_capacity(events.len());
    for (offset, event) in events.iter().enumerate() {
        if event.aggregate_type != first.aggregate_type || event.aggregate_id != first.aggregate_id
        {
            return Err(AppendError::Invalid(format!(
                "one append holds events of {}/{} and {}/{}: each command appends to one aggregate",
                first.aggregate_type, first.aggregate_id, event.aggregate_type, event.aggregate_id
            )));
        }
        let expected = first.sequence + offset;
        if event.sequence != expected {
            return Err(AppendError::Invalid(format!(
                "event {offset} of the append has sequence {}, expected {expected}: sequences must be consecutive",
                event.sequence
            )));
        }
        let sequence = i64::try_from(event.sequence).map_err(|_| {
            AppendError::Invalid(format!("sequence {} is too large", event.sequence))
        })?;
        let tenant_id = tenant_of(&event.metadata)?;
        let event_id = Uuid::now_v7();
        let canonical = CanonicalEvent::new(&EventFields {
            event_id,
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            sequence,
            event_type: &event.event_type,
            event_version: &event.event_version,
            tenant_id,
            payload: &event.payload,
            metadata: &event.metadata,
        })?;
        prepared.push(PreparedEvent {
            event_id,
            sequence,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            tenant_id,
            canonical,
        });
    }
    Ok(PendingAppend {
        aggregate_type: first.aggregate_type.clone(),
        aggregate_id: first.aggregate_id.clone(),
        events: prepared,
        snapshot,
    })
}

/// The tenant named by the metadata's `tenant_id`, if any.
fn tenant_of(metadata: &Value) -> Result<Option<Uuid>, AppendError> {
    match metadata.get(TENANT_KEY) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => match Uuid::parse_str(text) {
            // The nil UUID keys the platform-level chain; no tenant can have it.
            Ok(tenant) if tenant.is_nil() => Err(AppendError::Invalid(format!(
                "metadata `{TENANT_KEY}` is the nil UUID, which is not a tenant; leave it out for a platform-level event"
            ))),
            Ok(tenant) => Ok(Some(tenant)),
            Err(_) => Err(AppendError::Invalid(format!(
                "metadata `{TENANT_KEY}` is not a UUID: {text:?}"
            ))),
        },
        Some(other) => Err(AppendError::Invalid(format!(
            "metadata `{TENANT_KEY}` must be a UUID string, found {other}"
        ))),
    }
}

pub(crate) fn serialized_event(row: &PgRow) -> Result<SerializedEvent, StoreError> {
    let sequence: i64 = row.try_get("sequence")?;
    Ok(SerializedEvent::new(
        row.try_get("aggregate_id")?,
        usize::try_from(sequence).map_err(|_| StoreError::Corrupt {
            column: "sequence",
            problem: format!("holds {sequence}, below 1"),
        })?,
        row.try_get("aggregate_type")?,
        row.try_get("event_type")?,
        row.try_get("event_version")?,
        row.try_get("payload")?,
        row.try_get("metadata")?,
    ))
}

impl PersistedEventRepository for EventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.select_events::<A>(aggregate_id, 0).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.select_events::<A>(aggregate_id, last_sequence).await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        let Some(row) = sqlx::query(SELECT_SNAPSHOT)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from)?
        else {
            return Ok(None);
        };
        let count = |column: &'static str| -> Result<usize, StoreError> {
            let value: i64 = row.try_get(column)?;
            usize::try_from(value).map_err(|_| StoreError::Corrupt {
                column,
                problem: format!("holds {value}, below 0"),
            })
        };
        Ok(Some(SerializedSnapshot {
            aggregate_id: row.try_get("aggregate_id").map_err(StoreError::from)?,
            aggregate: row.try_get("payload").map_err(StoreError::from)?,
            current_sequence: count("last_sequence")?,
            current_snapshot: count("current_snapshot")?,
        }))
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let snapshot = match snapshot_update {
            None => None,
            Some((_, _, version)) => self.snapshot_after::<A>(events, version).await?,
        };
        self.append(events, snapshot).await?;
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        let query = sqlx::query(SELECT_EVENTS)
            .bind(A::TYPE.to_owned())
            .bind(aggregate_id.to_owned())
            .bind(0_i64);
        Ok(self.replay(query))
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        let query = sqlx::query(SELECT_ALL_EVENTS).bind(A::TYPE.to_owned());
        Ok(self.replay(query))
    }
}

impl EventRepository {
    /// The aggregate's state after `events`, for the snapshot stored with them.
    ///
    /// cqrs-es 0.5 hands `persist` a snapshot in which the command's events were applied twice
    /// (once by `EventSink::write` while handling, once more while preparing the snapshot),
    /// so that state is not used. Instead the state is rebuilt from the stored snapshot, the
    /// stored events after it, and the new events. If an event cannot be read as the current
    /// event type (an old version that needs an upcaster), no snapshot is written: loading
    /// then replays the events, which is slower but correct.
    async fn snapshot_after<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        version: usize,
    ) -> Result<Option<SnapshotWrite>, PersistenceError> {
        let Some(first) = events.first() else {
            return Ok(None);
        };
        let mut state = A::default();
        let mut sequence = 0;
        if let Some(snapshot) = self.get_snapshot::<A>(&first.aggregate_id).await?
            && let Ok(stored) = serde_json::from_value::<A>(snapshot.aggregate)
        {
            state = stored;
            sequence = snapshot.current_sequence;
        }
        let stored = self
            .get_last_events::<A>(&first.aggregate_id, sequence)
            .await?;
        for event in stored.iter().chain(events) {
            if event.sequence != sequence + 1 {
                // The log moved on since the command loaded the aggregate: the append will
                // be refused as a conflict, and its snapshot with it.
                return Ok(None);
            }
            match serde_json::from_value::<A::Event>(event.payload.clone()) {
                Ok(payload) => state.apply(payload),
                Err(err) => {
                    tracing::warn!(
                        aggregate_type = A::TYPE,
                        aggregate_id = %first.aggregate_id,
                        "no snapshot: event {} ({} v{}) needs an upcaster: {err}",
                        event.sequence,
                        event.event_type,
                        event.event_version
                    );
                    return Ok(None);
                }
            }
            sequence = event.sequence;
        }
        Ok(Some(SnapshotWrite {
            payload_json: serde_json::to_string(&state)?,
            current_snapshot: i64::try_from(version).map_err(|_| {
                AppendError::Invalid(format!("snapshot version {version} is too large"))
            })?,
        }))
    }
}

impl EventRepository {
    /// Feeds a query's rows into a cqrs-es replay stream from a task of its own. Errors go
    /// into the stream; the task ends when the rows end or the reader goes away.
    fn replay(
        &self,
        query: sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> ReplayStream {
        let (mut feed, stream) = ReplayStream::new(self.stream_channel_size);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut rows = query.fetch(&pool);
            loop {
                let item = match rows.try_next().await {
                    Ok(Some(row)) => serialized_event(&row).map_err(PersistenceError::from),
                    Ok(None) => return,
                    Err(err) => Err(PersistenceError::from(StoreError::from(err))),
                };
                let failed = item.is_err();
                if feed.push(item).await.is_err() || failed {
                    return;
                }
            }
        });
        stream
    }
}
