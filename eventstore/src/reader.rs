//! The global reader: the log from a position onwards, in order, in bounded memory.
//!
//! The relay, replays and audits read through it. Because positions are assigned under the
//! log-head lock and commit in order, a reader that asks for everything after the last
//! position it saw can never skip an event that commits later.

use futures::Stream;
use futures::stream::{self, TryStreamExt};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::canonical::Digest32;
use crate::error::StoreError;
use crate::record::{RecordedEvent, StoredEvent, digest_column};

/// Rows fetched per round trip unless configured otherwise.
pub const DEFAULT_PAGE_SIZE: i64 = 500;

/// The last event of the log: its position (0 for an empty log) and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHead {
    /// The position of the last event, or 0.
    pub position: i64,
    /// The hash of the last event, or 32 zero bytes.
    pub hash: Digest32,
}

/// Reads the event log in `global_position` order.
#[derive(Debug, Clone)]
pub struct LogReader {
    pool: PgPool,
    page_size: i64,
}

impl LogReader {
    /// A reader over `pool` that fetches [`DEFAULT_PAGE_SIZE`] rows at a time.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            page_size: DEFAULT_PAGE_SIZE,
        }
    }

    /// Sets how many rows one round trip fetches: the most a stream holds in memory.
    #[must_use]
    pub fn with_page_size(mut self, page_size: i64) -> Self {
        self.page_size = page_size.max(1);
        self
    }

    /// The pool this reader reads from.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The current head of the log.
    pub async fn head(&self) -> Result<LogHead, StoreError> {
        let row = sqlx::query("SELECT position, hash FROM log_head")
            .fetch_one(&self.pool)
            .await?;
        Ok(LogHead {
            position: row.try_get("position")?,
            hash: digest_column(&row, "hash")?,
        })
    }

    /// Every event at `from` or later, in order, ending at the events committed when the
    /// last page was read.
    pub fn read_from(
        &self,
        from: i64,
    ) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + 'static {
        self.read_range(from, i64::MAX)
    }

    /// The events from `from` to `to`, both included, in order.
    pub fn read_range(
        &self,
        from: i64,
        to: i64,
    ) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + 'static {
        let pool = self.pool.clone();
        let page_size = self.page_size;
        let pages = stream::try_unfold(Some(from.max(1)), move |next| {
            let pool = pool.clone();
            async move {
                let Some(next) = next.filter(|next| *next <= to) else {
                    return Ok::<_, StoreError>(None);
                };
                let page = read_page(&pool, next, to, page_size).await?;
                let following = match page.last() {
                    Some(last) if (page.len() as i64) == page_size => {
                        last.global_position.checked_add(1)
                    }
                    // A short page is the end of what was committed.
                    _ => None,
                };
                if page.is_empty() {
                    return Ok(None);
                }
                Ok(Some((stream::iter(page.into_iter().map(Ok)), following)))
            }
        });
        pages.try_flatten()
    }
}

const SELECT_PAGE: &str = "\
SELECT global_position, event_id, aggregate_type, aggregate_id, sequence, event_type,
       event_version, tenant_id, recorded_at, payload, metadata, prev_hash, tenant_prev_hash, hash
  FROM events
 WHERE global_position >= $1 AND global_position <= $2
 ORDER BY global_position
 LIMIT $3";

pub(crate) async fn read_page(
    pool: &PgPool,
    from: i64,
    to: i64,
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let rows = sqlx::query(SELECT_PAGE)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(RecordedEvent::from_row).collect()
}

const SELECT_STORED_PAGE: &str = "\
SELECT global_position, event_id, aggregate_type, aggregate_id, sequence, event_type,
       event_version, tenant_id, recorded_at, payload::text AS payload, metadata::text AS metadata,
       prev_hash, tenant_prev_hash, hash
  FROM events
 WHERE global_position >= $1 AND global_position <= $2
 ORDER BY global_position
 LIMIT $3";

/// Like [`read_page`], with the payload and metadata as the text the log stores, unparsed.
pub(crate) async fn read_stored_page(
    pool: &PgPool,
    from: i64,
    to: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>, StoreError> {
    let rows = sqlx::query(SELECT_STORED_PAGE)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(StoredEvent::from_row).collect()
}

/// Which events [`read_filtered_page`] returns; a `None` member selects every value.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogFilter<'a> {
    /// Only this tenant's events (by the `tenant_id` column); `None` for every event,
    /// platform-level ones included.
    pub tenant: Option<Uuid>,
    /// Only events of these aggregate types.
    pub aggregate_types: Option<&'a [String]>,
    /// Only events of these event types.
    pub event_types: Option<&'a [String]>,
}

const SELECT_TENANT_PAGE: &str = "\
SELECT global_position, event_id, aggregate_type, aggregate_id, sequence, event_type,
       event_version, tenant_id, recorded_at, payload, metadata, prev_hash, tenant_prev_hash, hash
  FROM events
 WHERE tenant_id = $1 AND global_position >= $2 AND global_position <= $3
   AND ($4::text[] IS NULL OR aggregate_type = ANY($4))
   AND ($5::text[] IS NULL OR event_type = ANY($5))
 ORDER BY global_position
 LIMIT $6";

const SELECT_FILTERED_PAGE: &str = "\
SELECT global_position, event_id, aggregate_type, aggregate_id, sequence, event_type,
       event_version, tenant_id, recorded_at, payload, metadata, prev_hash, tenant_prev_hash, hash
  FROM events
 WHERE global_position >= $1 AND global_position <= $2
   AND ($3::text[] IS NULL OR aggregate_type = ANY($3))
   AND ($4::text[] IS NULL OR event_type = ANY($4))
 ORDER BY global_position
 LIMIT $5";

/// The first `limit` events from `from` to `to`, both included, that `filter` selects, in
/// order. A tenant's page is read through the `(tenant_id, global_position)` index. Fewer
/// than `limit` events means that no other selected event lies in the range, as far as it
/// was committed when the statement started.
pub async fn read_filtered_page(
    pool: &PgPool,
    filter: &LogFilter<'_>,
    from: i64,
    to: i64,
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let query = match filter.tenant {
        Some(tenant) => sqlx::query(SELECT_TENANT_PAGE).bind(tenant),
        None => sqlx::query(SELECT_FILTERED_PAGE),
    };
    let rows = query
        .bind(from)
        .bind(to)
        .bind(filter.aggregate_types)
        .bind(filter.event_types)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(RecordedEvent::from_row).collect()
}
