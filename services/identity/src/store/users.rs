//! Users and their roles.

use std::collections::HashMap;

use palisade_db::{Backend, placeholders};
use palisade_grpc::{
    ApiError,
    aip::{Comparison, CreatedCursor},
};
use palisade_tenancy::TenantId;
use sqlx::{AnyConnection, AssertSqlSafe, Row, any::AnyRow};

use super::{Bind, IdentityStore, internal};
use crate::users::{self, UserRecord};

/// A user-list condition, already validated.
#[derive(Clone, Debug)]
pub enum UserFilter {
    State(Comparison, String),
    Email(Comparison, String),
    Role(Comparison, String),
}

pub(super) const USER_COLUMNS: &str =
    "id, tenant_id, email, display_name, state, create_time, update_time, locked_until";

/// [`USER_COLUMNS`] of a query that calls the users table `u`.
const USER_COLUMNS_OF_U: &str = "u.id, u.tenant_id, u.email, u.display_name, u.state, \
     u.create_time, u.update_time, u.locked_until";

/// Everything identity holds for a user, children before parents (foreign keys), the user row
/// last; each statement takes the tenant id as `$1` and the user id as `$2`. A table that
/// holds a user's data is one more line here (and in the tenant's list in `tenants`).
const USER_DATA: &[&str] = &[
    "DELETE FROM refresh_tokens WHERE family_id IN \
     (SELECT id FROM token_families WHERE tenant_id = $1 AND user_id = $2)",
    "DELETE FROM token_families WHERE tenant_id = $1 AND user_id = $2",
    "DELETE FROM user_roles WHERE tenant_id = $1 AND user_id = $2",
    "DELETE FROM api_keys WHERE tenant_id = $1 AND owner_user_id = $2",
    "DELETE FROM users WHERE tenant_id = $1 AND id = $2",
];

/// What deleting a user ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeletedUser {
    /// Sign-in sessions that were live.
    pub sessions: i64,
    /// API keys that were neither revoked nor expired.
    pub api_keys: i64,
}

impl IdentityStore {
    /// Inserts a user and its roles; `ALREADY_EXISTS` when the email is taken in the tenant.
    pub async fn insert_user(
        &self,
        conn: &mut AnyConnection,
        user: &UserRecord,
        password_hash: &str,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO users (id, tenant_id, email, display_name, state, password_hash, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&user.id)
        .bind(user.tenant_id.as_str())
        .bind(&user.email)
        .bind(&user.display_name)
        .bind(users::state_key(user.state))
        .bind(password_hash)
        .bind(user.create_time)
        .bind(user.update_time)
        .execute(&mut *conn)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => ApiError::AlreadyExists {
                resource: format!("a user with this email in tenants/{}", user.tenant_id),
            },
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => ApiError::NotFound {
                resource: format!("tenants/{}", user.tenant_id),
            },
            _ => internal(error),
        })?;
        for role in &user.roles {
            sqlx::query("INSERT INTO user_roles (user_id, tenant_id, role) VALUES ($1, $2, $3)")
                .bind(&user.id)
                .bind(user.tenant_id.as_str())
                .bind(role)
                .execute(&mut *conn)
                .await
                .map_err(internal)?;
        }
        Ok(())
    }

    /// The user `id` of `tenant` with its roles; a user of another tenant is not found. One
    /// statement (a row per role, or one with no role), because every permission decision for a
    /// user starts here: a second query would be a second round trip on each of them.
    pub async fn get_user(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<UserRecord>, ApiError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS_OF_U}, r.role FROM users u LEFT JOIN user_roles r \
             ON r.tenant_id = u.tenant_id AND r.user_id = u.id \
             WHERE u.tenant_id = $1 AND u.id = $2 ORDER BY r.role"
        )))
        .bind(tenant.as_str())
        .bind(id)
        .fetch_all(self.db.pool())
        .await
        .map_err(internal)?;
        user_with_roles(&rows)
    }

    /// The user, read inside the caller's write transaction and locked until it ends
    /// (PostgreSQL `FOR UPDATE`; SQLite write transactions hold the database lock already), so
    /// a read-change-write of it cannot interleave with another. Without its roles.
    pub async fn lock_user(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<UserRecord>, ApiError> {
        let lock = match self.db.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let sql =
            format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2{lock}");
        one_user(conn, sql, tenant, id).await
    }

    /// Whether the user `id` exists, share-locked for the rest of the transaction on
    /// PostgreSQL (`FOR SHARE`: changing or deleting it waits, a foreign key naming it does
    /// not); on SQLite the transaction holds the one writer anyway.
    pub async fn share_lock_user(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantId,
        id: &str,
    ) -> Result<bool, ApiError> {
        let lock = match self.db.backend() {
            Backend::Postgres => " FOR SHARE",
            Backend::Sqlite => "",
        };
        let sql = format!("SELECT id FROM users WHERE tenant_id = $1 AND id = $2{lock}");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(id)
            .fetch_optional(conn)
            .await
            .map_err(internal)?;
        Ok(row.is_some())
    }

    /// Gives a user a role; false when it held it already.
    pub async fn add_user_role(
        &self,
        conn: &mut AnyConnection,
        user: &UserRecord,
        role: &str,
        now: i64,
    ) -> Result<bool, ApiError> {
        let done = sqlx::query(
            "INSERT INTO user_roles (user_id, tenant_id, role) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&user.id)
        .bind(user.tenant_id.as_str())
        .bind(role)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        let changed = done.rows_affected() == 1;
        if changed {
            self.touch_user(conn, user, now).await?;
        }
        Ok(changed)
    }

    /// Takes a role from a user; false when it did not hold it.
    pub async fn remove_user_role(
        &self,
        conn: &mut AnyConnection,
        user: &UserRecord,
        role: &str,
        now: i64,
    ) -> Result<bool, ApiError> {
        let done = sqlx::query(
            "DELETE FROM user_roles WHERE user_id = $1 AND tenant_id = $2 AND role = $3",
        )
        .bind(&user.id)
        .bind(user.tenant_id.as_str())
        .bind(role)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        let changed = done.rows_affected() == 1;
        if changed {
            self.touch_user(conn, user, now).await?;
        }
        Ok(changed)
    }

    async fn touch_user(
        &self,
        conn: &mut AnyConnection,
        user: &UserRecord,
        now: i64,
    ) -> Result<(), ApiError> {
        sqlx::query("UPDATE users SET update_time = $1 WHERE tenant_id = $2 AND id = $3")
            .bind(now)
            .bind(user.tenant_id.as_str())
            .bind(&user.id)
            .execute(&mut *conn)
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// A user's roles, sorted, read on the caller's connection (inside its transaction).
    pub async fn user_roles_in(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantId,
        user: &str,
    ) -> Result<Vec<String>, ApiError> {
        let rows = sqlx::query(
            "SELECT role FROM user_roles WHERE tenant_id = $1 AND user_id = $2 ORDER BY role",
        )
        .bind(tenant.as_str())
        .bind(user)
        .fetch_all(&mut *conn)
        .await
        .map_err(internal)?;
        rows.iter()
            .map(|row| row.try_get("role").map_err(internal))
            .collect()
    }

    /// A page of `tenant`'s users in creation order, `limit` rows at most.
    pub async fn list_users(
        &self,
        tenant: &TenantId,
        after: Option<&CreatedCursor>,
        filters: &[UserFilter],
        limit: usize,
    ) -> Result<Vec<UserRecord>, ApiError> {
        let mut binds: Vec<Bind> = vec![Bind::Text(tenant.to_string())];
        let mut sql = format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1");
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
            match filter {
                UserFilter::State(comparison, value) | UserFilter::Email(comparison, value) => {
                    let column = if matches!(filter, UserFilter::State(..)) {
                        "state"
                    } else {
                        "email"
                    };
                    let p = next(Bind::Text(value.clone()), &mut binds);
                    sql.push_str(&format!(" AND {column} {} {p}", comparison.sql()));
                }
                UserFilter::Role(comparison, role) => {
                    let p = next(Bind::Text(role.clone()), &mut binds);
                    let negate = if matches!(comparison, Comparison::Eq) {
                        ""
                    } else {
                        "NOT "
                    };
                    sql.push_str(&format!(
                        " AND {negate}EXISTS (SELECT 1 FROM user_roles r \
                         WHERE r.user_id = users.id AND r.tenant_id = users.tenant_id AND r.role = {p})"
                    ));
                }
            }
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
        let mut users = rows
            .iter()
            .map(user_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if users.is_empty() {
            return Ok(users);
        }
        // The page's roles in one query rather than one per user.
        let sql = format!(
            "SELECT user_id, role FROM user_roles WHERE tenant_id = $1 AND user_id IN ({}) \
             ORDER BY role",
            placeholders(2, users.len())
        );
        // Built from numbered placeholders only; every value is bound.
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(tenant.to_string());
        for user in &users {
            query = query.bind(user.id.clone());
        }
        let rows = query.fetch_all(self.db.pool()).await.map_err(internal)?;
        let mut by_user: HashMap<String, Vec<String>> = HashMap::new();
        for row in &rows {
            let user: String = row.try_get("user_id").map_err(internal)?;
            let role: String = row.try_get("role").map_err(internal)?;
            by_user.entry(user).or_default().push(role);
        }
        for user in &mut users {
            user.roles = by_user.remove(&user.id).unwrap_or_default();
        }
        Ok(users)
    }

    /// The user of `tenant` with this (lower-case) email, and its password hash.
    pub async fn user_by_email(
        &self,
        tenant: &TenantId,
        email: &str,
    ) -> Result<Option<(UserRecord, String)>, ApiError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS_OF_U}, u.password_hash, r.role FROM users u \
             LEFT JOIN user_roles r ON r.tenant_id = u.tenant_id AND r.user_id = u.id \
             WHERE u.tenant_id = $1 AND u.email = $2 ORDER BY r.role"
        )))
        .bind(tenant.as_str())
        .bind(email)
        .fetch_all(self.db.pool())
        .await
        .map_err(internal)?;
        let Some(user) = user_with_roles(&rows)? else {
            return Ok(None);
        };
        let hash = rows[0].try_get("password_hash").map_err(internal)?;
        Ok(Some((user, hash)))
    }

    /// The stored password hash of the user `id` of `tenant`.
    pub async fn password_hash(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<String>, ApiError> {
        let row = sqlx::query("SELECT password_hash FROM users WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.as_str())
            .bind(id)
            .fetch_optional(self.db.pool())
            .await
            .map_err(internal)?;
        row.map(|row| row.try_get("password_hash").map_err(internal))
            .transpose()
    }

    /// Writes a user's display name, state and update time (`UpdateUser`).
    pub async fn update_user(
        &self,
        conn: &mut AnyConnection,
        user: &UserRecord,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE users SET display_name = $1, state = $2, update_time = $3 \
             WHERE tenant_id = $4 AND id = $5",
        )
        .bind(&user.display_name)
        .bind(users::state_key(user.state))
        .bind(user.update_time)
        .bind(user.tenant_id.as_str())
        .bind(&user.id)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        Ok(())
    }

    /// Replaces a user's password hash.
    pub async fn set_password_hash(
        &self,
        conn: &mut AnyConnection,
        user: &UserRecord,
        password_hash: &str,
        now: i64,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE users SET password_hash = $1, update_time = $2 WHERE tenant_id = $3 AND id = $4",
        )
        .bind(password_hash)
        .bind(now)
        .bind(user.tenant_id.as_str())
        .bind(&user.id)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        Ok(())
    }

    /// Revokes every token family (session) of a user that is not revoked yet; returns how
    /// many it revoked.
    pub async fn revoke_user_sessions(
        &self,
        conn: &mut AnyConnection,
        user: &UserRecord,
        now: i64,
    ) -> Result<u64, ApiError> {
        let done = sqlx::query(
            "UPDATE token_families SET revoke_time = $1 \
             WHERE tenant_id = $2 AND user_id = $3 AND revoke_time IS NULL",
        )
        .bind(now)
        .bind(user.tenant_id.as_str())
        .bind(&user.id)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        Ok(done.rows_affected())
    }

    /// Deletes a user and everything identity holds for it (see `USER_DATA`), on the caller's
    /// transaction; returns what that ended: the sessions that were live and the API keys that
    /// still worked.
    pub async fn delete_user(
        &self,
        conn: &mut AnyConnection,
        user: &UserRecord,
        now: i64,
    ) -> Result<DeletedUser, ApiError> {
        // The user's token families are read locked (PostgreSQL `FOR UPDATE`; SQLite write
        // transactions hold the database lock already) before their refresh tokens are
        // deleted: the order a refresh takes them in (family, then token), so the two cannot
        // deadlock.
        let lock = match self.db.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let families = sqlx::query(AssertSqlSafe(format!(
            "SELECT revoke_time FROM token_families WHERE tenant_id = $1 AND user_id = $2{lock}"
        )))
        .bind(user.tenant_id.as_str())
        .bind(&user.id)
        .fetch_all(&mut *conn)
        .await
        .map_err(internal)?;
        let mut sessions = 0;
        for family in &families {
            let revoke_time: Option<i64> = family.try_get("revoke_time").map_err(internal)?;
            sessions += i64::from(revoke_time.is_none());
        }
        let api_keys = sqlx::query(
            "SELECT COUNT(*) FROM api_keys WHERE tenant_id = $1 AND owner_user_id = $2 \
             AND revoke_time IS NULL AND expire_time > $3",
        )
        .bind(user.tenant_id.as_str())
        .bind(&user.id)
        .bind(now)
        .fetch_one(&mut *conn)
        .await
        .map_err(internal)?;
        let ended = DeletedUser {
            sessions,
            api_keys: api_keys.try_get(0).map_err(internal)?,
        };
        for statement in USER_DATA {
            sqlx::query(*statement)
                .bind(user.tenant_id.as_str())
                .bind(&user.id)
                .execute(&mut *conn)
                .await
                .map_err(internal)?;
        }
        Ok(ended)
    }
}

/// The user a statement returns that takes the tenant id as `$1` and the user id as `$2` and
/// returns [`USER_COLUMNS`]; `None` for no row.
pub(super) async fn one_user(
    conn: &mut AnyConnection,
    sql: String,
    tenant: &TenantId,
    id: &str,
) -> Result<Option<UserRecord>, ApiError> {
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(internal)?;
    row.as_ref().map(user_from_row).transpose()
}

/// The user of rows that each carry it and one of its roles (`role`, NULL for a user without
/// any: a LEFT JOIN of `user_roles`), or `None` for no rows.
fn user_with_roles(rows: &[AnyRow]) -> Result<Option<UserRecord>, ApiError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut user = user_from_row(first)?;
    for row in rows {
        if let Some(role) = row.try_get::<Option<String>, _>("role").map_err(internal)? {
            user.roles.push(role);
        }
    }
    Ok(Some(user))
}

pub(super) fn user_from_row(row: &AnyRow) -> Result<UserRecord, ApiError> {
    let tenant_id: String = row.try_get("tenant_id").map_err(internal)?;
    Ok(UserRecord {
        id: row.try_get("id").map_err(internal)?,
        tenant_id: TenantId::parse(&tenant_id).map_err(internal)?,
        email: row.try_get("email").map_err(internal)?,
        display_name: row.try_get("display_name").map_err(internal)?,
        state: users::state_from_key(&row.try_get::<String, _>("state").map_err(internal)?),
        roles: Vec::new(),
        create_time: row.try_get("create_time").map_err(internal)?,
        update_time: row.try_get("update_time").map_err(internal)?,
        locked_until: row.try_get("locked_until").map_err(internal)?,
    })
}
