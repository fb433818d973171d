//! Schema migrations: the outbox table this crate owns, then the service's own migrations.

use sqlx::{AssertSqlSafe, migrate::Migrator};

use crate::{Backend, Db, Result, Scope, TENANT_SETTING};

/// A service's migrations for both backends, e.g.
/// `Migrations { sqlite: sqlx::migrate!("./migrations/sqlite"), postgres: sqlx::migrate!("./migrations/postgres") }`.
///
/// Kept apart per backend because DDL is where the dialects differ (BLOB/BYTEA, RLS policies).
#[derive(Debug)]
pub struct Migrations {
    pub sqlite: Migrator,
    pub postgres: Migrator,
}

/// `outbox` is created outside sqlx's migration table on purpose: every service gets it without
/// copying a migration file, and `IF NOT EXISTS` keeps it idempotent. Changing its shape needs a
/// new, equally idempotent statement here. `binary` is the engine's byte-string type.
fn outbox_statements(binary: &str) -> [String; 3] {
    [
        format!(
            "CREATE TABLE IF NOT EXISTS outbox (
                id TEXT PRIMARY KEY,
                topic TEXT NOT NULL,
                payload {binary} NOT NULL,
                created_at BIGINT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                trace_context TEXT
            )"
        ),
        "CREATE INDEX IF NOT EXISTS outbox_topic_order ON outbox (topic, created_at, id)"
            .to_owned(),
        // Messages a sink rejected on their own (see `outbox::DeadLetter`).
        format!(
            "CREATE TABLE IF NOT EXISTS outbox_dead_letters (
                id TEXT PRIMARY KEY,
                topic TEXT NOT NULL,
                payload {binary} NOT NULL,
                created_at BIGINT NOT NULL,
                attempts INTEGER NOT NULL,
                trace_context TEXT,
                reason TEXT NOT NULL,
                dead_at BIGINT NOT NULL
            )"
        ),
    ]
}

impl Db {
    /// Ensures the outbox table, then runs the service's migrator for this backend.
    pub async fn migrate(&self, migrations: &Migrations) -> Result<()> {
        self.ensure_outbox().await?;
        let migrator = match self.backend() {
            Backend::Sqlite => &migrations.sqlite,
            Backend::Postgres => &migrations.postgres,
        };
        let mut conn = self.pool().acquire().await?;
        // sqlx lets go of its migration lock (session-level, one per database) only when a
        // run succeeds: closed after use, this session releases it whatever happened, so a
        // failed or cancelled run leaves no idle connection in this pool holding it, and a
        // retry, another replica or another service migrating in the database is not left
        // waiting.
        conn.close_on_drop();
        if self.backend() == Backend::Postgres {
            // Migrations are platform work: they see every tenant's rows (for this session; the
            // pool sets the scope again when it hands the connection out next). Under the empty
            // scope of work outside a call, a data migration on a table with row-level security
            // would change no row and report success.
            sqlx::query("SELECT set_config($1, $2, false)")
                .bind(TENANT_SETTING)
                .bind(Scope::AllTenants.setting())
                .execute(&mut *conn)
                .await?;
        }
        migrator.run(&mut *conn).await?;
        Ok(())
    }

    async fn ensure_outbox(&self) -> Result<()> {
        let mut tx = self.begin().await?;
        let statements = match self.backend() {
            // `BEGIN IMMEDIATE` already serializes concurrent callers.
            Backend::Sqlite => outbox_statements("BLOB"),
            Backend::Postgres => {
                // Concurrent `CREATE TABLE IF NOT EXISTS` can still collide in the catalog
                // (replicas starting together); a transaction-scoped lock makes them take turns.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext('palisade.db/outbox-ddl'))")
                    .execute(&mut *tx)
                    .await?;
                outbox_statements("BYTEA")
            }
        };
        for statement in statements {
            sqlx::query(AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
