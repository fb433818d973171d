//! API keys. A key's owner is a user of its tenant (`owner_user_id`) or, when that is NULL,
//! the tenant itself (a service-account key, like the bootstrap operator key).

use std::collections::HashSet;

use palisade_db::{Backend, placeholders};
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
    /// The key this key was created with, `tenants/{t}/apiKeys/{id}` (a platform operator's
    /// key is of the system tenant); `None`: made by a person or the bootstrap. Revoking that
    /// key revokes this one.
    pub created_with: Option<String>,
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
    /// The name of the key the listed keys were made with.
    CreatedWith(Comparison, String),
}

pub(super) const API_KEY_COLUMNS: &str = "id, tenant_id, display_name, secret_hash, scopes, owner_user_id, \
     created_with, create_time, expire_time, revoke_time, last_use_time";

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
             created_with, create_time, expire_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&key.id)
        .bind(key.tenant_id.as_str())
        .bind(&key.display_name)
        .bind(key.secret_hash.clone())
        .bind(key.scopes.join(" "))
        .bind(key.owner_user_id.clone())
        .bind(key.created_with.clone())
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

    /// Revokes, at `now`, every key created with the key named `name`, the keys created with
    /// those, and so on, but the `spared` ones (a calling key and the keys between it and
    /// `name`, each made with the next: their other keys are revoked); returns those revoked,
    /// stopping early once the key `calling` (the call's own) is among them.
    /// Called on the transaction that revoked `name`. Not confined to one tenant: a platform
    /// operator's key may have made keys in any tenant.
    ///
    /// One statement per key revoked, each with a fresh snapshot, rather than one recursive
    /// statement: a key being made with a key share-locks that key's row (`share_lock_live_api_key`),
    /// so revoking that key waited for it to commit, and only a statement begun after that
    /// sees it. A key made after the revocation commits finds its maker revoked and is not
    /// made (a spared maker stays live, and what it makes is made after the revocation).
    pub async fn revoke_keys_created_with(
        &self,
        conn: &mut AnyConnection,
        name: &str,
        now: i64,
        spared: &[ApiKeyRecord],
        calling: Option<&str>,
    ) -> Result<Vec<ApiKeyRecord>, ApiError> {
        let mut revoked = Vec::new();
        // The spared keys' other keys are revoked too; a calling key spared keeps its own.
        let mut makers: Vec<String> = std::iter::once(name.to_owned())
            .chain(spared.iter().skip(1).map(ApiKeyRecord::name))
            .collect();
        // Each key is walked through once, so even a cycle (which only an import could
        // write) ends.
        let mut walked: HashSet<String> = makers.iter().cloned().collect();
        walked.extend(spared.iter().map(ApiKeyRecord::name));
        let spared_ids = placeholders(3, spared.len());
        let but_spared = match spared.is_empty() {
            true => String::new(),
            false => format!(" AND id NOT IN ({spared_ids})"),
        };
        while let Some(maker) = makers.pop() {
            let sql = format!(
                "UPDATE api_keys SET revoke_time = $1 \
                 WHERE created_with = $2 AND revoke_time IS NULL{but_spared} \
                 RETURNING {API_KEY_COLUMNS}"
            );
            // Built from constants and numbered placeholders only; every value is bound.
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now).bind(&maker);
            for key in spared {
                query = query.bind(&key.id);
            }
            let rows = query.fetch_all(&mut *conn).await.map_err(internal)?;
            for row in &rows {
                let key = api_key_from_row(row)?;
                if walked.insert(key.name()) {
                    makers.push(key.name());
                }
                revoked.push(key);
            }
            // A calling key reached: the revocation is refused (`WOULD_REVOKE_CALLER`), so the
            // walk need not go on.
            if revoked.iter().any(|key| Some(key.id.as_str()) == calling) {
                return Ok(revoked);
            }
            // Keys made with `maker` and revoked already are walked through too: a key made
            // with one may have retired it keeping itself (`keep_calling_key`), and is as much
            // `name`'s. Read after the update, so it sees what committed while that waited.
            // (By `created_with` alone, which its index serves: a condition on the keys found
            // would, on PostgreSQL, sit behind row-level security's and scan the table.)
            let through = sqlx::query(
                "SELECT tenant_id, id FROM api_keys \
                 WHERE created_with = $1 AND revoke_time IS NOT NULL",
            )
            .bind(&maker)
            .fetch_all(&mut *conn)
            .await
            .map_err(internal)?;
            for row in &through {
                let tenant: String = row.try_get("tenant_id").map_err(internal)?;
                let id: String = row.try_get("id").map_err(internal)?;
                let name = crate::api_keys::key_name(tenant, &id);
                if walked.insert(name.clone()) {
                    makers.push(name);
                }
            }
        }
        Ok(revoked)
    }

    /// Locks the key `id` of `tenant` for the rest of the transaction (on PostgreSQL; on
    /// SQLite the transaction holds the one writer anyway).
    pub async fn lock_api_key(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantId,
        id: &str,
    ) -> Result<(), ApiError> {
        if self.db.backend() == Backend::Postgres {
            sqlx::query("SELECT id FROM api_keys WHERE tenant_id = $1 AND id = $2 FOR UPDATE")
                .bind(tenant.as_str())
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(internal)?;
        }
        Ok(())
    }

    /// Whether the key `id` of `tenant` is neither revoked nor expired at `now`, share-locked
    /// for the rest of the transaction on PostgreSQL: a key made with it commits before the
    /// key can be revoked, so revoking it finds the new key (`revoke_keys_created_with`). On
    /// SQLite the transaction holds the one writer anyway.
    pub async fn share_lock_live_api_key(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantId,
        id: &str,
        now: i64,
    ) -> Result<bool, ApiError> {
        let lock = match self.db.backend() {
            Backend::Postgres => " FOR SHARE",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT id FROM api_keys WHERE tenant_id = $1 AND id = $2 \
             AND revoke_time IS NULL AND expire_time > $3{lock}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(id)
            .bind(now)
            .fetch_optional(conn)
            .await
            .map_err(internal)?;
        Ok(row.is_some())
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
                ApiKeyFilter::CreatedWith(comparison, maker) => {
                    let p = next(Bind::Text(maker.clone()), &mut binds);
                    (
                        comparison,
                        format!("created_with IS NOT NULL AND created_with = {p}"),
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
        created_with: row.try_get("created_with").map_err(internal)?,
        create_time: row.try_get("create_time").map_err(internal)?,
        expire_time: row.try_get("expire_time").map_err(internal)?,
        revoke_time: row.try_get("revoke_time").map_err(internal)?,
        last_use_time: row.try_get("last_use_time").map_err(internal)?,
    })
}

#[cfg(test)]
mod tests {
    use palisade_grpc::BoxError;

    use super::*;
    use crate::store::testing::store_with_tenant;

    /// Inserts a live key `id` of `tenant`, made with the key named `maker`.
    async fn key(
        store: &IdentityStore,
        tenant: &TenantId,
        id: &str,
        maker: Option<&str>,
    ) -> Result<ApiKeyRecord, BoxError> {
        let key = ApiKeyRecord {
            id: id.repeat(32),
            tenant_id: tenant.clone(),
            display_name: format!("key {id}"),
            secret_hash: vec![0; 32],
            scopes: vec!["identity.users.list".into()],
            owner_user_id: None,
            created_with: maker.map(str::to_owned),
            create_time: 0,
            expire_time: i64::MAX,
            revoke_time: None,
            last_use_time: None,
        };
        let mut tx = store.db().begin().await?;
        store.insert_api_key(&mut tx, &key).await?;
        tx.commit().await?;
        Ok(key)
    }

    /// The sorted first characters of `keys`' ids (each test key's id is one repeated).
    fn initials(keys: &[ApiKeyRecord]) -> Vec<char> {
        let mut initials: Vec<char> = keys
            .iter()
            .filter_map(|key| key.id.chars().next())
            .collect();
        initials.sort();
        initials
    }

    #[tokio::test]
    async fn revoking_a_key_revokes_the_keys_made_with_it_and_theirs_once() -> Result<(), BoxError>
    {
        let (_dir, store, acme) = store_with_tenant().await?;
        let acme = acme.id;
        // `a` made `b`, which made `c`, which made `f`, which made `1` and `a`: a cycle, which
        // only an import could write, and which still ends.
        let f = format!("tenants/acme/apiKeys/{}", "f".repeat(32));
        let root = key(&store, &acme, "a", Some(&f)).await?;
        let child = key(&store, &acme, "b", Some(&root.name())).await?;
        let grandchild = key(&store, &acme, "c", Some(&child.name())).await?;
        key(&store, &acme, "f", Some(&grandchild.name())).await?;
        key(&store, &acme, "1", Some(&f)).await?;
        let sibling = key(&store, &acme, "d", None).await?;
        let unrelated = key(&store, &acme, "e", Some(&sibling.name())).await?;

        let mut tx = store.db().begin().await?;
        assert!(store.revoke_api_key(&mut tx, &acme, &root.id, 7).await?);
        let revoked = store
            .revoke_keys_created_with(&mut tx, &root.name(), 7, &[], None)
            .await?;
        tx.commit().await?;
        let ids = initials(&revoked);
        assert_eq!(ids, ['1', 'b', 'c', 'f']);
        assert!(revoked.iter().all(|key| key.revoke_time == Some(7)));
        for (key, revoked) in [(&sibling, false), (&unrelated, false), (&grandchild, true)] {
            let stored = store.get_api_key(&key.id).await?.expect("kept");
            assert_eq!(stored.revoke_time.is_some(), revoked, "{}", key.id);
        }

        // Revoked already, none is revoked again.
        let mut tx = store.db().begin().await?;
        assert!(
            store
                .revoke_keys_created_with(&mut tx, &root.name(), 9, &[], None)
                .await?
                .is_empty()
        );
        tx.commit().await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_calling_key_revoking_its_maker_keeps_only_its_own_chain() -> Result<(), BoxError> {
        let (_dir, store, acme) = store_with_tenant().await?;
        let acme = acme.id;
        // `a` made `b` and `c`; `b` made `d` (the caller) and `e`; `d` made `f`.
        let root = key(&store, &acme, "a", None).await?;
        let between = key(&store, &acme, "b", Some(&root.name())).await?;
        key(&store, &acme, "c", Some(&root.name())).await?;
        let calling = key(&store, &acme, "d", Some(&between.name())).await?;
        key(&store, &acme, "e", Some(&between.name())).await?;
        key(&store, &acme, "f", Some(&calling.name())).await?;

        let mut tx = store.db().begin().await?;
        let spared = [calling, between];
        let revoked = store
            .revoke_keys_created_with(&mut tx, &root.name(), 7, &spared, None)
            .await?;
        tx.commit().await?;
        let ids = initials(&revoked);
        assert_eq!(
            ids,
            ['c', 'e'],
            "the others made down the chain, not the chain's own"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_revoked_or_expired_key_is_not_live() -> Result<(), BoxError> {
        let (_dir, store, acme) = store_with_tenant().await?;
        let acme = acme.id;
        let live = key(&store, &acme, "a", None).await?;
        let mut tx = store.db().begin().await?;
        assert!(
            store
                .share_lock_live_api_key(&mut tx, &acme, &live.id, 5)
                .await?
        );
        // Expired at `expire_time`, as the gateway judges it.
        let never = i64::MAX;
        assert!(
            !store
                .share_lock_live_api_key(&mut tx, &acme, &live.id, never)
                .await?
        );
        let other = TenantId::parse("globex")?;
        assert!(
            !store
                .share_lock_live_api_key(&mut tx, &other, &live.id, 5)
                .await?
        );
        assert!(store.revoke_api_key(&mut tx, &acme, &live.id, 6).await?);
        assert!(
            !store
                .share_lock_live_api_key(&mut tx, &acme, &live.id, 7)
                .await?
        );
        tx.commit().await?;
        Ok(())
    }
}
