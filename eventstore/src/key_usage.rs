//! When each API key was last used (`api_key_usage`), kept outside the event log.
//!
//! A use of a key is per-request noise, not a decision, so it is not an event: the log
//! records a key's creation and revocation, and this table its use. [`KeyUsage::record`] only
//! touches memory, so authenticating a request never waits on the database; a flusher task
//! writes what gathered in one statement every interval (and once more when it stops). A row
//! only moves forward in time, so flushes from several gateway processes, in any order, leave
//! the latest use. A flush that fails keeps its uses for the next one; what a crashed process
//! had not flushed yet is lost, which costs at most one interval of "last used" precision.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::error::StoreError;

/// The uses of one key since the last flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    tenant_id: Uuid,
    last_used_at: DateTime<Utc>,
    uses: i64,
}

/// What `api_key_usage` holds for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUse {
    /// The key's tenant.
    pub tenant_id: Uuid,
    /// The latest use written so far.
    pub last_used_at: DateTime<Utc>,
    /// How many uses were written so far.
    pub uses: i64,
}

/// Gathers API-key uses in memory and writes them to `api_key_usage` in batches.
#[derive(Debug, Clone)]
pub struct KeyUsage {
    pool: PgPool,
    pending: Arc<Mutex<HashMap<Uuid, Pending>>>,
}

/// The flusher task of a [`KeyUsage`].
#[derive(Debug)]
pub struct KeyUsageTask {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<()>,
}

impl KeyUsageTask {
    /// Stops the task after one last flush.
    pub async fn stop(self) {
        // The task may have ended already; then there is nothing to tell it.
        let _ = self.stop.send(());
        if let Err(err) = self.handle.await
            && err.is_panic()
        {
            tracing::error!("the API-key usage flusher panicked: {err}");
        }
    }
}

fn merge(into: &mut HashMap<Uuid, Pending>, key: Uuid, use_: Pending) {
    into.entry(key)
        .and_modify(|seen| {
            seen.last_used_at = seen.last_used_at.max(use_.last_used_at);
            seen.uses = seen.uses.saturating_add(use_.uses);
        })
        .or_insert(use_);
}

impl KeyUsage {
    /// A tracker writing to `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            pending: Arc::default(),
        }
    }

    /// Notes that the key `key_id` of `tenant_id` was used at `at`. Never waits on I/O.
    pub fn record(&self, key_id: Uuid, tenant_id: Uuid, at: DateTime<Utc>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        merge(
            &mut pending,
            key_id,
            Pending {
                tenant_id,
                last_used_at: at,
                uses: 1,
            },
        );
    }

    /// How many keys have uses waiting to be written.
    pub fn pending(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Writes every gathered use in one statement and returns how many keys it wrote. On
    /// failure the uses stay gathered for the next flush.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let batch =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.is_empty() {
            return Ok(0);
        }
        let mut keys = Vec::with_capacity(batch.len());
        let mut tenants = Vec::with_capacity(batch.len());
        let mut times = Vec::with_capacity(batch.len());
        let mut uses = Vec::with_capacity(batch.len());
        for (key, use_) in &batch {
            keys.push(*key);
            tenants.push(use_.tenant_id);
            times.push(use_.last_used_at);
            uses.push(use_.uses);
        }
        let written = sqlx::query(
            "INSERT INTO api_key_usage (key_id, tenant_id, last_used_at, uses)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::bigint[])
             ON CONFLICT (key_id) DO UPDATE SET
                 last_used_at = GREATEST(api_key_usage.last_used_at, EXCLUDED.last_used_at),
                 uses = api_key_usage.uses + EXCLUDED.uses",
        )
        .bind(&keys)
        .bind(&tenants)
        .bind(&times)
        .bind(&uses)
        .execute(&self.pool)
        .await;
        match written {
            Ok(_) => Ok(batch.len()),
            Err(err) => {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                for (key, use_) in batch {
                    merge(&mut pending, key, use_);
                }
                Err(err.into())
            }
        }
    }

    /// What is written for `key_id`, if it was ever used.
    pub async fn last_use(&self, key_id: Uuid) -> Result<Option<KeyUse>, StoreError> {
        let row: Option<(Uuid, DateTime<Utc>, i64)> = sqlx::query_as(
            "SELECT tenant_id, last_used_at, uses FROM api_key_usage WHERE key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(tenant_id, last_used_at, uses)| KeyUse {
            tenant_id,
            last_used_at,
            uses,
        }))
    }

    /// Starts a task on the current Tokio runtime that flushes every `every`, and once more
    /// when it is stopped.
    pub fn spawn_flusher(&self, every: Duration) -> KeyUsageTask {
        let (stop, mut stopped) = oneshot::channel();
        let usage = self.clone();
        let handle = tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = &mut stopped => break,
                }
                if let Err(err) = usage.flush().await {
                    tracing::warn!("API-key usage not written yet, will retry: {err}");
                }
            }
            if let Err(err) = usage.flush().await {
                tracing::error!(
                    "API-key usage of {} keys lost at shutdown: {err}",
                    usage.pending()
                );
            }
        });
        KeyUsageTask { stop, handle }
    }
}
