//! SQLite and PostgreSQL pools, per-backend migrations and the transactional outbox with its relay.
//!
//! Every service owns one database and reaches it through a [`Db`]: one `sqlx::AnyPool`, so the
//! same runtime-checked SQL (with `$1` placeholders) runs on the embedded SQLite file and on
//! PostgreSQL. Only portable column types are used: ids are TEXT (UUIDv7 strings), timestamps
//! BIGINT microseconds since the Unix epoch (UTC), blobs BLOB/BYTEA. Where SQL cannot be shared,
//! callers branch on [`Db::backend`] in one place.
//!
//! The [`outbox`] module implements the "no event lost" audit pipeline (DESIGN §4.6): a change
//! and its event commit in one transaction, and a [`outbox::Relay`] ships them afterwards.

#![forbid(unsafe_code)]

mod migrate;
pub mod outbox;
mod pool;
mod scope;

pub use migrate::Migrations;
pub use pool::{Db, DbConfig};
pub use scope::{Scope, ServiceRole, TENANT_SETTING, in_scope};

/// `$first, $first+1, …` for `count` values: the numbered placeholders of an `IN (...)` list or
/// a multi-row `VALUES` group, written the one way both backends (through `sqlx::Any`) accept.
/// `placeholders(3, 2)` is `$3, $4`.
pub fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which database engine a [`Db`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Reads the backend from a connection URL's scheme, so callers never need a second setting.
    pub fn from_url(url: &str) -> Result<Backend> {
        let scheme = url.split_once(':').map(|(scheme, _)| scheme).unwrap_or("");
        match scheme {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            // Only the scheme is echoed: the rest of the URL may carry a password.
            other => Err(Error::UnsupportedScheme(other.to_owned())),
        }
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url scheme {0:?} (expected sqlite or postgres)")]
    UnsupportedScheme(String),
    #[error("invalid schema name {0:?} (use ascii letters, digits and underscores)")]
    InvalidSchema(String),
    #[error("cannot create database directory {path}: {source}")]
    CreateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("database file {path} cannot be opened: {source}")]
    Unreachable {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A database that had to exist ([`DbConfig::existing`]) is not there; nothing was created.
    #[error("no such database: {0}")]
    Missing(String),
    #[error("corrupt outbox row {id:?}: {reason}")]
    CorruptRow { id: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the database was only busy (a lock wait that timed out, a pool with no free
    /// connection in time, a serialization failure or deadlock victim): retrying may succeed,
    /// so callers answer `UNAVAILABLE`, not an internal error.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Sqlx(error) => is_transient(error),
            _ => false,
        }
    }
}

/// Whether a query failed only because the database was busy (see [`Error::is_transient`]).
pub fn is_transient(error: &sqlx::Error) -> bool {
    if matches!(error, sqlx::Error::PoolTimedOut) {
        return true;
    }
    // SQLite: SQLITE_BUSY, SQLITE_LOCKED and their extended codes (busy_timeout ran out);
    // PostgreSQL: lock_not_available, serialization_failure, deadlock_detected.
    error
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| {
            matches!(
                code.as_ref(),
                "5" | "6" | "261" | "262" | "517" | "55P03" | "40001" | "40P01"
            )
        })
}
