//! Connecting to a service database: URLs, pool settings, SQLite pragmas and PostgreSQL schemas.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Connection};

use crate::{Backend, Error, Result};

/// Per-connection SQLite settings. `journal_mode` is absent on purpose: it is persistent in the
/// file and switching it needs an exclusive lock that `busy_timeout` cannot wait for, so
/// [`prepare_sqlite`] sets it once before the pool opens.
const SQLITE_PRAGMAS: [&str; 3] = [
    // WAL makes NORMAL durable against application crashes; only an OS crash can lose the tail.
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
    // SQLite has a single writer: make competing writers queue for up to 5s instead of failing.
    "PRAGMA busy_timeout = 5000",
];

/// How long a SQLite writer waits for the lock (`busy_timeout` above) or for the writer
/// connection ([`Db::begin`]).
const SQLITE_WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a service's database lives and how many connections it may hold.
#[derive(Clone)]
pub struct DbConfig {
    /// `sqlite://<path>?mode=rwc` or `postgres://user@host:port/db`.
    pub url: String,
    /// PostgreSQL only: a schema to put first on every connection's `search_path` (created if
    /// missing, unless [`DbConfig::existing`]), so several services can share one database.
    /// Ignored on SQLite (one file per service).
    pub schema: Option<String>,
    pub max_connections: u32,
    /// Whether connecting creates what is missing: the SQLite file (and its directory), the
    /// PostgreSQL schema. Off ([`DbConfig::existing`]) for tools that look at a database that
    /// must already be there, where a mistyped path or schema should fail, not leave an empty
    /// database behind.
    pub create_if_missing: bool,
}

impl DbConfig {
    /// The embedded default: `<data_dir>/<service>.db`, created on connect if missing.
    pub fn sqlite_in(data_dir: &Path, service: &str) -> DbConfig {
        let path = data_dir.join(format!("{service}.db"));
        // An absolute path keeps the URL unambiguous: `sqlite://data/x.db` would read `data` as a
        // host to a generic URL parser.
        let path = std::path::absolute(&path).unwrap_or(path);
        DbConfig {
            url: format!("sqlite://{}?mode=rwc", encode_path(&path)),
            schema: None,
            max_connections: 8,
            create_if_missing: true,
        }
    }

    pub fn postgres(url: &str, schema: Option<String>) -> DbConfig {
        DbConfig {
            url: url.to_owned(),
            schema,
            max_connections: 10,
            create_if_missing: true,
        }
    }

    /// The same database, which connecting must find rather than create.
    pub fn existing(self) -> DbConfig {
        DbConfig {
            create_if_missing: false,
            ..self
        }
    }
}

// Hand-written so that logging a config never prints a database password.
impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConfig")
            .field("url", &redact_password(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("create_if_missing", &self.create_if_missing)
            .finish()
    }
}

/// A service's database: a cheap-to-clone handle on one connection pool.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    /// SQLite only: the one connection write transactions use (see [`Db::begin`]).
    writer: Option<AnyPool>,
    backend: Backend,
    schema: Option<Arc<str>>,
    /// The SQLite file, checked by `ping`: pooled connections keep a deleted or moved file
    /// alive, so `SELECT 1` alone would report a database that no new connection can open.
    sqlite_file: Option<PathBuf>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Opens the pool. SQLite: creates the parent directory and the file, switches to WAL.
    /// PostgreSQL: creates the configured schema if missing. Neither is created for a config
    /// that is [`DbConfig::existing`]: a missing one is [`Error::Missing`].
    pub async fn connect(config: &DbConfig) -> Result<Db> {
        // Idempotent; the Any pool panics on first use without it.
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(&config.url)?;
        // No `ping` before each acquire (sqlx's default): it is a round trip per query, to the
        // connection's worker thread on SQLite (a local file, which cannot hang up) and to the
        // server on PostgreSQL, where the `before_acquire` hook below already runs a statement
        // on the connection and sqlx discards it and takes another when that fails.
        let options = AnyPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .test_before_acquire(false);
        match backend {
            Backend::Sqlite => {
                let url = with_open_mode(&config.url, config.create_if_missing);
                if !config.create_if_missing
                    && let Some(file) = sqlite_path(&url).filter(|file| !file.is_file())
                {
                    return Err(Error::Missing(file.display().to_string()));
                }
                prepare_sqlite(&url).await?;
                let pool = with_sqlite_pragmas(options).connect(&url).await?;
                // Writers wait for the writer connection as long as `busy_timeout` would have
                // let them wait for the lock.
                let writer_options = AnyPoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .acquire_timeout(SQLITE_WRITER_WAIT);
                let writer = with_sqlite_pragmas(writer_options).connect(&url).await?;
                Ok(Db {
                    pool,
                    writer: Some(writer),
                    backend,
                    schema: None,
                    sqlite_file: sqlite_path(&url),
                })
            }
            Backend::Postgres => {
                let schema: Option<Arc<str>> = match &config.schema {
                    Some(name) => Some(validate_schema(name)?.into()),
                    None => None,
                };
                match &schema {
                    Some(schema) if config.create_if_missing => {
                        create_schema(&config.url, schema).await?;
                    }
                    Some(schema) => ensure_schema_exists(&config.url, schema).await?,
                    None => {}
                }
                let search_path = schema.clone();
                // Both hooks run on the task that asked for the connection, so the row-level
                // security scope is that task's (see `scope.rs`).
                let pool = options
                    .after_connect(move |conn, _meta| {
                        let search_path = search_path.clone();
                        Box::pin(async move {
                            if let Some(schema) = search_path {
                                let set = format!(r#"SET search_path TO "{schema}""#);
                                sqlx::query(AssertSqlSafe(set)).execute(&mut *conn).await?;
                            }
                            crate::scope::enter_ambient(conn).await
                        })
                    })
                    .before_acquire(|conn, _meta| {
                        Box::pin(async move {
                            crate::scope::enter_ambient(conn).await?;
                            Ok(true)
                        })
                    })
                    .connect(&config.url)
                    .await?;
                let db = Db {
                    pool,
                    writer: None,
                    backend,
                    schema,
                    sqlite_file: None,
                };
                if db.bypasses_row_security().await? {
                    tracing::warn!(
                        "connected to PostgreSQL as a superuser or BYPASSRLS role: row-level security does not apply; connect as an ordinary role"
                    );
                }
                Ok(db)
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a write transaction.
    ///
    /// On SQLite this is `BEGIN IMMEDIATE` on the process's one writer connection. SQLite has a
    /// single writer, so writers queue anyway; they queue here, in order, for that connection,
    /// rather than in SQLite's busy handler, which sleeps (1, 2, 5, 10 ... ms) while holding a
    /// pooled connection: a burst of writers (a login flood) would hold every connection and
    /// make readers wait behind it. (`IMMEDIATE` because a deferred transaction that reads and
    /// then writes fails with `SQLITE_BUSY`, without waiting, when another process wrote in
    /// between.) Read-only work should query [`Db::pool`] directly rather than hold the write
    /// lock; a write transaction must not start another one (it would wait for itself).
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let tx = match &self.writer {
            Some(writer) => writer.begin_with("BEGIN IMMEDIATE").await?,
            None => self.pool.begin().await?,
        };
        Ok(tx)
    }

    /// Where a write that is one statement runs, in autocommit: SQLite's writer connection
    /// (as [`Db::begin`], for the same reason, without its `BEGIN` and `COMMIT` round trips),
    /// or PostgreSQL's pool.
    pub fn single_write(&self) -> &AnyPool {
        self.writer.as_ref().unwrap_or(&self.pool)
    }

    /// Readiness probe.
    /// Whether the database answers: `SELECT 1`, and for SQLite also that its file can still
    /// be opened for reading and writing.
    pub async fn ping(&self) -> Result<()> {
        if let Some(path) = &self.sqlite_file {
            let file = tokio::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .await;
            file.map_err(|source| Error::Unreachable {
                path: path.clone(),
                source,
            })?;
        }
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
        self.pool.close().await;
    }

    /// For tests on PostgreSQL: drop the schema (CASCADE) if one was configured.
    pub async fn drop_schema(&self) -> Result<()> {
        if let Some(schema) = &self.schema {
            let drop = format!(r#"DROP SCHEMA IF EXISTS "{schema}" CASCADE"#);
            sqlx::query(AssertSqlSafe(drop)).execute(&self.pool).await?;
        }
        Ok(())
    }
}

/// `options` with [`SQLITE_PRAGMAS`] run on every new connection.
fn with_sqlite_pragmas(options: AnyPoolOptions) -> AnyPoolOptions {
    options.after_connect(|conn, _meta| {
        Box::pin(async move {
            for pragma in SQLITE_PRAGMAS {
                sqlx::query(pragma).execute(&mut *conn).await?;
            }
            Ok(())
        })
    })
}

/// Creates the file's directory and the file, and switches it to WAL once, on a connection of
/// its own. What it creates is its owner's alone (directories 0700, the file 0600): the
/// database holds password hashes, API key hashes and, unless a KEK seals them, token-signing
/// keys, and SQLite makes its files readable by all under the usual umask. The file is made
/// only where SQLite would make it (`mode=rwc`). What exists is left as it is, with a warning
/// if others have access to it.
async fn prepare_sqlite(url: &str) -> Result<()> {
    let Some(path) = sqlite_path(url) else {
        return Ok(());
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        let mut builder = tokio::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        builder.mode(0o700);
        builder
            .create(dir)
            .await
            .map_err(|source| Error::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
    }
    #[cfg(unix)]
    if opens_creating(url) {
        create_private_file(&path).await?;
    }
    let mut conn = AnyConnection::connect(url).await?;
    sqlx::query("PRAGMA journal_mode = WAL")
        .execute(&mut conn)
        .await?;
    // Looked at while SQLite holds the files open, so its `-wal` and `-shm` exist, and where
    // they really are (beside the file a symlink names).
    #[cfg(unix)]
    if let Ok(file) = tokio::fs::canonicalize(&path).await {
        warn_if_others_have_access(&file).await;
    }
    conn.close().await?;
    Ok(())
}

/// Whether SQLite creates a missing file for `url` (`mode=rwc`, as [`with_open_mode`] sets
/// for a config that may create its database).
fn opens_creating(url: &str) -> bool {
    url.split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|pair| pair == "mode=rwc"))
}

/// Creates the database file, unless it exists, readable and writable by its owner only.
/// SQLite opens a file that exists as it finds it, and gives the `-wal` and `-shm` files it
/// makes beside it the same mode.
#[cfg(unix)]
async fn create_private_file(path: &Path) -> Result<()> {
    let created = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(Error::Unreachable {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Logs a warning for each of the database's files that others than its owner have access
/// to, as files made before Palisade created them 0600 are (or a restored copy may be).
#[cfg(unix)]
async fn warn_if_others_have_access(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut names = vec![path.to_owned()];
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        names.push(PathBuf::from(name));
    }
    for name in names {
        let Ok(metadata) = tokio::fs::metadata(&name).await else {
            continue;
        };
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %name.display(),
                mode = format!("{mode:o}"),
                "other users have access to the database file; it holds password and API key \
                 hashes (and token-signing keys unless a KEK seals them): `chmod 600` it"
            );
        }
    }
}

async fn create_schema(url: &str, schema: &str) -> Result<()> {
    let mut conn = AnyConnection::connect(url).await?;
    let create = format!(r#"CREATE SCHEMA IF NOT EXISTS "{schema}""#);
    let created = sqlx::query(AssertSqlSafe(create)).execute(&mut conn).await;
    conn.close().await?;
    match created {
        Ok(_) => Ok(()),
        // `IF NOT EXISTS` still races: two replicas creating it at once see a unique violation
        // on the catalog, which means the schema now exists.
        Err(err) if is_unique_violation(&err) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

async fn ensure_schema_exists(url: &str, schema: &str) -> Result<()> {
    let mut conn = AnyConnection::connect(url).await?;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
    )
    .bind(schema)
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    if exists {
        Ok(())
    } else {
        Err(Error::Missing(format!("schema {schema:?}")))
    }
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "23505" || code == "42P06")
}

/// Schema names are spliced into SQL (identifiers cannot be bound), so only plain ones pass.
pub(crate) fn validate_schema(name: &str) -> Result<&str> {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63;
    if plain {
        Ok(name)
    } else {
        Err(Error::InvalidSchema(name.to_owned()))
    }
}

/// `url` opening read-write, creating the file when `create`: a `mode` the URL names itself is
/// kept, but for one that must exist, never `rwc`.
fn with_open_mode(url: &str, create: bool) -> String {
    let mode = if create { "mode=rwc" } else { "mode=rw" };
    let Some((base, query)) = url.split_once('?') else {
        return format!("{url}?{mode}");
    };
    let mut pairs: Vec<&str> = query.split('&').filter(|pair| !pair.is_empty()).collect();
    match pairs.iter_mut().find(|pair| pair.starts_with("mode=")) {
        Some(pair) if !create && *pair == "mode=rwc" => *pair = mode,
        Some(_) => {}
        None => pairs.push(mode),
    }
    format!("{base}?{}", pairs.join("&"))
}

/// The file behind a SQLite URL, or `None` for in-memory databases.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (database, query) = rest.split_once('?').unwrap_or((rest, ""));
    if database.is_empty() || database == ":memory:" || query.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(decode_percent(database)))
}

/// Escapes what the SQLite URL parser would otherwise read as syntax; it percent-decodes paths.
fn encode_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' | '?' | '#' | ' ' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn decode_percent(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_round_trip_odd_paths() {
        let config = DbConfig::sqlite_in(Path::new("/tmp/a dir?#%"), "identity");
        assert_eq!(
            sqlite_path(&config.url),
            Some(PathBuf::from("/tmp/a dir?#%/identity.db"))
        );
        assert!(config.url.ends_with("?mode=rwc"));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }

    #[test]
    fn the_open_mode_is_added_only_when_missing() {
        let cases = [
            ("sqlite:///x.db", true, "sqlite:///x.db?mode=rwc"),
            ("sqlite:///x.db", false, "sqlite:///x.db?mode=rw"),
            ("sqlite:///x.db?mode=ro", true, "sqlite:///x.db?mode=ro"),
            ("sqlite:///x.db?mode=ro", false, "sqlite:///x.db?mode=ro"),
            ("sqlite:///x.db?mode=rwc", false, "sqlite:///x.db?mode=rw"),
            (
                "sqlite:///x.db?cache=shared",
                true,
                "sqlite:///x.db?cache=shared&mode=rwc",
            ),
            // Only the query's `mode` pair: a path may hold the same text.
            (
                "sqlite:///mode=rwc/x.db?mode=rwc&cache=shared",
                false,
                "sqlite:///mode=rwc/x.db?mode=rw&cache=shared",
            ),
        ];
        for (url, create, opened) in cases {
            assert_eq!(with_open_mode(url, create), opened, "{url} {create}");
        }
        let existing = DbConfig::sqlite_in(Path::new("/data"), "identity").existing();
        assert!(!existing.create_if_missing);
    }

    /// The file is made beforehand (0600) only where SQLite would make it.
    #[test]
    fn only_a_creating_open_mode_makes_the_file() {
        assert!(opens_creating("sqlite:///x.db?mode=rwc"));
        assert!(opens_creating("sqlite:///x.db?cache=shared&mode=rwc"));
        for url in [
            "sqlite:///x.db?mode=rw",
            "sqlite:///x.db?mode=ro",
            "sqlite:///mode=rwc/x.db?mode=rw",
            "sqlite:///x.db",
        ] {
            assert!(!opens_creating(url), "{url}");
        }
    }

    #[test]
    fn schema_names_must_be_plain() {
        assert!(validate_schema("identity_1").is_ok());
        for bad in ["", "1abc", "a\"b", "a b", "x;drop"] {
            assert!(validate_schema(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_hides_passwords() {
        let config = DbConfig::postgres("postgres://svc:s3cret@db:5432/mesh", None);
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("postgres://svc:***@db:5432/mesh"), "{shown}");
    }
}
