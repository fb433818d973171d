//! Row-level security (DESIGN §4.5): on PostgreSQL every tenant-scoped table carries a policy
//! that shows a transaction only the rows of the tenant named in the `palisade.tenant_id`
//! setting, so a store query that forgets its `tenant_id = $1` still cannot read or change
//! another tenant's rows. A transaction states its scope when it begins ([`Db::begin_in`],
//! [`Db::read_in`]); without one, a connection takes the scope that the work the task is doing
//! declared ([`in_scope`]) or else that of the call it is handling ([`ambient_setting`]), set as
//! the connection leaves the pool, so store code that runs plain queries is walled in too.
//!
//! The wall holds only for ordinary roles: superusers and `BYPASSRLS` roles skip policies, so
//! services connect as an ordinary role ([`ServiceRole`] makes one) and warn at start when
//! they do not. SQLite has no such wall; there the store's own filters are the only one.

use std::future::Future;

use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use crate::{Backend, Db, Result};

/// The setting the policies read.
pub const TENANT_SETTING: &str = "palisade.tenant_id";

/// Which tenants' rows a transaction may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope<'a> {
    /// One tenant's rows only: what every tenant-facing call uses.
    Tenant(&'a str),
    /// Every tenant's rows: only for work that is cross-tenant by nature and says so (platform
    /// operators listing tenants, finding a credential before its tenant is known, the audit
    /// relay's batches).
    AllTenants,
}

impl Scope<'_> {
    pub(crate) fn setting(&self) -> &str {
        match self {
            Scope::Tenant(tenant) => tenant,
            Scope::AllTenants => "*",
        }
    }
}

tokio::task_local! {
    /// The scope that the work this task is doing declared for itself ([`in_scope`]).
    static DECLARED: String;
}

/// Runs `work` in `scope`: every connection it takes from the pool without a scope of its
/// own sees `scope`'s rows, whatever the call it serves asserts. For handlers whose tenant
/// comes from the request rather than the call (an authorization check names its principal's
/// tenant), and for the few that are cross-tenant by nature and say so with
/// [`Scope::AllTenants`] (sign-in by token, the gateway's key and tenant lookups). Only the
/// task running `work` is covered: a task it spawns states its own scope.
pub async fn in_scope<F: Future>(scope: Scope<'_>, work: F) -> F::Output {
    DECLARED.scope(scope.setting().to_owned(), work).await
}

/// The scope of whatever this task is doing, for connections that no explicit scope covers:
/// the scope the work declared ([`in_scope`]), if it did; else work handling a tenant's call
/// sees that tenant, and a platform operator's call every tenant. A call asserting no tenant
/// (a public or mesh-internal call that did not declare one) and work outside any call —
/// background jobs, tasks spawned off a request — see no tenant rows: a handler that forgets
/// its scope finds nothing rather than everything.
pub(crate) fn ambient_setting() -> String {
    if let Ok(declared) = DECLARED.try_with(String::clone) {
        return declared;
    }
    match palisade_tenancy::current_call() {
        Some(Some(context)) if context.is_platform_operator() => "*".to_owned(),
        Some(Some(context)) => context.tenant_id.to_string(),
        None | Some(None) => String::new(),
    }
}

/// Applies the ambient scope to a connection as it is handed out of the pool (session-level:
/// the next hand-out overwrites it).
pub(crate) async fn enter_ambient(conn: &mut sqlx::AnyConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT set_config($1, $2, false)")
        .bind(TENANT_SETTING)
        .bind(ambient_setting())
        .execute(conn)
        .await?;
    Ok(())
}

impl Db {
    /// A write transaction (see [`Db::begin`]) confined to `scope`.
    pub async fn begin_in(&self, scope: Scope<'_>) -> Result<Transaction<'static, Any>> {
        let mut tx = self.begin().await?;
        self.enter(&mut tx, scope).await?;
        Ok(tx)
    }

    /// A read transaction confined to `scope`: deferred on SQLite, so it takes no write lock.
    pub async fn read_in(&self, scope: Scope<'_>) -> Result<Transaction<'static, Any>> {
        let mut tx = self.pool().begin().await?;
        self.enter(&mut tx, scope).await?;
        Ok(tx)
    }

    /// A read-only transaction confined to `scope` that sees one snapshot of the database for
    /// its whole life, however long it runs and whatever commits meanwhile: for exports that
    /// page through many tables. PostgreSQL: `REPEATABLE READ READ ONLY`; SQLite (WAL): a
    /// deferred transaction keeps the snapshot of its first read.
    pub async fn snapshot_in(&self, scope: Scope<'_>) -> Result<Transaction<'static, Any>> {
        let mut tx = match self.backend() {
            Backend::Postgres => {
                self.pool()
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
            Backend::Sqlite => self.pool().begin().await?,
        };
        self.enter(&mut tx, scope).await?;
        Ok(tx)
    }

    async fn enter(&self, tx: &mut Transaction<'static, Any>, scope: Scope<'_>) -> Result<()> {
        if self.backend() == Backend::Postgres {
            // `is_local = true`: the setting ends with the transaction, so a pooled connection
            // never carries one caller's tenant into the next caller's work.
            sqlx::query("SELECT set_config($1, $2, true)")
                .bind(TENANT_SETTING)
                .bind(scope.setting())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// PostgreSQL only: whether this connection's role skips row-level security (a superuser
    /// or a `BYPASSRLS` role), which leaves the store code as the only wall between tenants.
    pub async fn bypasses_row_security(&self) -> Result<bool> {
        if self.backend() != Backend::Postgres {
            return Ok(false);
        }
        let row = sqlx::query(
            "SELECT (rolsuper OR rolbypassrls) AS bypasses FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get::<bool, _>("bypasses")?)
    }
}

/// An ordinary PostgreSQL role for services to connect as (no superuser, no `BYPASSRLS`), so
/// row-level security applies to them. Made by an administrator's connection.
pub struct ServiceRole {
    pub name: String,
}

impl ServiceRole {
    /// Creates `name` (letters, digits and `_` only) with LOGIN and the right to create schemas
    /// in the current database, and returns it with the URL to connect as it (the admin URL with
    /// the user replaced; no password: for trust or certificate authentication).
    pub async fn create(admin: &Db, admin_url: &str, name: &str) -> Result<(ServiceRole, String)> {
        let name = crate::pool::validate_schema(name)?.to_owned();
        let mut tx = serialized(admin).await?;
        let create = format!(r#"CREATE ROLE "{name}" LOGIN NOSUPERUSER NOBYPASSRLS"#);
        sqlx::query(AssertSqlSafe(create)).execute(&mut *tx).await?;
        let database: String = sqlx::query("SELECT current_database()::text AS name")
            .fetch_one(&mut *tx)
            .await?
            .try_get("name")?;
        // The database's name is the administrator's to choose, but it is spliced into DDL:
        // quoted as an identifier, its own quotes doubled.
        let database = database.replace('"', r#""""#);
        let grant = format!(r#"GRANT CREATE ON DATABASE "{database}" TO "{name}""#);
        sqlx::query(AssertSqlSafe(grant)).execute(&mut *tx).await?;
        tx.commit().await?;
        let url = with_user(admin_url, &name);
        Ok((ServiceRole { name }, url))
    }

    /// Drops the role and everything it owns in the current database, ending its sessions
    /// first (a sandbox that was not stopped still holds some, whose locks would keep `DROP
    /// OWNED` waiting).
    pub async fn drop(self, admin: &Db) -> Result<()> {
        let name = &self.name;
        let mut tx = serialized(admin).await?;
        for statement in [
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE usename = '{name}' AND pid <> pg_backend_pid()"
            ),
            format!(r#"DROP OWNED BY "{name}" CASCADE"#),
            format!(r#"DROP ROLE IF EXISTS "{name}""#),
        ] {
            sqlx::query(AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A transaction holding the lock that serializes role changes: concurrent grants on one
/// database otherwise fail with "tuple concurrently updated" (they rewrite the same catalog row).
async fn serialized(admin: &Db) -> Result<Transaction<'static, Any>> {
    let mut tx = admin.pool().begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('palisade.service_roles'))")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// `postgres://admin:pw@host/db` → `postgres://<user>@host/db`.
fn with_user(url: &str, user: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let host = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}://{user}@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls_replace_the_user() {
        assert_eq!(
            with_user("postgres://postgres@127.0.0.1:5432/ci", "svc"),
            "postgres://svc@127.0.0.1:5432/ci"
        );
        assert_eq!(
            with_user("postgres://admin:secret@db/x?sslmode=require", "svc"),
            "postgres://svc@db/x?sslmode=require"
        );
        assert_eq!(with_user("postgres://db/x", "svc"), "postgres://svc@db/x");
    }
}
