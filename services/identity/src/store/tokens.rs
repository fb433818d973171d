//! Signing keys, token families and refresh tokens.

use palisade_grpc::ApiError;
use palisade_tenancy::TenantId;
use sqlx::{AnyConnection, Row};

use super::{IdentityStore, internal};
use crate::{tokens::SigningKeyRecord, users::UserRecord};

/// A refresh token as stored, with its family's state.
#[derive(Clone, Debug)]
pub struct RefreshTokenRecord {
    pub id: String,
    pub family_id: String,
    pub tenant_id: TenantId,
    pub user_id: String,
    pub expire_time: i64,
    /// When the token family's login was.
    pub family_create_time: i64,
    pub family_revoke_time: Option<i64>,
}

impl RefreshTokenRecord {
    pub fn session(&self) -> SessionRecord {
        SessionRecord {
            id: self.family_id.clone(),
            tenant_id: self.tenant_id.clone(),
            user_id: self.user_id.clone(),
        }
    }
}

/// A sign-in session: the token family of one login.
#[derive(Clone, Debug)]
pub struct SessionRecord {
    pub id: String,
    pub tenant_id: TenantId,
    pub user_id: String,
}

impl IdentityStore {
    /// The signing keys, newest first.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, ApiError> {
        let rows = sqlx::query(
            "SELECT kid, private_key, public_key, create_time FROM signing_keys \
             ORDER BY create_time DESC, kid",
        )
        .fetch_all(self.db.pool())
        .await
        .map_err(internal)?;
        rows.iter()
            .map(|row| {
                Ok(SigningKeyRecord {
                    kid: row.try_get("kid").map_err(internal)?,
                    private_key: row.try_get("private_key").map_err(internal)?,
                    public_key: row.try_get("public_key").map_err(internal)?,
                    create_time: row.try_get("create_time").map_err(internal)?,
                })
            })
            .collect()
    }

    pub async fn insert_signing_key(
        &self,
        conn: &mut AnyConnection,
        key: &SigningKeyRecord,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, private_key, public_key, create_time) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&key.kid)
        .bind(key.private_key.clone())
        .bind(key.public_key.clone())
        .bind(key.create_time)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        Ok(())
    }

    /// Replaces the stored private key of `kid` (sealed anew: see `KeySealer::reseal`).
    pub async fn reseal_signing_key(&self, kid: &str, private_key: &[u8]) -> Result<(), ApiError> {
        sqlx::query("UPDATE signing_keys SET private_key = $1 WHERE kid = $2")
            .bind(private_key.to_vec())
            .bind(kid)
            .execute(self.db.pool())
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// Deletes a signing key no unexpired token can need (see `signing::published`).
    pub async fn delete_signing_key(&self, kid: &str) -> Result<(), ApiError> {
        sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
            .bind(kid)
            .execute(self.db.pool())
            .await
            .map_err(internal)?;
        Ok(())
    }

    pub async fn insert_token_family(
        &self,
        conn: &mut AnyConnection,
        id: &str,
        user: &UserRecord,
        now: i64,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO token_families (id, tenant_id, user_id, create_time) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(user.tenant_id.as_str())
        .bind(&user.id)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        Ok(())
    }

    pub async fn insert_refresh_token(
        &self,
        conn: &mut AnyConnection,
        family_id: &str,
        hash: &[u8],
        now: i64,
        expire_time: i64,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, family_id, token_hash, create_time, expire_time) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(family_id)
        .bind(hash.to_vec())
        .bind(now)
        .bind(expire_time)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        Ok(())
    }

    pub async fn refresh_token(&self, hash: &[u8]) -> Result<Option<RefreshTokenRecord>, ApiError> {
        let row = sqlx::query(
            "SELECT t.id, t.family_id, f.tenant_id, f.user_id, t.expire_time, \
             f.create_time AS family_create_time, f.revoke_time FROM refresh_tokens t JOIN token_families f ON f.id = t.family_id \
             WHERE t.token_hash = $1",
        )
        .bind(hash.to_vec())
        .fetch_optional(self.db.pool())
        .await
        .map_err(internal)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let tenant_id: String = row.try_get("tenant_id").map_err(internal)?;
        Ok(Some(RefreshTokenRecord {
            id: row.try_get("id").map_err(internal)?,
            family_id: row.try_get("family_id").map_err(internal)?,
            tenant_id: TenantId::parse(&tenant_id).map_err(internal)?,
            user_id: row.try_get("user_id").map_err(internal)?,
            expire_time: row.try_get("expire_time").map_err(internal)?,
            family_create_time: row.try_get("family_create_time").map_err(internal)?,
            family_revoke_time: row.try_get("revoke_time").map_err(internal)?,
        }))
    }

    /// The sign-in session `id`, revoked or not.
    pub async fn session(&self, id: &str) -> Result<Option<SessionRecord>, ApiError> {
        let row = sqlx::query("SELECT id, tenant_id, user_id FROM token_families WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await
            .map_err(internal)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let tenant_id: String = row.try_get("tenant_id").map_err(internal)?;
        Ok(Some(SessionRecord {
            id: row.try_get("id").map_err(internal)?,
            tenant_id: TenantId::parse(&tenant_id).map_err(internal)?,
            user_id: row.try_get("user_id").map_err(internal)?,
        }))
    }

    /// Whether the sign-in session (token family) `id` is `user`'s in `tenant` and not revoked:
    /// the check every permission decision for a session's access token makes.
    pub async fn session_is_live(
        &self,
        tenant: &TenantId,
        user: &str,
        id: &str,
    ) -> Result<bool, ApiError> {
        let row = sqlx::query(
            "SELECT 1 AS live FROM token_families \
             WHERE id = $1 AND tenant_id = $2 AND user_id = $3 AND revoke_time IS NULL",
        )
        .bind(id)
        .bind(tenant.as_str())
        .bind(user)
        .fetch_optional(self.db.pool())
        .await
        .map_err(internal)?;
        Ok(row.is_some())
    }

    /// Locks a token family for the rest of the transaction, unless it is revoked: false when
    /// it is, perhaps since the caller last read it. What revokes a family (logout, a password
    /// change, reuse detection) then waits for this transaction, so a refresh that read its
    /// family as live cannot commit after the revocation. The write changes nothing; it is how
    /// both databases take the lock and recheck the newest committed row (PostgreSQL rechecks
    /// the condition after waiting for the row; SQLite has one writer at a time).
    pub async fn lock_live_token_family(
        &self,
        conn: &mut AnyConnection,
        id: &str,
    ) -> Result<bool, ApiError> {
        let done = sqlx::query(
            "UPDATE token_families SET revoke_time = NULL WHERE id = $1 AND revoke_time IS NULL",
        )
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks a refresh token used; false when it already was (so exactly one of several
    /// concurrent refreshes with the same token wins).
    pub async fn use_refresh_token(
        &self,
        conn: &mut AnyConnection,
        id: &str,
        now: i64,
    ) -> Result<bool, ApiError> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET use_time = $1 WHERE id = $2 AND use_time IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        Ok(done.rows_affected() == 1)
    }

    /// Revokes a token family; false when it already was revoked.
    pub async fn revoke_token_family(
        &self,
        conn: &mut AnyConnection,
        id: &str,
        now: i64,
    ) -> Result<bool, ApiError> {
        let done = sqlx::query(
            "UPDATE token_families SET revoke_time = $1 WHERE id = $2 AND revoke_time IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        Ok(done.rows_affected() == 1)
    }
}
