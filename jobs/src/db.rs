//! Postgres connections: a pool whose sessions use the configured schema,
//! and the migrations under `migrations/` embedded at build time.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Executor;

use crate::config::{DatabaseConfig, DATABASE_PASSWORD_ENV};

/// How long a caller waits for a free connection before the query fails
/// (and is retried as transient); far below any lease length.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the database could not be reached or prepared.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(#[source] sqlx::Error),
    #[error("schema name {0:?} must be lower-case letters, digits and underscores")]
    SchemaName(String),
    #[error("cannot connect to Postgres: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("cannot apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The migrations in the repository's `migrations/` folder.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Opens a pool on `config`'s database whose every session uses its schema,
/// creating the schema and applying migrations when `config.migrate` is set.
pub async fn connect(config: &DatabaseConfig) -> Result<PgPool, DbError> {
    if !valid_schema_name(&config.schema) {
        return Err(DbError::SchemaName(config.schema.clone()));
    }
    let mut options = PgConnectOptions::from_str(&config.url).map_err(DbError::Url)?;
    if let Ok(password) = std::env::var(DATABASE_PASSWORD_ENV) {
        options = options.password(&password);
    }

    if config.migrate {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(DbError::Connect)?;
        pool.execute(format!("CREATE SCHEMA IF NOT EXISTS {}", config.schema).as_str())
            .await
            .map_err(DbError::Connect)?;
        pool.close().await;
    }

    let search_path = format!("SET search_path TO {}", config.schema);
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(move |conn, _meta| {
            let search_path = search_path.clone();
            Box::pin(async move {
                conn.execute(search_path.as_str()).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(DbError::Connect)?;

    if config.migrate {
        MIGRATOR.run(&pool).await?;
    }
    Ok(pool)
}

/// A schema name that is safe to splice into SQL.
pub fn valid_schema_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// Whether a database error is worth retrying: the server or network is
/// briefly unavailable, as opposed to a bad query or violated constraint.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        // Class 08 (connection exception), 57P (operator intervention, e.g.
        // the server shutting down), 40001/40P01 (serialization, deadlock).
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57P") || code == "40001" || code == "40P01"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        assert!(valid_schema_name("glowline"));
        assert!(valid_schema_name("t_0a9"));
        assert!(!valid_schema_name("Glowline"));
        assert!(!valid_schema_name("x; DROP TABLE jobs"));
        assert!(!valid_schema_name("1abc"));
        assert!(!valid_schema_name(""));
    }
}
