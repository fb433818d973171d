//! API keys.

use palisade_grpc::ApiError;
use palisade_tenancy::TenantId;
use sqlx::{AnyConnection, Row, any::AnyRow};

use super::{IdentityStore, internal};

/// An API key as stored (without its secret).
#[derive(Clone, Debug)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant_id: TenantId,
    pub display_name: String,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<String>,
    pub create_time: i64,
    pub expire_time: i64,
    pub revoke_time: Option<i64>,
}

impl IdentityStore {
    pub async fn insert_api_key(
        &self,
        conn: &mut AnyConnection,
        key: &ApiKeyRecord,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, display_name, secret_hash, scopes, create_time, expire_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.id)
        .bind(key.tenant_id.as_str())
        .bind(&key.display_name)
        .bind(key.secret_hash.clone())
        .bind(key.scopes.join(" "))
        .bind(key.create_time)
        .bind(key.expire_time)
        .execute(&mut *conn)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => ApiError::AlreadyExists {
                resource: format!("an api key named {:?} in tenants/{}", key.display_name, key.tenant_id),
            },
            _ => internal(error),
        })?;
        Ok(())
    }

    pub async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, ApiError> {
        let row = sqlx::query(
            "SELECT id, tenant_id, display_name, secret_hash, scopes, create_time, expire_time, revoke_time \
             FROM api_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await
        .map_err(internal)?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    /// Whether the tenant already has a key of this name (the bootstrap key is made once).
    pub async fn api_key_named(
        &self,
        tenant: &TenantId,
        display_name: &str,
    ) -> Result<bool, ApiError> {
        let row = sqlx::query("SELECT 1 FROM api_keys WHERE tenant_id = $1 AND display_name = $2")
            .bind(tenant.as_str())
            .bind(display_name)
            .fetch_optional(self.db.pool())
            .await
            .map_err(internal)?;
        Ok(row.is_some())
    }

    pub async fn touch_api_key(&self, id: &str, now: i64) -> Result<(), ApiError> {
        sqlx::query("UPDATE api_keys SET last_use_time = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(self.db.pool())
            .await
            .map_err(internal)?;
        Ok(())
    }
}

fn api_key_from_row(row: &AnyRow) -> Result<ApiKeyRecord, ApiError> {
    let tenant_id: String = row.try_get("tenant_id").map_err(internal)?;
    let scopes: String = row.try_get("scopes").map_err(internal)?;
    Ok(ApiKeyRecord {
        id: row.try_get("id").map_err(internal)?,
        tenant_id: TenantId::parse(&tenant_id).map_err(internal)?,
        display_name: row.try_get("display_name").map_err(internal)?,
        secret_hash: row.try_get("secret_hash").map_err(internal)?,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        create_time: row.try_get("create_time").map_err(internal)?,
        expire_time: row.try_get("expire_time").map_err(internal)?,
        revoke_time: row.try_get("revoke_time").map_err(internal)?,
    })
}
