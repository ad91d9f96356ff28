//! PostgreSQL read models: the [`PgProjection`] trait, and applying events to one with its
//! checkpoint in the same transaction.
//!
//! Each projection owns a schema, `rm_<name>`, and writes to its tables with unqualified
//! names: the runner sets `search_path` to that schema, then `public`, for the transaction. That is what lets a rebuild
//! fill a shadow schema with the very same code and then swap it in.

use std::future::Future;
use std::sync::Arc;

use eventstore::{LogReader, RecordedEvent};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::{ProjectionError, Target};

/// A read model in PostgreSQL: a named, versioned function of the ordered event log.
pub trait PgProjection: Send + Sync + 'static {
    /// The projection's name: lowercase letters, digits and `_`, starting with a letter. Its
    /// tables live in the schema `rm_<name>`.
    fn name(&self) -> &'static str;

    /// The version of the projection's code and tables. A change rebuilds the model.
    fn version(&self) -> i32;

    /// Whether the projection reads `event`. The others are passed over, but their
    /// positions still move the checkpoint.
    fn wants(&self, event: &RecordedEvent) -> bool;

    /// The statements that create the tables, with unqualified names, run once in an
    /// empty schema. Several statements are separated by `;`.
    fn schema_sql(&self) -> &'static str;

    /// Applies `events`, in order, in the open transaction (whose `search_path` is the
    /// model's schema, then `public`). A failure names the position of the event that failed when it is
    /// known; the runner then tries the events one at a time to find it.
    fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;
}

/// Why a projection could not apply an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApplyError {
    /// The event that failed, if known.
    pub position: Option<i64>,
    /// What went wrong.
    pub message: String,
}

impl ApplyError {
    /// A failure of the event at `position`.
    pub fn at(position: i64, message: impl std::fmt::Display) -> Self {
        Self {
            position: Some(position),
            message: message.to_string(),
        }
    }
}

impl ApplyError {
    /// A failure of `event`, named by its aggregate, type and position.
    pub fn of(event: &RecordedEvent, problem: impl std::fmt::Display) -> Self {
        Self::at(
            event.global_position,
            format!(
                "{} {} (aggregate {}, position {}): {problem}",
                event.aggregate_type, event.event_type, event.aggregate_id, event.global_position
            ),
        )
    }
}

impl From<sqlx::Error> for ApplyError {
    fn from(err: sqlx::Error) -> Self {
        Self {
            position: None,
            message: err.to_string(),
        }
    }
}

/// The schema of a projection's live tables.
pub fn schema_of(name: &str) -> String {
    format!("rm_{name}")
}

/// The schema a rebuild fills before it is swapped in.
pub(crate) fn shadow_of(name: &str) -> String {
    format!("rm_{name}__shadow")
}

/// `name` as a quoted SQL identifier.
pub(crate) fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Checks that a projection's name is usable as part of a schema name.
pub fn check_name(name: &str) -> Result<(), ProjectionError> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if starts_with_letter
        && name.len() <= 48
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        Ok(())
    } else {
        Err(ProjectionError::BadName(name.to_owned()))
    }
}

/// Runs `projection.schema_sql()` in `schema`, which must exist and be empty.
pub(crate) async fn create_tables<P: PgProjection>(
    tx: &mut Transaction<'_, Postgres>,
    projection: &P,
    schema: &str,
) -> Result<(), ProjectionError> {
    sqlx::query(&format!(
        "SET LOCAL search_path TO {}, public",
        quoted(schema)
    ))
    .execute(&mut **tx)
    .await?;
    // A plain string runs as a simple query, which may hold several statements. (`raw_sql`
    // would too, but its future cannot be proven `Send` inside a spawned runner.)
    sqlx::Executor::execute(&mut **tx, projection.schema_sql()).await?;
    Ok(())
}

/// Where a projection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The version the model was built with.
    pub version: i32,
    /// The last position applied.
    pub position: i64,
    /// `Some` when the projection is parked on a poison event.
    pub parked: Option<Parked>,
    /// The positions an operator chose to skip (`projection_skips`), in order.
    pub skipped: Vec<i64>,
}

/// A projection stopped on an event that keeps failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// The event's position.
    pub position: i64,
    /// Its last error.
    pub error: String,
}

type CheckpointRow = (i32, i64, String, Option<i64>, Option<String>, Vec<i64>);

fn checkpoint_of(row: CheckpointRow) -> Checkpoint {
    let (version, position, status, parked_position, parked_error, skipped) = row;
    Checkpoint {
        version,
        position,
        parked: match (status.as_str(), parked_position) {
            ("parked", Some(position)) => Some(Parked {
                position,
                error: parked_error.unwrap_or_default(),
            }),
            _ => None,
        },
        skipped,
    }
}

const SELECT_CHECKPOINT: &str = "SELECT version, position, status, parked_position, parked_error,
        ARRAY(SELECT s.position FROM projection_skips s WHERE s.name = c.name ORDER BY 1)
   FROM projection_checkpoints c WHERE name = $1";

/// The checkpoint of `name`, if the projection was ever set up.
pub async fn checkpoint(pool: &PgPool, name: &str) -> Result<Option<Checkpoint>, ProjectionError> {
    let row: Option<CheckpointRow> = sqlx::query_as(SELECT_CHECKPOINT)
        .bind(name)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(checkpoint_of))
}

/// Locks and reads the checkpoint of `name` in `tx`: live batches and the swap of a
/// rebuild take this lock, so they never interleave.
pub(crate) async fn lock_checkpoint(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<Checkpoint, ProjectionError> {
    let row: Option<CheckpointRow> =
        sqlx::query_as(&format!("{SELECT_CHECKPOINT} FOR UPDATE OF c"))
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?;
    row.map(checkpoint_of)
        .ok_or_else(|| ProjectionError::NotSetUp(name.to_owned()))
}

/// A PostgreSQL projection and the database of its model, as a runner's [`Target`].
#[derive(Debug)]
pub struct PgTarget<P> {
    pool: PgPool,
    projection: Arc<P>,
}

impl<P: PgProjection> PgTarget<P> {
    /// `projection`'s model in `pool`.
    pub fn new(pool: PgPool, projection: P) -> Self {
        Self {
            pool,
            projection: Arc::new(projection),
        }
    }

    fn borrowed(&self) -> PgRef<'_, P> {
        PgRef::new(&self.pool, &self.projection)
    }
}

/// A borrowed [`PgTarget`].
#[derive(Debug)]
pub struct PgRef<'a, P> {
    pool: &'a PgPool,
    projection: &'a P,
}

impl<'a, P: PgProjection> PgRef<'a, P> {
    /// `projection`'s model in `pool`.
    pub fn new(pool: &'a PgPool, projection: &'a P) -> Self {
        Self { pool, projection }
    }
}

impl<P: PgProjection> Target for PgRef<'_, P> {
    fn name(&self) -> &'static str {
        self.projection.name()
    }

    fn pool(&self) -> &PgPool {
        self.pool
    }

    async fn prepare(&self, reader: &LogReader, page: i64) -> Result<(), ProjectionError> {
        match setup(self.pool, self.projection).await? {
            Setup::Current | Setup::Created => {}
            Setup::Outdated { built } => {
                tracing::info!(
                    projection = self.projection.name(),
                    "rebuilding: the model was built by version {built}, this is version {}",
                    self.projection.version()
                );
                rebuild(self.pool, self.projection, reader, None, page, |_, _| {}).await?;
            }
        }
        Ok(())
    }

    async fn checkpoint(&self) -> Result<Checkpoint, ProjectionError> {
        checkpoint(self.pool, self.projection.name())
            .await?
            .ok_or_else(|| ProjectionError::NotSetUp(self.projection.name().to_owned()))
    }

    async fn apply_batch(&self, events: &[RecordedEvent]) -> Result<Applied, BatchError> {
        apply_batch(self.pool, self.projection, events).await
    }
}

impl<P: PgProjection> Target for PgTarget<P> {
    fn name(&self) -> &'static str {
        self.projection.name()
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn prepare(&self, reader: &LogReader, page: i64) -> Result<(), ProjectionError> {
        self.borrowed().prepare(reader, page).await
    }

    async fn checkpoint(&self) -> Result<Checkpoint, ProjectionError> {
        self.borrowed().checkpoint().await
    }

    async fn apply_batch(&self, events: &[RecordedEvent]) -> Result<Applied, BatchError> {
        self.borrowed().apply_batch(events).await
    }
}

/// What [`setup`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// The model exists at the projection's version.
    Current,
    /// The model was created empty, at position 0.
    Created,
    /// The model exists at another version: it must be rebuilt.
    Outdated {
        /// The version it was built with.
        built: i32,
    },
}

/// Creates the projection's schema, tables and checkpoint if missing, and says whether the
/// model is current.
pub async fn setup<P: PgProjection>(
    pool: &PgPool,
    projection: &P,
) -> Result<Setup, ProjectionError> {
    check_name(projection.name())?;
    let mut tx = pool.begin().await?;
    // Two processes setting up one projection: the second waits here, then finds it done.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('projection setup ' || $1))")
        .bind(projection.name())
        .execute(&mut *tx)
        .await?;
    let existing: Option<i32> =
        sqlx::query_scalar("SELECT version FROM projection_checkpoints WHERE name = $1")
            .bind(projection.name())
            .fetch_optional(&mut *tx)
            .await?;
    let schema = schema_of(projection.name());
    let schema_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&schema)
            .fetch_one(&mut *tx)
            .await?;
    let outcome = match (existing, schema_exists) {
        (Some(version), true) if version == projection.version() => Setup::Current,
        (Some(version), true) => Setup::Outdated { built: version },
        _ => {
            sqlx::query(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                quoted(&schema)
            ))
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!("CREATE SCHEMA {}", quoted(&schema)))
                .execute(&mut *tx)
                .await?;
            create_tables(&mut tx, projection, &schema).await?;
            sqlx::query(
                "INSERT INTO projection_checkpoints (name, version, position) VALUES ($1, $2, 0)
                 ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, position = 0,
                     status = 'running', parked_position = NULL, parked_error = NULL,
                     parked_at = NULL, skip_position = NULL, updated_at = now()",
            )
            .bind(projection.name())
            .bind(projection.version())
            .execute(&mut *tx)
            .await?;
            Setup::Created
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// What applying a batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The checkpoint moved to `position` (or stayed, if every event was at or below it).
    Through {
        /// The checkpoint now.
        position: i64,
    },
    /// The batch does not follow the checkpoint: events `from..to` (both included) are
    /// missing and must be read from the log first. Nothing was applied.
    Gap {
        /// The first missing position.
        from: i64,
        /// The last missing position.
        to: i64,
    },
    /// The projection is parked; nothing was applied.
    Parked(Parked),
}

/// Applies `events` (in position order) and moves the checkpoint, in one transaction.
/// Events at or below the checkpoint are passed over, so a redelivered batch is harmless.
pub async fn apply_batch<P: PgProjection>(
    pool: &PgPool,
    projection: &P,
    events: &[RecordedEvent],
) -> Result<Applied, BatchError> {
    let mut tx = pool.begin().await.map_err(BatchError::store)?;
    let checkpoint = lock_checkpoint(&mut tx, projection.name())
        .await
        .map_err(BatchError::Store)?;
    if let Some(parked) = checkpoint.parked {
        return Ok(Applied::Parked(parked));
    }
    let (wanted, last) = match crate::fresh_part(
        events,
        checkpoint.position,
        |event| projection.wants(event),
        &checkpoint.skipped,
    ) {
        Ok(part) => part,
        Err(answer) => return Ok(answer),
    };
    if !wanted.is_empty() {
        sqlx::query(&format!(
            "SET LOCAL search_path TO {}, public",
            quoted(&schema_of(projection.name()))
        ))
        .execute(&mut *tx)
        .await
        .map_err(BatchError::store)?;
        projection
            .apply(&mut tx, &wanted)
            .await
            .map_err(BatchError::Apply)?;
    }
    sqlx::query(
        "UPDATE projection_checkpoints SET position = $2, updated_at = now() WHERE name = $1",
    )
    .bind(projection.name())
    .bind(last)
    .execute(&mut *tx)
    .await
    .map_err(BatchError::store)?;
    tx.commit().await.map_err(BatchError::store)?;
    Ok(Applied::Through { position: last })
}

/// Why a batch was not applied. Nothing of it was written.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The projection failed on an event.
    #[error("apply: {0}")]
    Apply(ApplyError),
    /// PostgreSQL failed around it.
    #[error(transparent)]
    Store(ProjectionError),
}

impl BatchError {
    fn store(err: sqlx::Error) -> Self {
        Self::Store(ProjectionError::Database(err))
    }
}

/// Parks `name` on the event at `position`, with its error. It applies nothing more until
/// it is resumed or that event is skipped.
pub async fn park(
    pool: &PgPool,
    name: &str,
    position: i64,
    error: &str,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "UPDATE projection_checkpoints
            SET status = 'parked', parked_position = $2, parked_error = $3, parked_at = now(),
                updated_at = now()
          WHERE name = $1",
    )
    .bind(name)
    .bind(position)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Resumes a parked projection after a fix: it tries the parked event again.
pub async fn resume(pool: &PgPool, name: &str) -> Result<bool, ProjectionError> {
    let done = sqlx::query(
        "UPDATE projection_checkpoints
            SET status = 'running', parked_position = NULL, parked_error = NULL,
                parked_at = NULL, updated_at = now()
          WHERE name = $1 AND status = 'parked'",
    )
    .bind(name)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Skips the event a projection is parked on, for good, and resumes it. The skip is
/// recorded in `projection_skips` with who asked and the event's error. Only the parked
/// position can be skipped: nothing is skipped silently or by accident.
pub async fn skip(
    pool: &PgPool,
    name: &str,
    position: i64,
    skipped_by: &str,
) -> Result<(), ProjectionError> {
    let mut tx = pool.begin().await?;
    let checkpoint = lock_checkpoint(&mut tx, name).await?;
    let Some(parked) = checkpoint
        .parked
        .filter(|parked| parked.position == position)
    else {
        return Err(ProjectionError::NotParkedAt {
            name: name.to_owned(),
            position,
        });
    };
    sqlx::query(
        "INSERT INTO projection_skips (name, position, error, skipped_by) VALUES ($1, $2, $3, $4)",
    )
    .bind(name)
    .bind(position)
    .bind(&parked.error)
    .bind(skipped_by)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE projection_checkpoints
            SET status = 'running', parked_position = NULL, parked_error = NULL,
                parked_at = NULL, skip_position = $2, updated_at = now()
          WHERE name = $1",
    )
    .bind(name)
    .bind(position)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// Events read from the log.
    pub events: u64,
    /// The position the model stands at after the swap; live processing goes on after it.
    pub position: i64,
}

/// Rebuilds a projection from the log into a shadow schema, through `to` (or the head of the
/// log), then swaps it in (blue/green) and sets the checkpoint to where the rebuild stopped,
/// in one transaction that holds the checkpoint's lock, so live batches neither interleave
/// nor leave a gap. `progress` is called after every page with the position reached and
/// the target.
pub async fn rebuild<P: PgProjection>(
    pool: &PgPool,
    projection: &P,
    reader: &eventstore::LogReader,
    to: Option<i64>,
    page: i64,
    mut progress: impl FnMut(i64, i64) + Send,
) -> Result<Rebuilt, ProjectionError> {
    use futures::TryStreamExt;

    check_name(projection.name())?;
    if checkpoint(pool, projection.name()).await?.is_none() {
        setup(pool, projection).await?;
    }
    let shadow = shadow_of(projection.name());
    let live = schema_of(projection.name());
    let mut tx = pool.begin().await?;
    sqlx::query(&format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        quoted(&shadow)
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!("CREATE SCHEMA {}", quoted(&shadow)))
        .execute(&mut *tx)
        .await?;
    create_tables(&mut tx, projection, &shadow).await?;
    tx.commit().await?;

    let target = match to {
        Some(to) => to,
        None => reader.head().await?.position,
    };
    let skipped = checkpoint(pool, projection.name())
        .await?
        .map(|checkpoint| checkpoint.skipped)
        .unwrap_or_default();
    let mut position = 0;
    let mut events = 0u64;
    while position < target {
        let last = target.min(position.saturating_add(page.max(1)));
        let batch: Vec<RecordedEvent> = reader.read_range(position + 1, last).try_collect().await?;
        if batch.is_empty() {
            break;
        }
        events += batch.len() as u64;
        let wanted: Vec<&RecordedEvent> = batch
            .iter()
            .filter(|e| projection.wants(e) && skipped.binary_search(&e.global_position).is_err())
            .collect();
        if !wanted.is_empty() {
            let mut tx = pool.begin().await?;
            sqlx::query(&format!(
                "SET LOCAL search_path TO {}, public",
                quoted(&shadow)
            ))
            .execute(&mut *tx)
            .await?;
            projection
                .apply(&mut tx, &wanted)
                .await
                .map_err(|err| ProjectionError::Rebuild {
                    name: projection.name().to_owned(),
                    problem: err.to_string(),
                })?;
            tx.commit().await?;
        }
        position = last;
        progress(position, target);
    }

    let mut tx = pool.begin().await?;
    lock_checkpoint(&mut tx, projection.name()).await?;
    let old = format!("rm_{}__old", projection.name());
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", quoted(&old)))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "ALTER SCHEMA {} RENAME TO {}",
        quoted(&live),
        quoted(&old)
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "ALTER SCHEMA {} RENAME TO {}",
        quoted(&shadow),
        quoted(&live)
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!("DROP SCHEMA {} CASCADE", quoted(&old)))
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE projection_checkpoints
            SET version = $2, position = $3, status = 'running', parked_position = NULL,
                parked_error = NULL, parked_at = NULL, updated_at = now()
          WHERE name = $1",
    )
    .bind(projection.name())
    .bind(projection.version())
    .bind(position)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Rebuilt { events, position })
}
