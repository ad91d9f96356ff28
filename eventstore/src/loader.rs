//! The group loader: a few tasks that turn the aggregate loads of concurrent commands into
//! few queries.
//!
//! Every command starts by loading its aggregate's events. Done one query per command, on
//! a pooled connection, that costs a pool checkout (with its liveness ping) and a query per
//! command, and at high concurrency the per-query overhead is most of the database's work.
//! The loader reads the way the [`Appender`](crate::Appender) writes: commands send their
//! requests over a channel, and each loader task takes whatever has queued up (up to a
//! bound) and reads it with one query on a connection of its own:
//!
//! ```sql
//! SELECT ... FROM unnest($types, $ids, $afters) WITH ORDINALITY AS r(...)
//!   JOIN events e ON (e.aggregate_type, e.aggregate_id) = (r.type, r.id) AND e.sequence > r.after
//!  ORDER BY r.ord, e.sequence
//! ```
//!
//! A lone request is read with the plain single-aggregate query. While one task's query
//! runs, requests queue for the next task, so batches grow with load and a lone command pays
//! for one query and no checkout.
//!
//! Reads stay current: each query starts after every request in it was sent, so it sees
//! every append committed before the command began loading, exactly as a query of its own
//! would.

use std::sync::Arc;

use cqrs_es::persist::SerializedEvent;
use futures::TryStreamExt;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{Connection, Executor, PgConnection, PgPool, Row};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::LoadError;
use crate::repository::serialized_event;

/// How many loader tasks run, and the bounds of their batches and queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Loader tasks, each with its own connection. Two keep one query in flight while the
    /// next batch gathers.
    pub connections: usize,
    /// The most aggregates read by one query.
    pub max_batch: usize,
    /// How many loads may wait for a loader task before senders wait too.
    pub queue_capacity: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            connections: 2,
            max_batch: 128,
            queue_capacity: 1024,
        }
    }
}

const SELECT_ONE: &str = "\
SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence";

const SELECT_MANY: &str = "\
SELECT r.ord, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version,
       e.payload, e.metadata
  FROM unnest($1::text[], $2::text[], $3::bigint[])
       WITH ORDINALITY AS r(aggregate_type, aggregate_id, after, ord)
  JOIN events e
    ON e.aggregate_type = r.aggregate_type
   AND e.aggregate_id = r.aggregate_id
   AND e.sequence > r.after
 ORDER BY r.ord, e.sequence";

type Loaded = Result<Vec<SerializedEvent>, LoadError>;

struct Request {
    aggregate_type: String,
    aggregate_id: String,
    after: i64,
    reply: oneshot::Sender<Loaded>,
}

/// The sending side of the loader: cheap to clone, one per repository.
#[derive(Debug, Clone)]
pub struct Loader {
    sender: mpsc::Sender<Request>,
    stats: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    queries: AtomicU64,
}

/// What the loader has done since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderStats {
    /// Aggregate loads answered from the database.
    pub requests: u64,
    /// Queries run for them (including a retry on a fresh connection).
    pub queries: u64,
}

/// The running loader tasks. Dropping it leaves them running; [`LoaderTask::abort`] stops
/// them at once.
#[derive(Debug)]
pub struct LoaderTask {
    handles: Vec<JoinHandle<()>>,
}

impl LoaderTask {
    /// Stops the tasks immediately. Loads in flight fail with [`LoadError::Stopped`].
    pub fn abort(&self) {
        for handle in &self.handles {
            handle.abort();
        }
    }

    /// Waits until the tasks end: after every [`Loader`] is dropped and the queue drained.
    pub async fn join(self) {
        for handle in self.handles {
            if let Err(err) = handle.await
                && err.is_panic()
            {
                tracing::error!("an event store loader task panicked: {err}");
            }
        }
    }
}

impl Loader {
    /// Starts the loader tasks on the current Tokio runtime. They connect with the pool's
    /// settings, on first use.
    pub fn spawn(pool: &PgPool, config: LoaderConfig) -> (Self, LoaderTask) {
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let stats = Arc::new(Counters::default());
        let handles = (0..config.connections.max(1))
            .map(|_| {
                tokio::spawn(run(
                    pool.connect_options(),
                    config.max_batch.max(1),
                    Arc::clone(&receiver),
                    Arc::clone(&stats),
                ))
            })
            .collect();
        (Self { sender, stats }, LoaderTask { handles })
    }

    /// How many loads were answered, with how many queries.
    pub fn stats(&self) -> LoaderStats {
        LoaderStats {
            requests: self.stats.requests.load(Ordering::Relaxed),
            queries: self.stats.queries.load(Ordering::Relaxed),
        }
    }

    /// The events of one aggregate with a sequence above `after`, in sequence order.
    pub async fn load(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: i64,
    ) -> Result<Vec<SerializedEvent>, LoadError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Request {
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id: aggregate_id.to_owned(),
                after,
                reply,
            })
            .await
            .map_err(|_| LoadError::Stopped)?;
        answer.await.map_err(|_| LoadError::Stopped)?
    }
}

async fn run(
    options: Arc<PgConnectOptions>,
    max_batch: usize,
    receiver: Arc<Mutex<mpsc::Receiver<Request>>>,
    stats: Arc<Counters>,
) {
    let mut connection: Option<PgConnection> = None;
    loop {
        let mut batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match receiver.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            batch
        };
        // A command that stopped waiting (its task was cancelled) is not read for.
        batch.retain(|request| !request.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        stats
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let results = read_with_retry(&options, &mut connection, &batch, &stats).await;
        match results {
            Ok(results) => {
                for (request, result) in batch.into_iter().zip(results) {
                    let _ = request.reply.send(result);
                }
            }
            Err(failure) => {
                for request in batch {
                    let _ = request.reply.send(Err(failure.clone()));
                }
            }
        }
    }
}

/// Reads a batch on the task's connection, opening one if there is none. A connection that
/// turns out to be broken (the server restarted, or ended it) is replaced and the read,
/// which changes nothing, is run once more on the new one.
async fn read_with_retry(
    options: &PgConnectOptions,
    connection: &mut Option<PgConnection>,
    batch: &[Request],
    stats: &Counters,
) -> Result<Vec<Loaded>, LoadError> {
    let reused = connection.is_some();
    for attempt in 0..2 {
        let mut conn = match connection.take() {
            Some(conn) => conn,
            None => connect(options).await?,
        };
        stats.queries.fetch_add(1, Ordering::Relaxed);
        match read(&mut conn, batch).await {
            Ok(results) => {
                *connection = Some(conn);
                return Ok(results);
            }
            Err(err) => {
                let failure = LoadError::from(err);
                if !matches!(failure, LoadError::Unavailable(_)) {
                    // The statement failed for a reason of its own; the connection is fine.
                    *connection = Some(conn);
                    return Err(failure);
                }
                if !(reused && attempt == 0) {
                    return Err(failure);
                }
                tracing::info!("an event store loader connection broke; reconnecting: {failure}");
            }
        }
    }
    Err(LoadError::Stopped)
}

/// The `application_name` of the loader's connections, as `pg_stat_activity` shows them.
pub const APPLICATION_NAME: &str = "platform eventstore loader";

/// Opens a loader task's own connection.
async fn connect(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    let options = options.clone().application_name(APPLICATION_NAME);
    let mut connection = PgConnection::connect_with(&options).await?;
    // The loader runs the same two statements for ever: plan them once.
    connection
        .execute("SET plan_cache_mode = force_generic_plan")
        .await?;
    Ok(connection)
}

/// Reads the events of every request in the batch. A row that cannot be decoded fails only
/// its own request.
async fn read(conn: &mut PgConnection, batch: &[Request]) -> Result<Vec<Loaded>, sqlx::Error> {
    if let [request] = batch {
        let mut rows = sqlx::query(SELECT_ONE)
            .bind(&request.aggregate_type)
            .bind(&request.aggregate_id)
            .bind(request.after)
            .fetch(&mut *conn);
        let mut events = Vec::new();
        while let Some(row) = rows.try_next().await? {
            match serialized_event(&row) {
                Ok(event) => events.push(event),
                Err(err) => return Ok(vec![Err(err.into())]),
            }
        }
        return Ok(vec![Ok(events)]);
    }
    let types: Vec<&str> = batch.iter().map(|r| r.aggregate_type.as_str()).collect();
    let ids: Vec<&str> = batch.iter().map(|r| r.aggregate_id.as_str()).collect();
    let afters: Vec<i64> = batch.iter().map(|r| r.after).collect();
    let mut results: Vec<Loaded> = batch.iter().map(|_| Ok(Vec::new())).collect();
    let mut rows = sqlx::query(SELECT_MANY)
        .bind(&types)
        .bind(&ids)
        .bind(&afters)
        .fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        let index = ordinal(&row)?.checked_sub(1);
        let Some(slot) = index.and_then(|index| results.get_mut(index)) else {
            continue;
        };
        if let Ok(events) = slot {
            match serialized_event(&row) {
                Ok(event) => events.push(event),
                Err(err) => *slot = Err(err.into()),
            }
        }
    }
    Ok(results)
}

/// The 1-based position of the row's request in the batch.
fn ordinal(row: &PgRow) -> Result<usize, sqlx::Error> {
    let ord: i64 = row.try_get("ord")?;
    Ok(usize::try_from(ord).unwrap_or(usize::MAX))
}
