//! Point-in-time state: an aggregate as it was at a global position of the log, rebuilt from
//! its own events with cqrs-es's `Aggregate::apply`, and the position the log stood at at a
//! given time.
//!
//! A position `p` names a prefix of the log: the events `1..=p`, which commit in order, so
//! every event of the prefix was already committed when the head reached `p`. The state as
//! of `p` applies an aggregate's events with `global_position <= p`, in sequence order, to
//! its default: exactly what replaying the first `p` events of the log and keeping that
//! aggregate's gives.
//!
//! **Time.** `recorded_at` is the appender's clock when it wrote a batch, one value per
//! batch, and never earlier than the event before it: an appender records a batch at the
//! later of its clock and the last event's time (see `appender`), so times do not decrease
//! along the log even when two processes' clocks disagree. The position for a time `t` is
//! the end of the longest prefix recorded at or before `t`: one before the first event
//! recorded after `t`, or the head when there is none. On such a log that is simply the last
//! event recorded at or before `t`; the definition does not depend on it, so a log written
//! before times were kept in order reads correctly too. The state as of `t` never holds an
//! event recorded after `t`.
//!
//! **Snapshots.** A snapshot is used when the stored one ends at or below the position asked
//! for, and the events after it (up to the position) are applied to it; otherwise the
//! aggregate is replayed from its first event. A snapshot that no longer reads as the
//! aggregate's type is passed over. Only frameworks built with
//! [`platform_snapshot_cqrs`](crate::platform_snapshot_cqrs) write snapshots; the identity
//! aggregates are committed through the application layer's unit of work, which writes none,
//! so for them every read replays the aggregate's events (a snapshot table holds one, the
//! latest, per aggregate, so it helps only reads at or after it anyway).
//!
//! **Scope.** [`History::Log`] reads the `events` and `snapshots` tables, as the application
//! role and operators can. [`History::BoundTenant`] reads the views `tenant_events` and
//! `tenant_snapshots` (migrations/0014_reader_history.sql), which show `platform_reader`
//! the events of the tenant its transaction is bound to (`platform.tenant_id`) and nothing
//! else: how the gateway reads. In that scope an aggregate of another tenant has no events,
//! and a time is placed by the tenant's own events: the end of the longest prefix of the
//! tenant's events recorded at or before it. The tenant's state is the same there as at the
//! log-wide position, since no event of the tenant lies between the two.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde_json::Value;
use sqlx::{PgConnection, Row};

use crate::error::StoreError;
use crate::record::RecordedEvent;

/// The columns of a [`RecordedEvent`], as a literal for `concat!`.
macro_rules! columns {
    () => {
        "global_position, event_id, aggregate_type, aggregate_id, sequence, event_type, \
         event_version, tenant_id, recorded_at, payload, metadata, prev_hash, tenant_prev_hash, \
         hash"
    };
}

/// The events of one aggregate (`$1`, `$2`) after sequence `$3`, at or below position `$4`.
macro_rules! select_events {
    ($from:literal) => {
        concat!(
            "SELECT ",
            columns!(),
            " FROM ",
            $from,
            " WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 \
               AND global_position <= $4 ORDER BY sequence"
        )
    };
}

/// The last event of one aggregate (`$1`, `$2`) of the types `$3` at or below position `$4`.
macro_rules! select_latest {
    ($from:literal) => {
        concat!(
            "SELECT ",
            columns!(),
            " FROM ",
            $from,
            " WHERE aggregate_type = $1 AND aggregate_id = $2 AND event_type = ANY($3) \
               AND global_position <= $4 ORDER BY sequence DESC LIMIT 1"
        )
    };
}

/// The first event recorded after `$1`.
macro_rules! select_first_after {
    ($from:literal) => {
        concat!(
            "SELECT global_position FROM ",
            $from,
            " WHERE recorded_at > $1 ORDER BY global_position LIMIT 1"
        )
    };
}

const LOG_EVENTS: &str = select_events!("events");
const TENANT_EVENTS: &str = select_events!("tenant_events");
const LOG_LATEST: &str = select_latest!("events");
const TENANT_LATEST: &str = select_latest!("tenant_events");
const LOG_FIRST_AFTER: &str = select_first_after!("events");
const TENANT_FIRST_AFTER: &str = select_first_after!("tenant_events");

/// The snapshot of one aggregate (`$1`, `$2`) if the event it ends at is at or below `$3`.
const LOG_SNAPSHOT: &str = "\
SELECT s.last_sequence, e.global_position, s.payload
  FROM snapshots s
  JOIN events e
    ON e.aggregate_type = s.aggregate_type
   AND e.aggregate_id = s.aggregate_id
   AND e.sequence = s.last_sequence
 WHERE s.aggregate_type = $1 AND s.aggregate_id = $2 AND e.global_position <= $3";

const TENANT_SNAPSHOT: &str = "\
SELECT last_sequence, global_position, payload
  FROM tenant_snapshots
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND global_position <= $3";

const HEAD: &str = "SELECT position FROM log_head";

/// Where the history is read from: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// The whole log: `events` and `snapshots`.
    Log,
    /// The events and snapshots of the tenant the transaction is bound to, through the
    /// `tenant_events` and `tenant_snapshots` views (the `platform_reader` role).
    BoundTenant,
}

/// An aggregate as of a position.
#[derive(Debug, Clone, PartialEq)]
pub struct AsOf<A> {
    /// Its state: the default when it had no event at or below the position.
    pub state: A,
    /// The sequence of its last event at or below the position (0: none).
    pub sequence: usize,
    /// The global position of that event (0: none).
    pub last_position: i64,
    /// The sequence the snapshot it started from ended at, if it started from one.
    pub snapshot: Option<usize>,
}

/// A snapshot that ends at or below a position.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotAt {
    /// The sequence of the last event it covers.
    pub last_sequence: usize,
    /// That event's global position.
    pub global_position: i64,
    /// The aggregate's state, as JSON.
    pub payload: Value,
}

/// Why a rebuild failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The store failed the read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event does not read as the aggregate's event type.
    #[error(
        "event {sequence} ({event_type} v{event_version}) of {aggregate_type}/{aggregate_id} does not decode: {source}"
    )]
    Decode {
        /// The aggregate's type.
        aggregate_type: String,
        /// The aggregate's id.
        aggregate_id: String,
        /// The event's sequence.
        sequence: i64,
        /// The event's type.
        event_type: String,
        /// The event's schema version.
        event_version: String,
        /// Why it does not decode.
        source: serde_json::Error,
    },
}

impl History {
    /// The position of the head of the log (0 for an empty log).
    pub async fn head(self, conn: &mut PgConnection) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(HEAD).fetch_one(&mut *conn).await?)
    }

    /// The position the log stood at at `time`: one before the first event recorded after
    /// it (in this scope), or the head when there is none. See the module documentation.
    pub async fn position_at(
        self,
        conn: &mut PgConnection,
        time: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let sql = match self {
            Self::Log => LOG_FIRST_AFTER,
            Self::BoundTenant => TENANT_FIRST_AFTER,
        };
        let first_after: Option<i64> = sqlx::query_scalar(sql)
            .bind(time)
            .fetch_optional(&mut *conn)
            .await?;
        match first_after {
            Some(position) => Ok(position.saturating_sub(1)),
            None => self.head(conn).await,
        }
    }

    /// The events of one aggregate with a sequence above `after`, at or below `position`,
    /// in sequence order.
    pub async fn events(
        self,
        conn: &mut PgConnection,
        aggregate_type: &str,
        aggregate_id: &str,
        after: i64,
        position: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = match self {
            Self::Log => LOG_EVENTS,
            Self::BoundTenant => TENANT_EVENTS,
        };
        let rows = sqlx::query(sql)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(after)
            .bind(position)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(RecordedEvent::from_row).collect()
    }

    /// The last event of one aggregate among `event_types`, at or below `position`: for a
    /// fact the aggregate's state does not keep (when it was created, when something last
    /// happened) once a rebuild started from a snapshot.
    pub async fn latest_of(
        self,
        conn: &mut PgConnection,
        aggregate_type: &str,
        aggregate_id: &str,
        event_types: &[&str],
        position: i64,
    ) -> Result<Option<RecordedEvent>, StoreError> {
        let sql = match self {
            Self::Log => LOG_LATEST,
            Self::BoundTenant => TENANT_LATEST,
        };
        let row = sqlx::query(sql)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(event_types)
            .bind(position)
            .fetch_optional(&mut *conn)
            .await?;
        row.as_ref().map(RecordedEvent::from_row).transpose()
    }

    /// The stored snapshot of one aggregate, if it ends at or below `position`.
    pub async fn snapshot(
        self,
        conn: &mut PgConnection,
        aggregate_type: &str,
        aggregate_id: &str,
        position: i64,
    ) -> Result<Option<SnapshotAt>, StoreError> {
        let sql = match self {
            Self::Log => LOG_SNAPSHOT,
            Self::BoundTenant => TENANT_SNAPSHOT,
        };
        let Some(row) = sqlx::query(sql)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(position)
            .fetch_optional(&mut *conn)
            .await?
        else {
            return Ok(None);
        };
        let last_sequence: i64 = row.try_get("last_sequence")?;
        Ok(Some(SnapshotAt {
            last_sequence: usize::try_from(last_sequence).map_err(|_| StoreError::Corrupt {
                column: "last_sequence",
                problem: format!("holds {last_sequence}, below 0"),
            })?,
            global_position: row.try_get("global_position")?,
            payload: row.try_get("payload")?,
        }))
    }

    /// Aggregate `A` with id `aggregate_id` as of `position`: its snapshot at or below the
    /// position if there is one that still reads, then its events after that, up to the
    /// position, applied with `Aggregate::apply`. `visit` sees each applied event (not
    /// those a snapshot covered) before it is applied.
    pub async fn rebuild<A: Aggregate>(
        self,
        conn: &mut PgConnection,
        aggregate_id: &str,
        position: i64,
        mut visit: impl FnMut(&RecordedEvent, &A::Event),
    ) -> Result<AsOf<A>, HistoryError> {
        let mut rebuilt = AsOf {
            state: A::default(),
            sequence: 0,
            last_position: 0,
            snapshot: None,
        };
        if let Some(snapshot) = self.snapshot(conn, A::TYPE, aggregate_id, position).await? {
            match serde_json::from_value::<A>(snapshot.payload) {
                Ok(state) => {
                    rebuilt = AsOf {
                        state,
                        sequence: snapshot.last_sequence,
                        last_position: snapshot.global_position,
                        snapshot: Some(snapshot.last_sequence),
                    };
                }
                Err(err) => tracing::debug!(
                    aggregate_type = A::TYPE,
                    aggregate_id,
                    "a snapshot that no longer reads is passed over: {err}"
                ),
            }
        }
        let after = i64::try_from(rebuilt.sequence).unwrap_or(i64::MAX);
        let events = self
            .events(conn, A::TYPE, aggregate_id, after, position)
            .await?;
        for record in events {
            let event: A::Event =
                serde_json::from_value(record.payload.clone()).map_err(|source| {
                    HistoryError::Decode {
                        aggregate_type: record.aggregate_type.clone(),
                        aggregate_id: record.aggregate_id.clone(),
                        sequence: record.sequence,
                        event_type: record.event_type.clone(),
                        event_version: record.event_version.clone(),
                        source,
                    }
                })?;
            visit(&record, &event);
            rebuilt.state.apply(event);
            rebuilt.sequence = usize::try_from(record.sequence).unwrap_or(usize::MAX);
            rebuilt.last_position = record.global_position;
        }
        Ok(rebuilt)
    }
}
