//! Checkpoints and audit keys in PostgreSQL (`audit_checkpoints`, `audit_keys`), and the
//! chain heads a checkpoint's tenant tree is built from.

use futures::TryStreamExt as _;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row as _};
use uuid::Uuid;

use crate::canonical::Digest32;
use crate::error::StoreError;
use crate::record::digest_column;

use super::checkpoint::Checkpoint;
use super::key::PublicKey;
use super::merkle::ChainHead;

/// Every chain's latest event at or before `position`, in leaf order: the platform chain
/// first, then tenants by id.
pub async fn chain_heads_at<'e>(
    db: impl PgExecutor<'e>,
    position: i64,
) -> Result<Vec<ChainHead>, StoreError> {
    let rows = sqlx::query(
        "SELECT DISTINCT ON (tenant_id) tenant_id, global_position, hash
           FROM events
          WHERE global_position <= $1
          ORDER BY tenant_id NULLS FIRST, global_position DESC",
    )
    .bind(position)
    .fetch_all(db)
    .await?;
    let mut heads = rows
        .iter()
        .map(|row| {
            Ok(ChainHead {
                tenant_id: row.try_get("tenant_id")?,
                position: row.try_get("global_position")?,
                hash: digest_column(row, "hash")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    heads.sort();
    Ok(heads)
}

/// The chains' latest events among positions `after + 1 ..= to`, in position order.
pub(crate) async fn chain_events_between<'e>(
    db: impl PgExecutor<'e>,
    after: i64,
    to: i64,
) -> Result<Vec<ChainHead>, StoreError> {
    sqlx::query(
        "SELECT tenant_id, global_position, hash FROM events
          WHERE global_position > $1 AND global_position <= $2
          ORDER BY global_position",
    )
    .bind(after)
    .bind(to)
    .fetch(db)
    .map_err(StoreError::from)
    .and_then(|row| async move {
        Ok(ChainHead {
            tenant_id: row.try_get::<Option<Uuid>, _>("tenant_id")?,
            position: row.try_get("global_position")?,
            hash: digest_column(&row, "hash")?,
        })
    })
    .try_collect()
    .await
}

fn checkpoint_from_row(row: &PgRow) -> Result<Checkpoint, StoreError> {
    let signature: Vec<u8> = row.try_get("signature")?;
    let signature =
        <[u8; 64]>::try_from(signature.as_slice()).map_err(|_| StoreError::Corrupt {
            column: "signature",
            problem: format!(
                "holds {} bytes where an Ed25519 signature has 64",
                signature.len()
            ),
        })?;
    Ok(Checkpoint {
        position: row.try_get("position")?,
        head_hash: digest_column(row, "head_hash")?,
        tenants_root: digest_column(row, "tenants_root")?,
        signed_at: row.try_get("signed_at")?,
        kid: row.try_get("kid")?,
        signature,
    })
}

const CHECKPOINT_COLUMNS: &str = "position, head_hash, tenants_root, signed_at, kid, signature";

/// The stored checkpoints with `from <= position <= to`, in position order.
pub async fn checkpoints_between<'e>(
    db: impl PgExecutor<'e>,
    from: i64,
    to: i64,
) -> Result<Vec<Checkpoint>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints
          WHERE position BETWEEN $1 AND $2 ORDER BY position"
    ))
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await?;
    rows.iter().map(checkpoint_from_row).collect()
}

/// The latest checkpoint at or before `position`, if any.
pub async fn checkpoint_at_or_before<'e>(
    db: impl PgExecutor<'e>,
    position: i64,
) -> Result<Option<Checkpoint>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints
          WHERE position <= $1 ORDER BY position DESC LIMIT 1"
    ))
    .bind(position)
    .fetch_optional(db)
    .await?;
    row.as_ref().map(checkpoint_from_row).transpose()
}

/// Every key that signs or has signed checkpoints, the most recently recorded first.
pub async fn public_keys<'e>(db: impl PgExecutor<'e>) -> Result<Vec<PublicKey>, StoreError> {
    let rows = sqlx::query("SELECT public_key FROM audit_keys ORDER BY recorded_at DESC, kid")
        .fetch_all(db)
        .await?;
    rows.iter().map(key_from_row).collect()
}

/// The keys that signed the checkpoints with `from <= position <= to`, the most recently
/// recorded first.
pub async fn keys_of_checkpoints<'e>(
    db: impl PgExecutor<'e>,
    from: i64,
    to: i64,
) -> Result<Vec<PublicKey>, StoreError> {
    if to < from {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT k.public_key FROM audit_keys k
          WHERE k.kid IN (SELECT DISTINCT kid FROM audit_checkpoints
                           WHERE position BETWEEN $1 AND $2)
          ORDER BY k.recorded_at DESC, k.kid",
    )
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await?;
    rows.iter().map(key_from_row).collect()
}

fn key_from_row(row: &PgRow) -> Result<PublicKey, StoreError> {
    let raw: Vec<u8> = row.try_get("public_key")?;
    PublicKey::from_raw(&raw).map_err(|err| StoreError::Corrupt {
        column: "public_key",
        problem: err.to_string(),
    })
}

/// Records a key that signs checkpoints. Recording it again changes nothing.
pub async fn record_key<'e>(db: impl PgExecutor<'e>, key: &PublicKey) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO audit_keys (kid, public_key) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(&key.kid)
        .bind(key.raw().as_slice())
        .execute(db)
        .await?;
    Ok(())
}

/// Stores a checkpoint whose key is recorded. Returns `false` when one is already stored
/// at its position.
pub async fn store_checkpoint<'e>(
    db: impl PgExecutor<'e>,
    checkpoint: &Checkpoint,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO audit_checkpoints (position, head_hash, tenants_root, signed_at, kid, signature)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (position) DO NOTHING",
    )
    .bind(checkpoint.position)
    .bind(checkpoint.head_hash.0.as_slice())
    .bind(checkpoint.tenants_root.0.as_slice())
    .bind(checkpoint.signed_at)
    .bind(&checkpoint.kid)
    .bind(checkpoint.signature.as_slice())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The hash of the event at `position`, if there is one.
pub async fn hash_at<'e>(
    db: impl PgExecutor<'e>,
    position: i64,
) -> Result<Option<Digest32>, StoreError> {
    let row = sqlx::query("SELECT hash FROM events WHERE global_position = $1")
        .bind(position)
        .fetch_optional(db)
        .await?;
    row.as_ref()
        .map(|row| digest_column(row, "hash"))
        .transpose()
}
