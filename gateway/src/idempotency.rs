//! `Idempotency-Key` on mutations: a retry with the same key and the same request gets the
//! first answer again, and runs nothing.
//!
//! A signed-in caller's mutation that carries the header claims the key in
//! `idempotent_responses` before it runs (one row per caller and key). The first request
//! inserts the row and runs; it stores its answer when it succeeds, and releases the key
//! when it fails, so that a failed attempt can be retried. A later request with the key
//! gets the stored answer (`idempotent-replayed: true`); one with another request body is
//! refused as BAD_USER_INPUT; one that arrives while the first still runs is refused as
//! CONFLICT. Answers can hold secrets shown once (a new API key), so they are stored sealed
//! with the secrets key derived from the master key. A key is remembered for 24 hours.
//!
//! Callers without a credential (sign-up, registration) are not keyed here: nothing tells
//! one anonymous caller from another. Their commands are idempotent in the log itself
//! (`commands::bus::run_idempotent`), which fingerprints the input.

use chrono::{DateTime, Duration, Utc};
use commands::privacy::{DataKey, open_secret, seal_secret};
use domain::identity::credentials::SealedSecret;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::error::{ApiError, Code};

/// How long a key is remembered.
pub const RETENTION: Duration = Duration::hours(24);

/// What to do with a keyed request.
#[derive(Debug)]
pub enum Claim {
    /// The key is new (or expired): run the request, then [`finish`] or [`release`].
    Run,
    /// The same request ran before: answer this, and run nothing.
    Replay(serde_json::Value),
}

/// The fingerprint of a request: its operation, as sent.
pub fn fingerprint(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

fn purpose(actor: &str, key: &str) -> String {
    format!("idempotent response:{actor}:{key}")
}

/// Claims `key` for `actor`'s request with `fingerprint`.
pub async fn claim(
    pool: &PgPool,
    secrets: &DataKey,
    actor: &str,
    key: &str,
    fingerprint: &str,
    now: DateTime<Utc>,
) -> Result<Claim, ApiError> {
    commands::idempotency::check_key(key)
        .map_err(|problem| ApiError::bad_input("Idempotency-Key", problem))?;
    // An expired claim is forgotten first, so the key can be used again.
    sqlx::query(
        "DELETE FROM idempotent_responses WHERE actor = $1 AND key = $2 AND created_at < $3",
    )
    .bind(actor)
    .bind(key)
    .bind(now - RETENTION)
    .execute(pool)
    .await
    .map_err(ApiError::internal)?;
    let inserted = sqlx::query(
        "INSERT INTO idempotent_responses (actor, key, fingerprint, created_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(actor)
    .bind(key)
    .bind(fingerprint)
    .bind(now)
    .execute(pool)
    .await
    .map_err(ApiError::internal)?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::Run);
    }
    let row: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT fingerprint, response_sealed FROM idempotent_responses
          WHERE actor = $1 AND key = $2",
    )
    .bind(actor)
    .bind(key)
    .fetch_optional(pool)
    .await
    .map_err(ApiError::internal)?;
    match row {
        // Released between our insert and our read: the caller may simply retry.
        None => Err(in_progress()),
        Some((stored, _)) if stored != fingerprint => Err(ApiError::new(
            Code::BadUserInput,
            "this Idempotency-Key was used for another request; use a new key for a new request",
        )
        .with_reason("idempotency_key_reused")),
        Some((_, None)) => Err(in_progress()),
        Some((_, Some(sealed))) => {
            let bytes = open_secret(
                secrets,
                &purpose(actor, key),
                &SealedSecret::from_sealed(sealed),
            )
            .map_err(ApiError::internal)?;
            serde_json::from_slice(&bytes)
                .map(Claim::Replay)
                .map_err(ApiError::internal)
        }
    }
}

fn in_progress() -> ApiError {
    ApiError::new(
        Code::Conflict,
        "a request with this Idempotency-Key is still running; try again in a moment",
    )
    .with_reason("idempotency_key_in_progress")
}

/// Stores the answer of a claimed request that succeeded.
pub async fn finish(
    pool: &PgPool,
    secrets: &DataKey,
    actor: &str,
    key: &str,
    response: &serde_json::Value,
) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(response).map_err(ApiError::internal)?;
    let sealed = seal_secret(secrets, &purpose(actor, key), &bytes).map_err(ApiError::internal)?;
    sqlx::query(
        "UPDATE idempotent_responses SET response_sealed = $3 WHERE actor = $1 AND key = $2",
    )
    .bind(actor)
    .bind(key)
    .bind(sealed.as_str())
    .execute(pool)
    .await
    .map_err(ApiError::internal)?;
    Ok(())
}

/// Releases the key of a claimed request that failed, so that it can be retried.
pub async fn release(pool: &PgPool, actor: &str, key: &str) -> Result<(), ApiError> {
    sqlx::query(
        "DELETE FROM idempotent_responses
          WHERE actor = $1 AND key = $2 AND response_sealed IS NULL",
    )
    .bind(actor)
    .bind(key)
    .execute(pool)
    .await
    .map_err(ApiError::internal)?;
    Ok(())
}
