//! A tenant's data for export and import: a read-only snapshot that pages through the tenant's
//! rows, and the inserts that restore them on an import's transaction. Both are confined to
//! the tenant's scope (row-level security on PostgreSQL).

use std::collections::HashMap;

use palisade_db::{Scope, placeholders};
use palisade_grpc::{ApiError, aip::CreatedCursor};
use palisade_proto::palisade::identity::v1::UserState;
use palisade_tenancy::TenantId;
use sqlx::{Any, AnyConnection, AssertSqlSafe, Row, Transaction};

use super::{
    IdentityStore,
    api_keys::{API_KEY_COLUMNS, api_key_from_row},
    internal,
    roles::{ROLE_COLUMNS, role_from_row},
    tenants::{TENANT_COLUMNS, tenant_from_row},
    users::{USER_COLUMNS, user_from_row},
};
use crate::{
    roles::RoleRecord,
    store::ApiKeyRecord,
    tenant_data::Restored,
    tenants::TenantRecord,
    users::{self, UserRecord},
};

/// One tenant's rows as of one moment, read page by page: every page comes from the same
/// snapshot, so an export is consistent however long its reader takes.
pub struct TenantSnapshot {
    store: IdentityStore,
    tx: Transaction<'static, Any>,
    tenant: TenantId,
}

impl IdentityStore {
    /// Opens a snapshot of `tenant` and returns it with the tenant as of it; `None` when the
    /// tenant does not exist.
    pub async fn tenant_snapshot(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<(TenantSnapshot, TenantRecord)>, ApiError> {
        let mut tx = self
            .db
            .snapshot_in(Scope::Tenant(tenant.as_str()))
            .await
            .map_err(internal)?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"
        )))
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(internal)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let record = tenant_from_row(&row)?;
        let snapshot = TenantSnapshot {
            store: self.clone(),
            tx,
            tenant: tenant.clone(),
        };
        Ok(Some((snapshot, record)))
    }

    /// Writes one checked record of an import on the caller's transaction (the tenant's
    /// record first, whose insert also checks that its domain is free).
    pub async fn restore_record(
        &self,
        conn: &mut AnyConnection,
        record: &Restored,
    ) -> Result<(), ApiError> {
        match record {
            Restored::Tenant(tenant) => self.insert_tenant(conn, tenant).await,
            Restored::Role(role) => self.insert_role(conn, role).await,
            Restored::User(user, password_hash) => {
                self.insert_user(conn, user, password_hash).await
            }
            Restored::ApiKey(key) => restore_api_key(conn, key).await,
        }
    }
}

impl TenantSnapshot {
    /// Whether some user of the tenant is in a state this server does not know (written by a
    /// newer version), which no export may carry (`tenant_data::unknown_user_state`).
    pub async fn has_user_in_unknown_state(&mut self) -> Result<bool, ApiError> {
        let known = [UserState::Active, UserState::Disabled].map(users::state_key);
        let found = sqlx::query(
            "SELECT 1 FROM users WHERE tenant_id = $1 AND state <> $2 AND state <> $3 LIMIT 1",
        )
        .bind(self.tenant.as_str())
        .bind(known[0])
        .bind(known[1])
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(internal)?;
        Ok(found.is_some())
    }

    /// Custom roles with their permissions, by id, after `after`, `limit` at most.
    pub async fn roles(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RoleRecord>, ApiError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ROLE_COLUMNS} FROM roles WHERE tenant_id = $1 AND id > $2 \
             ORDER BY id LIMIT {limit}"
        )))
        .bind(self.tenant.as_str())
        // Role ids are never empty, so "" is before the first.
        .bind(after.unwrap_or(""))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(internal)?;
        let mut roles = rows
            .iter()
            .map(role_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.store
            .fill_permissions(&mut self.tx, &self.tenant, &mut roles)
            .await?;
        Ok(roles)
    }

    /// Users with their roles and password hashes, in creation order after `after`, `limit`
    /// at most.
    pub async fn users(
        &mut self,
        after: Option<&CreatedCursor>,
        limit: usize,
    ) -> Result<Vec<(UserRecord, String)>, ApiError> {
        let (sql, time, id) = page_after(
            &format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE tenant_id = $1"),
            after,
            limit,
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(self.tenant.as_str())
            .bind(time)
            .bind(time)
            .bind(id)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(internal)?;
        let mut users = Vec::with_capacity(rows.len());
        for row in &rows {
            let hash: String = row.try_get("password_hash").map_err(internal)?;
            users.push((user_from_row(row)?, hash));
        }
        if users.is_empty() {
            return Ok(users);
        }
        // The page's roles in one query.
        let sql = format!(
            "SELECT user_id, role FROM user_roles WHERE tenant_id = $1 AND user_id IN ({}) \
             ORDER BY role",
            placeholders(2, users.len())
        );
        // Built from numbered placeholders only; every value is bound.
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(self.tenant.as_str());
        for (user, _) in &users {
            query = query.bind(user.id.clone());
        }
        let rows = query.fetch_all(&mut *self.tx).await.map_err(internal)?;
        let mut by_user: HashMap<String, Vec<String>> = HashMap::new();
        for row in &rows {
            let user: String = row.try_get("user_id").map_err(internal)?;
            let role: String = row.try_get("role").map_err(internal)?;
            by_user.entry(user).or_default().push(role);
        }
        for (user, _) in &mut users {
            user.roles = by_user.remove(&user.id).unwrap_or_default();
        }
        Ok(users)
    }

    /// API keys (revoked and expired ones too), in creation order after `after`, `limit` at
    /// most.
    pub async fn api_keys(
        &mut self,
        after: Option<&CreatedCursor>,
        limit: usize,
    ) -> Result<Vec<ApiKeyRecord>, ApiError> {
        let (sql, time, id) = page_after(
            &format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1"),
            after,
            limit,
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(self.tenant.as_str())
            .bind(time)
            .bind(time)
            .bind(id)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(internal)?;
        rows.iter().map(api_key_from_row).collect()
    }
}

/// `select` (filtered by tenant as `$1`) continued after a (create_time, id) cursor as `$2` to
/// `$4`, in that order, `limit` rows at most. Without a cursor it starts before any row.
fn page_after(select: &str, after: Option<&CreatedCursor>, limit: usize) -> (String, i64, String) {
    let sql = format!(
        "{select} AND (create_time > $2 OR (create_time = $3 AND id > $4)) \
         ORDER BY create_time, id LIMIT {limit}"
    );
    match after {
        Some(cursor) => (sql, cursor.create_time, cursor.id.clone()),
        None => (sql, i64::MIN, String::new()),
    }
}

/// An API key exactly as exported, with its revocation and last use. Its owner must be a
/// user of the same tenant, restored before it: the foreign key only says that some user has
/// the id (user ids are unique across tenants, and on PostgreSQL foreign keys see past
/// row-level security), and a key tied to another tenant's user would keep that user, and its
/// tenant, from being deleted.
async fn restore_api_key(conn: &mut AnyConnection, key: &ApiKeyRecord) -> Result<(), ApiError> {
    let restored = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO api_keys ({API_KEY_COLUMNS}) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 \
         WHERE $6 IS NULL OR EXISTS (SELECT 1 FROM users WHERE tenant_id = $2 AND id = $6)"
    )))
    .bind(&key.id)
    .bind(key.tenant_id.as_str())
    .bind(&key.display_name)
    .bind(key.secret_hash.clone())
    .bind(key.scopes.join(" "))
    .bind(key.owner_user_id.clone())
    .bind(key.created_with.clone())
    .bind(key.create_time)
    .bind(key.expire_time)
    .bind(key.revoke_time)
    .bind(key.last_use_time)
    .execute(&mut *conn)
    .await
    .map_err(|error| match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => ApiError::AlreadyExists {
            resource: format!(
                "{} or an api key named {:?} in tenants/{}",
                key.name(),
                key.display_name,
                key.tenant_id
            ),
        },
        _ => internal(error),
    })?;
    if restored.rows_affected() == 0 {
        return Err(ApiError::NotFound {
            resource: key.owner_name(),
        });
    }
    Ok(())
}
