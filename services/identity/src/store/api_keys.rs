//! API keys. A key's owner is a user of its tenant (`owner_user_id`) or, when that is NULL,
//! the tenant itself (a service-account key, like the bootstrap operator key).

use palisade_grpc::{
    ApiError,
    aip::{Comparison, CreatedCursor},
};
use palisade_proto::palisade::identity::v1::ApiKeyState;
use palisade_tenancy::TenantId;
use sqlx::{AnyConnection, AssertSqlSafe, Row, any::AnyRow};

use super::{Bind, IdentityStore, internal};

/// An API key as stored (its secret only as a hash).
#[derive(Clone, Debug)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant_id: TenantId,
    pub display_name: String,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<String>,
    /// The user the key acts for; `None`: the tenant itself (a service-account key).
    pub owner_user_id: Option<String>,
    pub create_time: i64,
    pub expire_time: i64,
    pub revoke_time: Option<i64>,
    pub last_use_time: Option<i64>,
}

/// A key-list condition, already validated.
#[derive(Clone, Debug)]
pub enum ApiKeyFilter {
    /// Compared with the key's state at `now`.
    State(Comparison, ApiKeyState),
    /// `None`: the tenant's own (service-account) keys.
    Owner(Comparison, Option<String>),
}

pub(super) const API_KEY_COLUMNS: &str = "id, tenant_id, display_name, secret_hash, scopes, owner_user_id, \
     create_time, expire_time, revoke_time, last_use_time";

impl IdentityStore {
    /// Inserts a key; `ALREADY_EXISTS` when the tenant has a key of this name, `NOT_FOUND`
    /// when the tenant or the owner does not exist.
    pub async fn insert_api_key(
        &self,
        conn: &mut AnyConnection,
        key: &ApiKeyRecord,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, display_name, secret_hash, scopes, owner_user_id, \
             create_time, expire_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&key.id)
        .bind(key.tenant_id.as_str())
        .bind(&key.display_name)
        .bind(key.secret_hash.clone())
        .bind(key.scopes.join(" "))
        .bind(key.owner_user_id.clone())
        .bind(key.create_time)
        .bind(key.expire_time)
        .execute(&mut *conn)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => ApiError::AlreadyExists {
                resource: format!("an api key named {:?} in tenants/{}", key.display_name, key.tenant_id),
            },
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => ApiError::NotFound {
                resource: key.owner_name(),
            },
            _ => internal(error),
        })?;
        Ok(())
    }

    /// The key `id`, whatever its tenant (callers compare the tenant they expect).
    pub async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, ApiError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.db.pool())
        .await
        .map_err(internal)?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    /// The key `id` of `tenant`; a key of another tenant is not found.
    pub async fn get_tenant_api_key(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<ApiKeyRecord>, ApiError> {
        Ok(self
            .get_api_key(id)
            .await?
            .filter(|key| &key.tenant_id == tenant))
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

    /// Revokes a key of `tenant`; false when it was revoked already (or does not exist).
    pub async fn revoke_api_key(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantId,
        id: &str,
        now: i64,
    ) -> Result<bool, ApiError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoke_time = $1 \
             WHERE tenant_id = $2 AND id = $3 AND revoke_time IS NULL",
        )
        .bind(now)
        .bind(tenant.as_str())
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn touch_api_key(&self, id: &str, now: i64) -> Result<(), ApiError> {
        // On SQLite's writer connection, as every write: see `claim_password_attempt`.
        sqlx::query("UPDATE api_keys SET last_use_time = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(self.db.single_write())
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// A page of `tenant`'s keys in creation order, `limit` rows at most; states are judged
    /// at `now`.
    pub async fn list_api_keys(
        &self,
        tenant: &TenantId,
        after: Option<&CreatedCursor>,
        filters: &[ApiKeyFilter],
        now: i64,
        limit: usize,
    ) -> Result<Vec<ApiKeyRecord>, ApiError> {
        let mut binds: Vec<Bind> = vec![Bind::Text(tenant.to_string())];
        let mut sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1");
        let next = |value: Bind, binds: &mut Vec<Bind>| {
            binds.push(value);
            format!("${}", binds.len())
        };
        if let Some(cursor) = after {
            let t1 = next(Bind::Int(cursor.create_time), &mut binds);
            let t2 = next(Bind::Int(cursor.create_time), &mut binds);
            let id = next(Bind::Text(cursor.id.clone()), &mut binds);
            sql.push_str(&format!(
                " AND (create_time > {t1} OR (create_time = {t2} AND id > {id}))"
            ));
        }
        for filter in filters {
            let (comparison, condition) = match filter {
                ApiKeyFilter::State(comparison, state) => {
                    let condition = match state {
                        ApiKeyState::Revoked => "revoke_time IS NOT NULL".to_owned(),
                        ApiKeyState::Expired => format!(
                            "revoke_time IS NULL AND expire_time <= {}",
                            next(Bind::Int(now), &mut binds)
                        ),
                        ApiKeyState::Active | ApiKeyState::Unspecified => format!(
                            "revoke_time IS NULL AND expire_time > {}",
                            next(Bind::Int(now), &mut binds)
                        ),
                    };
                    (comparison, condition)
                }
                ApiKeyFilter::Owner(comparison, None) => {
                    (comparison, "owner_user_id IS NULL".to_owned())
                }
                ApiKeyFilter::Owner(comparison, Some(user)) => {
                    let p = next(Bind::Text(user.clone()), &mut binds);
                    (
                        comparison,
                        format!("owner_user_id IS NOT NULL AND owner_user_id = {p}"),
                    )
                }
            };
            // Each condition is true or false, never NULL, so NOT is its exact complement.
            let negate = if matches!(comparison, Comparison::Eq) {
                ""
            } else {
                "NOT "
            };
            sql.push_str(&format!(" AND {negate}({condition})"));
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
        rows.iter().map(api_key_from_row).collect()
    }
}

pub(super) fn api_key_from_row(row: &AnyRow) -> Result<ApiKeyRecord, ApiError> {
    let tenant_id: String = row.try_get("tenant_id").map_err(internal)?;
    let scopes: String = row.try_get("scopes").map_err(internal)?;
    Ok(ApiKeyRecord {
        id: row.try_get("id").map_err(internal)?,
        tenant_id: TenantId::parse(&tenant_id).map_err(internal)?,
        display_name: row.try_get("display_name").map_err(internal)?,
        secret_hash: row.try_get("secret_hash").map_err(internal)?,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        owner_user_id: row.try_get("owner_user_id").map_err(internal)?,
        create_time: row.try_get("create_time").map_err(internal)?,
        expire_time: row.try_get("expire_time").map_err(internal)?,
        revoke_time: row.try_get("revoke_time").map_err(internal)?,
        last_use_time: row.try_get("last_use_time").map_err(internal)?,
    })
}
