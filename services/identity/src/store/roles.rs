//! Custom roles and their permissions, and the permissions users hold through them.
//!
//! A role that users hold must not disappear under them: assigning a custom role locks the
//! role row for share, and deleting one locks it for update before it looks for holders (on
//! PostgreSQL; SQLite's write transactions are serialized anyway), so an assignment and a
//! delete of the same role never both succeed.

use std::collections::{BTreeMap, BTreeSet};

use palisade_db::{Backend, Scope, placeholders};
use palisade_grpc::{ApiError, aip::Comparison};
use palisade_tenancy::TenantId;
use sqlx::{AnyConnection, AssertSqlSafe, Row, any::AnyRow};

use super::{IdentityStore, internal};
use crate::roles::RoleRecord;

/// A role-list condition on custom roles, already validated.
#[derive(Clone, Debug)]
pub enum RoleFilter {
    /// Roles that grant (`Eq`) or do not grant (`Ne`) a permission.
    Permission(Comparison, String),
}

pub(super) const ROLE_COLUMNS: &str =
    "tenant_id, id, display_name, description, create_time, update_time";

/// How a transaction holds a role row until it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleLock {
    /// Others may read and share-lock it, not change or delete it (assigning the role).
    Share,
    /// Nobody else may lock it (changing or deleting the role).
    Update,
}

impl IdentityStore {
    /// Inserts a custom role and its permissions; `ALREADY_EXISTS` when the id is taken in the
    /// tenant.
    pub async fn insert_role(
        &self,
        conn: &mut AnyConnection,
        role: &RoleRecord,
    ) -> Result<(), ApiError> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO roles ({ROLE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
        )))
        .bind(role.tenant_id.as_str())
        .bind(&role.id)
        .bind(&role.display_name)
        .bind(&role.description)
        .bind(role.create_time.unwrap_or_default())
        .bind(role.update_time.unwrap_or_default())
        .execute(&mut *conn)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => ApiError::AlreadyExists {
                resource: role.name(),
            },
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => ApiError::NotFound {
                resource: format!("tenants/{}", role.tenant_id),
            },
            _ => internal(error),
        })?;
        self.insert_role_permissions(conn, role).await
    }

    async fn insert_role_permissions(
        &self,
        conn: &mut AnyConnection,
        role: &RoleRecord,
    ) -> Result<(), ApiError> {
        for permission in &role.permissions {
            sqlx::query(
                "INSERT INTO role_permissions (tenant_id, role_id, permission) VALUES ($1, $2, $3)",
            )
            .bind(role.tenant_id.as_str())
            .bind(&role.id)
            .bind(permission)
            .execute(&mut *conn)
            .await
            .map_err(internal)?;
        }
        Ok(())
    }

    /// The custom role `id` of `tenant`, with its permissions.
    pub async fn get_role(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<RoleRecord>, ApiError> {
        Ok(self.custom_roles(tenant, &[id.to_owned()]).await?.pop())
    }

    /// Locks the custom role `id` of `tenant` for the rest of the transaction and reads it;
    /// `None` when it does not exist (or was deleted before the lock was granted).
    pub async fn lock_role(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantId,
        id: &str,
        lock: RoleLock,
    ) -> Result<Option<RoleRecord>, ApiError> {
        let mut locked = self
            .lock_roles(conn, tenant, &[id.to_owned()], lock)
            .await?;
        Ok(locked.pop())
    }

    /// Locks those of the custom roles `ids` of `tenant` that exist for the rest of the
    /// transaction, and reads them (ordered by id).
    pub async fn lock_roles(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantId,
        ids: &[String],
        lock: RoleLock,
    ) -> Result<Vec<RoleRecord>, ApiError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let suffix = match (self.db.backend(), lock) {
            (Backend::Postgres, RoleLock::Share) => " FOR SHARE",
            (Backend::Postgres, RoleLock::Update) => " FOR UPDATE",
            (Backend::Sqlite, _) => "",
        };
        // Built from numbered placeholders and a constant suffix; every value is bound.
        let sql = format!(
            "SELECT id FROM roles WHERE tenant_id = $1 AND id IN ({}) ORDER BY id{suffix}",
            placeholders(2, ids.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(tenant.as_str());
        for id in ids {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&mut *conn).await.map_err(internal)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        self.roles_by_id(conn, tenant, ids).await
    }

    /// The custom roles among `ids` of `tenant`, with their permissions, ordered by id.
    pub async fn custom_roles(
        &self,
        tenant: &TenantId,
        ids: &[String],
    ) -> Result<Vec<RoleRecord>, ApiError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut snapshot = self.role_snapshot(tenant).await?;
        let roles = self.roles_by_id(&mut snapshot, tenant, ids).await?;
        snapshot.commit().await.map_err(ApiError::from)?;
        Ok(roles)
    }

    /// A read of `tenant`'s roles in one snapshot. A role is two statements' worth (its row,
    /// its permissions): read apart, they could straddle an update, and the role read would be
    /// one that never was, its etag matching no version of it.
    async fn role_snapshot(
        &self,
        tenant: &TenantId,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, ApiError> {
        (self.db.snapshot_in(Scope::Tenant(tenant.as_str())).await).map_err(ApiError::from)
    }

    async fn roles_by_id(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantId,
        ids: &[String],
    ) -> Result<Vec<RoleRecord>, ApiError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Built from numbered placeholders only; every value is bound.
        let sql = format!(
            "SELECT {ROLE_COLUMNS} FROM roles WHERE tenant_id = $1 AND id IN ({}) ORDER BY id",
            placeholders(2, ids.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(tenant.as_str());
        for id in ids {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&mut *conn).await.map_err(internal)?;
        let mut roles = rows
            .iter()
            .map(role_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.fill_permissions(conn, tenant, &mut roles).await?;
        Ok(roles)
    }

    /// Fills in the permissions of `roles` (all of `tenant`) with one query.
    pub(super) async fn fill_permissions(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantId,
        roles: &mut [RoleRecord],
    ) -> Result<(), ApiError> {
        if roles.is_empty() {
            return Ok(());
        }
        // Built from numbered placeholders only; every value is bound.
        let sql = format!(
            "SELECT role_id, permission FROM role_permissions \
             WHERE tenant_id = $1 AND role_id IN ({})",
            placeholders(2, roles.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(tenant.as_str());
        for role in roles.iter() {
            query = query.bind(role.id.clone());
        }
        let rows = query.fetch_all(&mut *conn).await.map_err(internal)?;
        let mut by_role: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for row in &rows {
            let role: String = row.try_get("role_id").map_err(internal)?;
            let permission: String = row.try_get("permission").map_err(internal)?;
            by_role.entry(role).or_default().insert(permission);
        }
        for role in roles {
            role.permissions = by_role.remove(&role.id).unwrap_or_default();
        }
        Ok(())
    }

    /// Writes a changed custom role (already locked by the caller's transaction).
    pub async fn update_role(
        &self,
        conn: &mut AnyConnection,
        role: &RoleRecord,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE roles SET display_name = $1, description = $2, update_time = $3 \
             WHERE tenant_id = $4 AND id = $5",
        )
        .bind(&role.display_name)
        .bind(&role.description)
        .bind(role.update_time.unwrap_or_default())
        .bind(role.tenant_id.as_str())
        .bind(&role.id)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        self.delete_role_permissions(conn, &role.tenant_id, &role.id)
            .await?;
        self.insert_role_permissions(conn, role).await
    }

    /// Whether any user of `tenant` holds the role `id`.
    pub async fn role_in_use(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantId,
        id: &str,
    ) -> Result<bool, ApiError> {
        let row = sqlx::query(
            "SELECT 1 AS used FROM user_roles WHERE tenant_id = $1 AND role = $2 LIMIT 1",
        )
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(internal)?;
        Ok(row.is_some())
    }

    /// Deletes a custom role (locked and found unused by the caller's transaction).
    pub async fn delete_role(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantId,
        id: &str,
    ) -> Result<(), ApiError> {
        self.delete_role_permissions(conn, tenant, id).await?;
        sqlx::query("DELETE FROM roles WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.as_str())
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(internal)?;
        Ok(())
    }

    async fn delete_role_permissions(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantId,
        id: &str,
    ) -> Result<(), ApiError> {
        sqlx::query("DELETE FROM role_permissions WHERE tenant_id = $1 AND role_id = $2")
            .bind(tenant.as_str())
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// A page of `tenant`'s custom roles ordered by id, after `after`, `limit` rows at most.
    pub async fn list_roles(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        filters: &[RoleFilter],
        limit: usize,
    ) -> Result<Vec<RoleRecord>, ApiError> {
        let mut binds = vec![tenant.to_string()];
        let mut sql = format!("SELECT {ROLE_COLUMNS} FROM roles WHERE tenant_id = $1");
        if let Some(after) = after {
            binds.push(after.to_owned());
            sql.push_str(&format!(" AND id > ${}", binds.len()));
        }
        for filter in filters {
            let RoleFilter::Permission(comparison, permission) = filter;
            binds.push(permission.clone());
            let negate = if matches!(comparison, Comparison::Eq) {
                ""
            } else {
                "NOT "
            };
            sql.push_str(&format!(
                " AND {negate}EXISTS (SELECT 1 FROM role_permissions p WHERE p.tenant_id = \
                 roles.tenant_id AND p.role_id = roles.id AND p.permission = ${})",
                binds.len()
            ));
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {limit}"));
        // Built from constants and numbered placeholders only; every value is bound.
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for bind in binds {
            query = query.bind(bind);
        }
        let mut snapshot = self.role_snapshot(tenant).await?;
        let rows = query.fetch_all(&mut *snapshot).await.map_err(internal)?;
        let mut roles = rows
            .iter()
            .map(role_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.fill_permissions(&mut snapshot, tenant, &mut roles)
            .await?;
        snapshot.commit().await.map_err(ApiError::from)?;
        Ok(roles)
    }

    /// Every permission the user `user` of `tenant` holds through custom roles, in one query
    /// (a join from its roles to their permissions), however many roles it holds.
    pub async fn user_custom_permissions(
        &self,
        tenant: &TenantId,
        user: &str,
    ) -> Result<BTreeSet<String>, ApiError> {
        let rows = sqlx::query(
            "SELECT DISTINCT p.permission FROM user_roles u JOIN role_permissions p \
             ON p.tenant_id = u.tenant_id AND p.role_id = u.role \
             WHERE u.tenant_id = $1 AND u.user_id = $2",
        )
        .bind(tenant.as_str())
        .bind(user)
        .fetch_all(self.db.pool())
        .await
        .map_err(internal)?;
        rows.iter()
            .map(|row| row.try_get("permission").map_err(internal))
            .collect()
    }
}

pub(super) fn role_from_row(row: &AnyRow) -> Result<RoleRecord, ApiError> {
    let tenant_id: String = row.try_get("tenant_id").map_err(internal)?;
    Ok(RoleRecord {
        tenant_id: TenantId::parse(&tenant_id).map_err(internal)?,
        id: row.try_get("id").map_err(internal)?,
        display_name: row.try_get("display_name").map_err(internal)?,
        description: row.try_get("description").map_err(internal)?,
        permissions: BTreeSet::new(),
        built_in: false,
        create_time: Some(row.try_get("create_time").map_err(internal)?),
        update_time: Some(row.try_get("update_time").map_err(internal)?),
    })
}
