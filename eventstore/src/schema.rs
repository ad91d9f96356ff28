//! The database schema: creating the database and applying the migrations in migrations/.

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::{PgPool, Postgres};

use crate::error::StoreError;

/// The SQL migrations of migrations/, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Creates the database named in `admin_url` if it does not exist. Returns whether it
/// created it. The URL's user must be allowed to create databases.
pub async fn create_database_if_missing(admin_url: &str) -> Result<bool, StoreError> {
    if Postgres::database_exists(admin_url).await? {
        return Ok(false);
    }
    match Postgres::create_database(admin_url).await {
        Ok(()) => Ok(true),
        // Another process created it between the check and the create.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Applies every migration not yet applied. `pool` must connect as the owner of the schema
/// (not as the application role).
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
