//! Subjects' data keys in PostgreSQL (`subject_keys`), wrapped under a key the database
//! never sees.

use commands::privacy::{DataKey, KeyWrapper, PrivacyError, SubjectKeys};
use std::collections::HashMap;

use domain::personal::SubjectId;
use sqlx::{PgConnection, PgPool};

/// The key store of personal data. A key is made on first use, and destroyed for good by
/// [`SubjectKeys::forget`]; the table's trigger refuses any other change.
#[derive(Debug, Clone)]
pub struct PgSubjectKeys {
    pool: PgPool,
    wrapper: KeyWrapper,
}

impl PgSubjectKeys {
    /// A key store over `pool`, wrapping keys with `wrapper`.
    pub fn new(pool: PgPool, wrapper: KeyWrapper) -> Self {
        Self { pool, wrapper }
    }

    /// The live keys of `subjects`, in one query on `conn` (so a reader inside a
    /// transaction needs no second connection). A subject whose key was destroyed, or never
    /// made, is absent from the answer: its fields read as forgotten.
    pub async fn find_many(
        &self,
        conn: &mut PgConnection,
        subjects: &[SubjectId],
    ) -> Result<HashMap<SubjectId, DataKey>, PrivacyError> {
        let ids: Vec<uuid::Uuid> = subjects.iter().map(SubjectId::as_uuid).collect();
        let rows: Vec<(uuid::Uuid, Vec<u8>)> = sqlx::query_as(
            "SELECT subject_id, wrapped_key FROM subject_keys
              WHERE subject_id = ANY($1) AND wrapped_key IS NOT NULL",
        )
        .bind(&ids)
        .fetch_all(conn)
        .await
        .map_err(|err| store_error(&err))?;
        rows.into_iter()
            .map(|(id, wrapped)| {
                let subject = SubjectId::from_uuid(id);
                self.wrapper
                    .unwrap_key(subject, &wrapped)
                    .map(|key| (subject, key))
            })
            .collect()
    }

    async fn stored(&self, subject: SubjectId) -> Result<Option<Option<Vec<u8>>>, PrivacyError> {
        sqlx::query_scalar::<_, Option<Vec<u8>>>(
            "SELECT wrapped_key FROM subject_keys WHERE subject_id = $1",
        )
        .bind(subject.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(|err| store_error(&err))
    }
}

fn store_error(err: &sqlx::Error) -> PrivacyError {
    PrivacyError::Store(err.to_string())
}

impl SubjectKeys for PgSubjectKeys {
    async fn key_for(&self, subject: SubjectId) -> Result<DataKey, PrivacyError> {
        match self.stored(subject).await? {
            Some(Some(wrapped)) => return self.wrapper.unwrap_key(subject, &wrapped),
            Some(None) => return Err(PrivacyError::Forgotten(subject)),
            None => {}
        }
        let key = DataKey::generate()?;
        let wrapped = self.wrapper.wrap(subject, &key)?;
        // Two first uses may race: the first insert wins and both use its key.
        sqlx::query(
            "INSERT INTO subject_keys (subject_id, wrapped_key) VALUES ($1, $2)
             ON CONFLICT (subject_id) DO NOTHING",
        )
        .bind(subject.as_uuid())
        .bind(wrapped)
        .execute(&self.pool)
        .await
        .map_err(|err| store_error(&err))?;
        match self.stored(subject).await? {
            Some(Some(wrapped)) => self.wrapper.unwrap_key(subject, &wrapped),
            Some(None) => Err(PrivacyError::Forgotten(subject)),
            None => Err(PrivacyError::Store(format!(
                "the key of subject {subject} vanished after it was stored"
            ))),
        }
    }

    async fn find(&self, subject: SubjectId) -> Result<Option<DataKey>, PrivacyError> {
        match self.stored(subject).await? {
            Some(Some(wrapped)) => self.wrapper.unwrap_key(subject, &wrapped).map(Some),
            _ => Ok(None),
        }
    }

    async fn forget(&self, subject: SubjectId) -> Result<bool, PrivacyError> {
        // A subject that never had a key gets a destroyed one, so none can be made later.
        let inserted = sqlx::query(
            "INSERT INTO subject_keys (subject_id, wrapped_key, destroyed_at) VALUES ($1, NULL, now())
             ON CONFLICT (subject_id) DO NOTHING",
        )
        .bind(subject.as_uuid())
        .execute(&self.pool)
        .await
        .map_err(|err| store_error(&err))?;
        if inserted.rows_affected() == 1 {
            return Ok(false);
        }
        let destroyed = sqlx::query(
            "UPDATE subject_keys SET wrapped_key = NULL, destroyed_at = now()
              WHERE subject_id = $1 AND wrapped_key IS NOT NULL",
        )
        .bind(subject.as_uuid())
        .execute(&self.pool)
        .await
        .map_err(|err| store_error(&err))?;
        Ok(destroyed.rows_affected() == 1)
    }
}
