//! Tenants.

use palisade_db::Backend;
use palisade_grpc::{
    ApiError,
    aip::{Comparison, CreatedCursor},
};
use palisade_tenancy::TenantId;
use sqlx::{AnyConnection, AssertSqlSafe, Row, any::AnyRow};

use super::{Bind, IdentityStore, internal};
use crate::tenants::{TenantRecord, plan_from_key, state_from_key};

/// A tenant-list condition, already validated: column and stored value.
#[derive(Clone, Debug)]
pub struct TenantFilter {
    pub column: &'static str,
    pub comparison: Comparison,
    pub value: String,
}

pub(super) const TENANT_COLUMNS: &str = "id, display_name, plan, state, region, domain, \
    feature_overrides, limit_overrides, create_time, update_time";

/// Everything identity holds for a tenant, children before parents (foreign keys: a user's
/// API keys name it as owner, a role's permissions name the role), the tenant row last; each
/// statement takes the tenant id as `$1`. A table that holds tenant data is one more line here;
/// `DeleteTenant` and a replacing `ImportTenantData` both clear a tenant with it. The outbox is
/// not in the list: the tenant's last audit events (its deletion among them) must still reach
/// compliance. Nor is `deleted_tenants`: it is not the tenant's data but what outlives it.
const TENANT_DATA: &[&str] = &[
    "DELETE FROM refresh_tokens \
     WHERE family_id IN (SELECT id FROM token_families WHERE tenant_id = $1)",
    "DELETE FROM token_families WHERE tenant_id = $1",
    "DELETE FROM user_roles WHERE tenant_id = $1",
    "DELETE FROM api_keys WHERE tenant_id = $1",
    "DELETE FROM users WHERE tenant_id = $1",
    "DELETE FROM role_permissions WHERE tenant_id = $1",
    "DELETE FROM roles WHERE tenant_id = $1",
    "DELETE FROM tenant_usage WHERE tenant_id = $1",
    "DELETE FROM unknown_email_attempts WHERE tenant_id = $1",
    "DELETE FROM tenants WHERE id = $1",
];

impl IdentityStore {
    /// Inserts a new tenant, unless its id belonged to a deleted tenant (`ALREADY_EXISTS`):
    /// compliance keeps that tenant's audit log under the id, and a newcomer must not read it.
    /// The insert comes first. A `DeleteTenant` of the id still in progress holds its tenant
    /// row, so the insert waits for it and, once it has committed, the check (a statement of
    /// its own, on PostgreSQL's read-committed snapshot) sees the id it retired; checked
    /// first, it could have found nothing and let the insert through.
    pub async fn create_tenant(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantRecord,
    ) -> Result<(), ApiError> {
        self.insert_tenant(conn, tenant).await?;
        let retired = sqlx::query("SELECT 1 FROM deleted_tenants WHERE id = $1")
            .bind(tenant.id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(internal)?;
        if retired.is_some() {
            // The caller's transaction is dropped on this error, the insert with it.
            return Err(ApiError::AlreadyExists {
                resource: format!(
                    "tenants/{} (the id of a deleted tenant, whose audit log is kept; choose \
                     another tenant_id)",
                    tenant.id
                ),
            });
        }
        Ok(())
    }

    /// Inserts a tenant as it is: a new one (`create_tenant`), the system tenant at bootstrap,
    /// or a restored one, which may come back under its retired id.
    pub async fn insert_tenant(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantRecord,
    ) -> Result<(), ApiError> {
        ensure_domain_free(conn, tenant).await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO tenants ({TENANT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        )))
        .bind(tenant.id.as_str())
        .bind(&tenant.display_name)
        .bind(crate::tenants::plan_key(tenant.plan))
        .bind(crate::tenants::state_key(tenant.state))
        .bind(&tenant.region)
        .bind(tenant.domain.clone())
        .bind(to_json(&tenant.feature_overrides))
        .bind(to_json(&tenant.limit_overrides))
        .bind(tenant.create_time)
        .bind(tenant.update_time)
        .execute(&mut *conn)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => conflict(&**db, tenant),
            _ => internal(error),
        })?;
        Ok(())
    }

    /// Writes every changed column of `tenant` (its id names the row); `ALREADY_EXISTS` when
    /// its new domain belongs to another tenant.
    pub async fn update_tenant(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantRecord,
    ) -> Result<(), ApiError> {
        ensure_domain_free(conn, tenant).await?;
        sqlx::query(
            "UPDATE tenants SET display_name = $2, plan = $3, state = $4, region = $5, \
             domain = $6, feature_overrides = $7, limit_overrides = $8, update_time = $9 \
             WHERE id = $1",
        )
        .bind(tenant.id.as_str())
        .bind(&tenant.display_name)
        .bind(crate::tenants::plan_key(tenant.plan))
        .bind(crate::tenants::state_key(tenant.state))
        .bind(&tenant.region)
        .bind(tenant.domain.clone())
        .bind(to_json(&tenant.feature_overrides))
        .bind(to_json(&tenant.limit_overrides))
        .bind(tenant.update_time)
        .execute(&mut *conn)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => conflict(&**db, tenant),
            _ => internal(error),
        })?;
        Ok(())
    }

    /// Deletes the tenant and everything identity holds for it (see `TENANT_DATA`), on the
    /// caller's transaction, and retires its id (`deleted_tenants`): `create_tenant` refuses it
    /// from then on. An id retired before (its tenant was restored since) is retired again.
    pub async fn delete_tenant(
        &self,
        conn: &mut AnyConnection,
        id: &TenantId,
        delete_time: i64,
    ) -> Result<(), ApiError> {
        self.clear_tenant(conn, id).await?;
        sqlx::query(
            "INSERT INTO deleted_tenants (id, delete_time) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET delete_time = excluded.delete_time",
        )
        .bind(id.as_str())
        .bind(delete_time)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        Ok(())
    }

    /// Deletes everything identity holds for the tenant (see `TENANT_DATA`), the tenant row
    /// included, on the caller's transaction, without retiring its id: a replacing import
    /// writes the same tenant back at once.
    pub async fn clear_tenant(
        &self,
        conn: &mut AnyConnection,
        id: &TenantId,
    ) -> Result<(), ApiError> {
        for statement in TENANT_DATA {
            sqlx::query(*statement)
                .bind(id.as_str())
                .execute(&mut *conn)
                .await
                .map_err(internal)?;
        }
        Ok(())
    }

    /// Un-retires the id of a deleted tenant that a restore brings back, on the restore's
    /// transaction: the tenant and its audit log are one again. Nothing when it was never
    /// deleted.
    pub async fn reinstate_tenant_id(
        &self,
        conn: &mut AnyConnection,
        id: &TenantId,
    ) -> Result<(), ApiError> {
        sqlx::query("DELETE FROM deleted_tenants WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *conn)
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// The tenant, read inside the caller's write transaction and locked until it ends
    /// (PostgreSQL `FOR UPDATE`; SQLite write transactions hold the database lock already),
    /// so a read-check-write on it cannot interleave with another.
    pub async fn lock_tenant(
        &self,
        conn: &mut AnyConnection,
        id: &TenantId,
    ) -> Result<Option<TenantRecord>, ApiError> {
        let lock = match self.db.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1{lock}"
        )))
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(internal)?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    /// The tenant whose domain is `domain` (already in lower case).
    pub async fn tenant_by_domain(&self, domain: &str) -> Result<Option<TenantRecord>, ApiError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE domain = $1"
        )))
        .bind(domain)
        .fetch_optional(self.db.pool())
        .await
        .map_err(internal)?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    pub async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, ApiError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(self.db.pool())
        .await
        .map_err(internal)?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    /// A page of tenants in creation order. `only` restricts to one tenant (a tenant's own
    /// principals see only their tenant); `limit` rows at most.
    pub async fn list_tenants(
        &self,
        only: Option<&TenantId>,
        after: Option<&CreatedCursor>,
        filters: &[TenantFilter],
        limit: usize,
    ) -> Result<Vec<TenantRecord>, ApiError> {
        let mut sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE 1 = 1");
        let mut binds: Vec<Bind> = Vec::new();
        let next = |value: Bind, binds: &mut Vec<Bind>| {
            binds.push(value);
            format!("${}", binds.len())
        };
        if let Some(id) = only {
            let p = next(Bind::Text(id.to_string()), &mut binds);
            sql.push_str(&format!(" AND id = {p}"));
        }
        if let Some(cursor) = after {
            let t1 = next(Bind::Int(cursor.create_time), &mut binds);
            let t2 = next(Bind::Int(cursor.create_time), &mut binds);
            let id = next(Bind::Text(cursor.id.clone()), &mut binds);
            sql.push_str(&format!(
                " AND (create_time > {t1} OR (create_time = {t2} AND id > {id}))"
            ));
        }
        for filter in filters {
            let p = next(Bind::Text(filter.value.clone()), &mut binds);
            sql.push_str(&format!(
                " AND {} {} {p}",
                filter.column,
                filter.comparison.sql()
            ));
        }
        sql.push_str(&format!(" ORDER BY create_time, id LIMIT {limit}"));
        // Built from constants and numbered placeholders only; every value is bound.
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for bind in binds {
            query = match bind {
                Bind::Text(text) => query.bind(text),
                Bind::Int(int) => query.bind(int),
            };
        }
        let rows = query.fetch_all(self.db.pool()).await.map_err(internal)?;
        rows.iter().map(tenant_from_row).collect()
    }
}

/// What a unique violation writing `tenant` means: another tenant took its domain since
/// `ensure_domain_free` looked (two writes raced for one domain, and the unique index decided),
/// or, on insert, its id exists.
fn conflict(db: &dyn sqlx::error::DatabaseError, tenant: &TenantRecord) -> ApiError {
    // PostgreSQL names the index (`tenants_domain_key`); SQLite says it only in its message
    // (`UNIQUE constraint failed: tenants.domain`).
    let on_domain = match db.constraint() {
        Some(constraint) => constraint.contains("domain"),
        None => db.message().contains("tenants.domain"),
    };
    match &tenant.domain {
        Some(domain) if on_domain => ApiError::AlreadyExists {
            resource: format!("a tenant with domain {domain}"),
        },
        _ => ApiError::AlreadyExists {
            resource: format!("tenants/{}", tenant.id),
        },
    }
}

/// A domain routes to one tenant: `ALREADY_EXISTS` when another tenant has `tenant`'s.
async fn ensure_domain_free(
    conn: &mut AnyConnection,
    tenant: &TenantRecord,
) -> Result<(), ApiError> {
    let Some(domain) = &tenant.domain else {
        return Ok(());
    };
    let taken = sqlx::query("SELECT 1 FROM tenants WHERE domain = $1 AND id <> $2")
        .bind(domain)
        .bind(tenant.id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(internal)?;
    if taken.is_some() {
        return Err(ApiError::AlreadyExists {
            resource: format!("a tenant with domain {domain}"),
        });
    }
    Ok(())
}

pub(super) fn tenant_from_row(row: &AnyRow) -> Result<TenantRecord, ApiError> {
    let id: String = row.try_get("id").map_err(internal)?;
    Ok(TenantRecord {
        id: TenantId::parse(&id).map_err(internal)?,
        display_name: row.try_get("display_name").map_err(internal)?,
        plan: plan_from_key(&row.try_get::<String, _>("plan").map_err(internal)?),
        state: state_from_key(&row.try_get::<String, _>("state").map_err(internal)?),
        region: row.try_get("region").map_err(internal)?,
        domain: row.try_get("domain").map_err(internal)?,
        feature_overrides: from_json(row, "feature_overrides")?,
        limit_overrides: from_json(row, "limit_overrides")?,
        create_time: row.try_get("create_time").map_err(internal)?,
        update_time: row.try_get("update_time").map_err(internal)?,
    })
}

/// Overrides are stored as JSON objects: a handful of keys per tenant, always read whole.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("maps of strings serialize")
}

fn from_json<T: serde::de::DeserializeOwned>(row: &AnyRow, column: &str) -> Result<T, ApiError> {
    let text: String = row.try_get(column).map_err(internal)?;
    serde_json::from_str(&text).map_err(internal)
}
