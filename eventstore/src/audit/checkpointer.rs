//! The checkpointer: signs the log head every N events or T seconds, whichever comes first.
//!
//! Each checkpoint is made in one transaction that first takes a transaction-scoped advisory
//! lock, so any number of processes may run a checkpointer: they take turns, and the one that
//! finds the head already signed does nothing. The witness line, when configured, is written
//! and flushed to disk before the checkpoint is stored.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::{PgPool, Row as _};
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::StoreError;
use crate::record::digest_column;

use super::checkpoint::Checkpoint;
use super::key::SigningKey;
use super::merkle::{self, ChainHead};
use super::store;

/// Serializes checkpoint signing across processes (`pg_advisory_xact_lock`).
const LOCK_KEY: i64 = 0x706c_6175_6469_7463;

/// When to sign.
#[derive(Debug, Clone)]
pub struct CheckpointerConfig {
    /// Sign once this many events were appended since the last checkpoint.
    pub every: i64,
    /// Sign once this long passed since the last checkpoint, if the head moved.
    pub interval: Duration,
    /// How often to look at the head.
    pub poll: Duration,
    /// An append-only file that also receives every checkpoint, as a witness.
    pub witness: Option<PathBuf>,
}

impl Default for CheckpointerConfig {
    fn default() -> Self {
        Self {
            every: 1_000,
            interval: Duration::from_secs(10),
            poll: Duration::from_millis(250),
            witness: None,
        }
    }
}

/// Why a checkpoint could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The witness file could not be written; the checkpoint was not stored.
    #[error("cannot append to the witness file {path}: {source}")]
    Witness {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

impl From<sqlx::Error> for CheckpointError {
    fn from(err: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(err))
    }
}

/// Signs checkpoints of one log.
#[derive(Debug)]
pub struct Checkpointer {
    pool: PgPool,
    key: Arc<SigningKey>,
    config: CheckpointerConfig,
    /// Every chain's head at `heads_at`, kept between checkpoints so that each one reads only
    /// the events appended since.
    heads: BTreeMap<Option<Uuid>, ChainHead>,
    heads_at: i64,
}

impl Checkpointer {
    /// A checkpointer of the log in `pool`, signing with `key`.
    pub fn new(pool: PgPool, key: Arc<SigningKey>, config: CheckpointerConfig) -> Self {
        Self {
            pool,
            key,
            config,
            heads: BTreeMap::new(),
            heads_at: 0,
        }
    }

    /// Signs the log head, unless a checkpoint already signs it (or the log is empty).
    /// Returns the new checkpoint.
    #[tracing::instrument(skip(self), fields(kid = %self.key.kid()))]
    pub async fn checkpoint_now(&mut self) -> Result<Option<Checkpoint>, CheckpointError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        let head = sqlx::query("SELECT position, hash FROM log_head")
            .fetch_one(&mut *tx)
            .await?;
        let position: i64 = head.try_get("position")?;
        let head_hash = digest_column(&head, "hash")?;
        let last: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM audit_checkpoints")
            .fetch_one(&mut *tx)
            .await?;
        if position == 0 || last.is_some_and(|last| last >= position) {
            return Ok(None);
        }
        self.advance_heads(&mut tx, position).await?;
        let leaves: Vec<_> = self.heads.values().map(ChainHead::leaf_hash).collect();
        let checkpoint = Checkpoint::sign(
            &self.key,
            position,
            head_hash,
            merkle::root(&leaves),
            Utc::now(),
        );
        if let Some(path) = &self.config.witness {
            append_witness(path.clone(), &checkpoint).await?;
        }
        store::record_key(&mut *tx, self.key.public()).await?;
        store::store_checkpoint(&mut *tx, &checkpoint).await?;
        tx.commit().await?;
        tracing::debug!(position, "signed a checkpoint");
        Ok(Some(checkpoint))
    }

    async fn advance_heads(
        &mut self,
        tx: &mut sqlx::PgConnection,
        position: i64,
    ) -> Result<(), StoreError> {
        if self.heads_at == 0 || self.heads_at > position {
            self.heads = store::chain_heads_at(&mut *tx, position)
                .await?
                .into_iter()
                .map(|head| (head.tenant_id, head))
                .collect();
        } else {
            for head in store::chain_events_between(&mut *tx, self.heads_at, position).await? {
                self.heads.insert(head.tenant_id, head);
            }
        }
        self.heads_at = position;
        Ok(())
    }

    /// Runs until `stop` completes: looks at the head every `poll`, and signs when
    /// `every` events or `interval` have passed since the last checkpoint. A failure is
    /// logged and retried after a pause; it never stops the loop.
    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        let mut last_signed = Instant::now();
        let mut pause = self.config.poll;
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(pause) => {}
            }
            match self.due(last_signed).await {
                Ok(false) => {
                    pause = self.config.poll;
                    continue;
                }
                Ok(true) => {}
                Err(err) => {
                    pause = (pause * 2).min(Duration::from_secs(10));
                    tracing::warn!(error = %err, "cannot read the log head for a checkpoint; retrying");
                    continue;
                }
            }
            match self.checkpoint_now().await {
                Ok(_) => {
                    last_signed = Instant::now();
                    pause = self.config.poll;
                }
                Err(err) => {
                    pause = (pause * 2).min(Duration::from_secs(10));
                    tracing::warn!(error = %err, "cannot sign a checkpoint; retrying");
                }
            }
        }
    }

    /// Whether a checkpoint is due: the head moved past the last checkpoint, by `every`
    /// events or for `interval`.
    async fn due(&self, since: Instant) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT position FROM log_head) AS head,
                    (SELECT coalesce(max(position), 0) FROM audit_checkpoints) AS last",
        )
        .fetch_one(&self.pool)
        .await?;
        let head: i64 = row.try_get("head")?;
        let last: i64 = row.try_get("last")?;
        Ok(head > last
            && (head - last >= self.config.every || since.elapsed() >= self.config.interval))
    }
}

/// Appends `checkpoint` to the witness file as one NDJSON line, and flushes it to disk.
async fn append_witness(path: PathBuf, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
    let mut line =
        serde_json::to_vec(&checkpoint.to_item()).map_err(|err| CheckpointError::Witness {
            path: path.clone(),
            source: std::io::Error::other(err),
        })?;
    line.push(b'\n');
    let target = path.clone();
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&target)?;
        file.write_all(&line)?;
        file.sync_data()
    })
    .await
    .map_err(|err| CheckpointError::Witness {
        path: path.clone(),
        source: std::io::Error::other(err),
    })?;
    written.map_err(|source| CheckpointError::Witness { path, source })
}
