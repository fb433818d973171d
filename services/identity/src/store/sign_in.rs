//! Login attempts against the lockout: claiming an attempt before its password is checked, and
//! forgetting the failures once a password proves right. Attempts on an email that matches no
//! user are claimed alike, in `unknown_email_attempts`, so that they write what a known
//! user's do.

use palisade_db::{Backend, Scope};
use palisade_grpc::ApiError;
use palisade_tenancy::TenantId;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::{
    IdentityStore, internal,
    users::{USER_COLUMNS, user_from_row},
};
use crate::users::UserRecord;

/// What [`IdentityStore::claim_password_attempt`] allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordAttempt {
    /// The account is locked (or gone): the password must not be checked.
    Refused,
    /// Counted as a failure until the password proves right; `locks` when this attempt is the
    /// one that reached the limit, or passed a limit lowered meanwhile (the account is locked
    /// from now on, unless it succeeds).
    Counted { locks: bool },
}

/// The assignments that forget a user's failed logins and lift its lock.
const FORGET_FAILURES: &str = "failed_logins = 0, failure_window_start = NULL, locked_until = NULL";

/// A claim's assignments to a row of `table` (`users` or `unknown_email_attempts`), whose
/// columns they read as the row was before the statement (on both backends; named with their
/// table, which an upsert's PostgreSQL needs): counted, and locked until `$4` by the claim that
/// reaches `$3` failures or passes it (after the limit was lowered). A claim starts a new
/// window of failures when there is none yet, the last has passed (`$2` is the oldest start
/// still open) or its lock has expired (`$1` is now).
fn claim_assignments(table: &str) -> String {
    let new_window = format!(
        "({table}.failure_window_start IS NULL OR {table}.failure_window_start < $2 \
         OR ({table}.locked_until IS NOT NULL AND {table}.locked_until <= $1))"
    );
    format!(
        "failed_logins = CASE WHEN {new_window} THEN 1 ELSE {table}.failed_logins + 1 END, \
         failure_window_start = \
           CASE WHEN {new_window} THEN $1 ELSE {table}.failure_window_start END, \
         locked_until = CASE \
           WHEN (CASE WHEN {new_window} THEN 1 ELSE {table}.failed_logins + 1 END) >= $3 THEN $4 \
           WHEN {new_window} THEN NULL \
           ELSE {table}.locked_until END"
    )
}

/// Rows of `unknown_email_attempts` deleted per transaction by a sweep.
const SWEEP_BATCH: i64 = 1_000;

/// How an email is kept in `unknown_email_attempts`: the hex SHA-256 of its normalized form.
fn email_sha256(email: &str) -> String {
    hex::encode(Sha256::digest(email.as_bytes()))
}

impl IdentityStore {
    /// Claims one password attempt for the user before its password is checked, in a single
    /// atomic statement: refused while the account is locked; otherwise counted as a failure
    /// until the password proves right (a success clears the count, [`clear_failed_logins`]).
    /// Counting before checking is what bounds parallel guesses: attempts in flight have
    /// already used up their share of the limit, so at most `max_failures` passwords are
    /// checked per window however many arrive at once (one more, when the limit was lowered
    /// under failures already counted). A claim outside the window (or after an expired lock)
    /// starts a new window at 1; the claim that reaches or passes `max_failures` sets the lock.
    ///
    /// [`clear_failed_logins`]: Self::clear_failed_logins
    pub async fn claim_password_attempt(
        &self,
        user_id: &str,
        now: i64,
        policy: &crate::lockout::LockoutPolicy,
    ) -> Result<PasswordAttempt, ApiError> {
        let sql = format!(
            "UPDATE users SET {} \
             WHERE id = $5 AND (locked_until IS NULL OR locked_until <= $1) \
             RETURNING failed_logins",
            claim_assignments("users")
        );
        self.claim(sql, &[user_id], now, policy).await
    }

    /// Claims one attempt on `email` (normalized), which matches no user of `tenant`, as
    /// [`claim_password_attempt`] claims a user's: counted in a row of its own, created by the
    /// first attempt, and refused while that row is locked. Nothing reads these counts but
    /// the claims; they make an unknown email's attempt write, and lock, as a known one's does.
    ///
    /// [`claim_password_attempt`]: Self::claim_password_attempt
    pub async fn claim_unknown_email_attempt(
        &self,
        tenant: &TenantId,
        email: &str,
        now: i64,
        policy: &crate::lockout::LockoutPolicy,
    ) -> Result<PasswordAttempt, ApiError> {
        const KEY: &str = "tenant_id = $5 AND email_sha256 = $6";
        const UNLOCKED: &str = "(locked_until IS NULL OR locked_until <= $1)";
        const COLUMNS: &str =
            "(tenant_id, email_sha256, failed_logins, failure_window_start, locked_until)";
        const FIRST: &str = "$5, $6, 1, $1, CASE WHEN 1 >= $3 THEN $4 END";
        let assignments = claim_assignments("unknown_email_attempts");
        // One statement either way, as a user's claim is, and one that neither writes nor
        // locks anything while the row is locked, as a user's `UPDATE … WHERE` does not. On
        // PostgreSQL an upsert's `ON CONFLICT DO UPDATE … WHERE` locks the row even when its
        // condition is false, which makes the commit wait for a WAL flush; so there the
        // update and the first insert are two parts of one statement. (Two first attempts in a
        // race: the one whose insert conflicts claims nothing and is refused, which for an
        // email without an account changes nothing.) SQLite's upsert writes nothing when its
        // condition is false, and SQLite runs no `UPDATE` in a `WITH`.
        let sql = match self.db.backend() {
            Backend::Postgres => format!(
                "WITH counted AS (\
                   UPDATE unknown_email_attempts SET {assignments} \
                   WHERE {KEY} AND {UNLOCKED} RETURNING failed_logins), \
                 first AS (\
                   INSERT INTO unknown_email_attempts {COLUMNS} SELECT {FIRST} \
                   WHERE NOT EXISTS (SELECT 1 FROM unknown_email_attempts WHERE {KEY}) \
                   ON CONFLICT DO NOTHING RETURNING failed_logins) \
                 SELECT failed_logins FROM counted UNION ALL SELECT failed_logins FROM first"
            ),
            Backend::Sqlite => format!(
                "INSERT INTO unknown_email_attempts {COLUMNS} VALUES ({FIRST}) \
                 ON CONFLICT (tenant_id, email_sha256) DO UPDATE SET {assignments} \
                 WHERE unknown_email_attempts.locked_until IS NULL \
                   OR unknown_email_attempts.locked_until <= $1 \
                 RETURNING failed_logins"
            ),
        };
        let digest = email_sha256(email);
        self.claim(sql, &[tenant.as_str(), &digest], now, policy)
            .await
    }

    /// Runs a claim's statement: `$1` to `$4` as [`claim_assignments`] reads them, then `keys`.
    async fn claim(
        &self,
        sql: String,
        keys: &[&str],
        now: i64,
        policy: &crate::lockout::LockoutPolicy,
    ) -> Result<PasswordAttempt, ApiError> {
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(now - policy.window_micros())
            .bind(i64::from(policy.max_failures))
            .bind(now.saturating_add(policy.lock_micros()));
        for key in keys {
            query = query.bind(*key);
        }
        // On SQLite's writer connection (`Db::single_write`), not a pooled one: an autocommit
        // write there waits for the lock in SQLite's busy handler, asleep while holding a
        // connection that readers need, and a login flood then starves them.
        let row = query
            .fetch_optional(self.db.single_write())
            .await
            .map_err(internal)?;
        // No row: locked, or deleted meanwhile; either way no password is checked.
        let Some(row) = row else {
            return Ok(PasswordAttempt::Refused);
        };
        let count: i64 = row.try_get("failed_logins").map_err(internal)?;
        Ok(PasswordAttempt::Counted {
            // At or past: a limit lowered under failures already counted locks at once.
            locks: count >= i64::from(policy.max_failures),
        })
    }

    /// Forgets unknown emails' attempts whose window has passed and that hold no lock (such a
    /// row counts as none); how many. In batches of [`SWEEP_BATCH`], each its own transaction:
    /// on SQLite a transaction that writes holds the one writer, which logins' claims need.
    pub async fn sweep_unknown_email_attempts(
        &self,
        now: i64,
        policy: &crate::lockout::LockoutPolicy,
    ) -> Result<u64, ApiError> {
        let mut swept = 0;
        loop {
            // Every tenant's rows: a background job has no tenant of its own.
            let mut tx = self.db.begin_in(Scope::AllTenants).await?;
            let batch = sqlx::query(
                "DELETE FROM unknown_email_attempts WHERE (tenant_id, email_sha256) IN (\
                   SELECT tenant_id, email_sha256 FROM unknown_email_attempts \
                   WHERE failure_window_start < $1 \
                     AND (locked_until IS NULL OR locked_until <= $2) \
                   LIMIT $3)",
            )
            .bind(now - policy.window_micros())
            .bind(now)
            .bind(SWEEP_BATCH)
            .execute(&mut *tx)
            .await
            .map_err(internal)?
            .rows_affected();
            tx.commit().await.map_err(internal)?;
            swept += batch;
            if batch < SWEEP_BATCH.unsigned_abs() {
                return Ok(swept);
            }
        }
    }

    /// A successful login's first write: [`lock_user`] and [`clear_failed_logins`] in one
    /// statement (an `UPDATE` locks the row as `FOR UPDATE` does), on the condition that the
    /// user's password hash is still `verified_hash`, the one the login checked. The user as it
    /// is now; `None` when it is gone or its password changed since it was read, so a login
    /// that proved the old password while a change committed opens no session (the change
    /// revoked those before it; on PostgreSQL an `UPDATE` waiting for the change's lock
    /// judges the row as the change left it). A login that then refuses rolls the clearing
    /// back with its transaction.
    ///
    /// `rehashed`, the same password hashed with identity's current parameters
    /// (`Passwords::rehash`), replaces the verified hash. Logins racing to upgrade one hash
    /// make the same string, so the hash may also be `rehashed` already: that is another
    /// login's upgrade, not a change of password.
    ///
    /// [`lock_user`]: Self::lock_user
    /// [`clear_failed_logins`]: Self::clear_failed_logins
    pub async fn lock_user_for_sign_in(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantId,
        id: &str,
        verified_hash: &str,
        rehashed: Option<&str>,
    ) -> Result<Option<UserRecord>, ApiError> {
        let sql = format!(
            "UPDATE users SET {FORGET_FAILURES}, password_hash = COALESCE($4, password_hash) \
             WHERE tenant_id = $1 AND id = $2 AND (password_hash = $3 OR password_hash = $4) \
             RETURNING {USER_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(id)
            .bind(verified_hash)
            .bind(rehashed)
            .fetch_optional(conn)
            .await
            .map_err(internal)?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// A successful login, or a new password, forgets earlier failures and lifts a lock: an
    /// admin who sets a locked user's password unlocks it (a login cannot succeed while
    /// locked, and changing one's own password needs the current one, refused while locked).
    pub async fn clear_failed_logins(
        &self,
        conn: &mut AnyConnection,
        user_id: &str,
    ) -> Result<(), ApiError> {
        let sql = format!("UPDATE users SET {FORGET_FAILURES} WHERE id = $1");
        sqlx::query(AssertSqlSafe(sql))
            .bind(user_id)
            .execute(&mut *conn)
            .await
            .map_err(internal)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use palisade_grpc::BoxError;
    use palisade_proto::palisade::identity::v1::UserState;

    use super::*;

    /// Stands for a hash made otherwise, which logins upgrade to `UPGRADED`.
    const OLD: &str = "$argon2id$v=19$m=1024,t=1,p=1$old";
    const UPGRADED: &str = "$argon2id$v=19$m=19456,t=2,p=1$upgraded";

    async fn sign_in(
        store: &IdentityStore,
        user: &UserRecord,
        verified: &str,
        rehashed: Option<&str>,
    ) -> Result<bool, BoxError> {
        let mut tx = store.db().begin().await?;
        let signed_in = store
            .lock_user_for_sign_in(&mut tx, &user.tenant_id, &user.id, verified, rehashed)
            .await?
            .is_some();
        tx.commit().await?;
        Ok(signed_in)
    }

    async fn stored_hash(store: &IdentityStore) -> Result<String, BoxError> {
        Ok(sqlx::query_scalar("SELECT password_hash FROM users")
            .fetch_one(store.db().pool())
            .await?)
    }

    /// A store on a fresh SQLite database (kept while the directory lives) with tenant `acme`
    /// and its user `ada`, whose password hash is [`OLD`].
    async fn store_with_user() -> Result<(tempfile::TempDir, IdentityStore, UserRecord), BoxError> {
        let (dir, store, tenant) = crate::store::testing::store_with_tenant().await?;
        let user = UserRecord {
            id: "ada".into(),
            tenant_id: tenant.id.clone(),
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            state: UserState::Active,
            roles: Vec::new(),
            create_time: 0,
            update_time: 0,
            locked_until: None,
        };
        let mut tx = store.db().begin().await?;
        store.insert_user(&mut tx, &user, OLD).await?;
        tx.commit().await?;
        Ok((dir, store, user))
    }

    #[tokio::test]
    async fn a_login_takes_another_logins_upgrade_of_the_hash_it_checked_but_not_a_new_password()
    -> Result<(), BoxError> {
        let (_dir, store, user) = store_with_user().await?;
        let db = store.db().clone();
        // Two logins checked the old hash; the first stores the upgrade, the second finds it.
        assert!(sign_in(&store, &user, OLD, Some(UPGRADED)).await?);
        assert_eq!(stored_hash(&store).await?, UPGRADED);
        assert!(sign_in(&store, &user, OLD, Some(UPGRADED)).await?);
        // A login that checked the upgraded hash keeps it.
        assert!(sign_in(&store, &user, UPGRADED, None).await?);
        assert_eq!(stored_hash(&store).await?, UPGRADED);

        // A password changed meanwhile is neither the checked hash nor its upgrade.
        let mut tx = db.begin().await?;
        store
            .set_password_hash(&mut tx, &user, "$argon2id$v=19$m=19456,t=2,p=1$new", 1)
            .await?;
        tx.commit().await?;
        assert!(!sign_in(&store, &user, OLD, Some(UPGRADED)).await?);
        assert!(!sign_in(&store, &user, UPGRADED, None).await?);
        assert!(stored_hash(&store).await?.ends_with("$new"));
        db.close().await;
        Ok(())
    }

    #[tokio::test]
    async fn an_unknown_emails_attempts_are_counted_and_locked_as_a_users_then_swept()
    -> Result<(), BoxError> {
        let (_dir, store, user) = store_with_user().await?;
        // A lock that outlasts its window, so that a row is seen kept for its lock alone.
        let policy = crate::lockout::LockoutPolicy {
            lock_for: Duration::from_secs(3600),
            ..Default::default()
        };
        let window = policy.window_micros();
        let now = 1_000_000_000_000;
        let unknown =
            |at| store.claim_unknown_email_attempt(&user.tenant_id, "eve@example.com", at, &policy);
        let known = |at| store.claim_password_attempt(&user.id, at, &policy);
        let counted = |locks| PasswordAttempt::Counted { locks };
        for attempt in 1..=policy.max_failures {
            let locks = attempt == policy.max_failures;
            assert_eq!(unknown(now).await?, counted(locks), "attempt {attempt}");
            assert_eq!(known(now).await?, counted(locks), "attempt {attempt}");
        }
        assert_eq!(unknown(now).await?, PasswordAttempt::Refused);
        assert_eq!(known(now).await?, PasswordAttempt::Refused);
        let rows = || async {
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT email_sha256, failed_logins FROM unknown_email_attempts")
                    .fetch_all(store.db().pool())
                    .await?;
            Ok::<_, BoxError>(rows)
        };
        // Kept as a digest of the email, never the email.
        assert_eq!(
            rows().await?,
            [(
                email_sha256("eve@example.com"),
                i64::from(policy.max_failures)
            )]
        );

        // Locked: not swept, though its window has passed. Once the lock has expired too,
        // the row counts as none, and is swept.
        let after_lock = now + policy.lock_micros() + 1;
        assert_eq!(
            store
                .sweep_unknown_email_attempts(now + window + 1, &policy)
                .await?,
            0
        );
        assert_eq!(
            store
                .sweep_unknown_email_attempts(after_lock, &policy)
                .await?,
            1
        );
        assert!(rows().await?.is_empty());
        assert_eq!(unknown(after_lock).await?, counted(false));
        // A row whose window is still open is kept.
        assert_eq!(
            store
                .sweep_unknown_email_attempts(after_lock + window - 1, &policy)
                .await?,
            0
        );
        assert_eq!(
            store
                .sweep_unknown_email_attempts(after_lock + window + 1, &policy)
                .await?,
            1
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_lowered_limit_locks_at_the_next_failure_past_it() -> Result<(), BoxError> {
        let (_dir, store, user) = store_with_user().await?;
        let now = 1_000_000_000_000;
        let counted = |locks| PasswordAttempt::Counted { locks };
        let generous = crate::lockout::LockoutPolicy {
            max_failures: 10,
            ..Default::default()
        };
        let tenant = &user.tenant_id;
        let known = |policy| store.claim_password_attempt(&user.id, now, policy);
        let unknown =
            |policy| store.claim_unknown_email_attempt(tenant, "eve@example.com", now, policy);
        for _ in 0..6 {
            assert_eq!(known(&generous).await?, counted(false));
            assert_eq!(unknown(&generous).await?, counted(false));
        }
        // Six failures counted, then the limit becomes 5 (a new configuration, or a replica
        // of another version): the seventh locks, and the account is closed.
        let lowered = crate::lockout::LockoutPolicy {
            max_failures: 5,
            ..generous
        };
        assert_eq!(known(&lowered).await?, counted(true));
        assert_eq!(known(&lowered).await?, PasswordAttempt::Refused);
        assert_eq!(unknown(&lowered).await?, counted(true));
        assert_eq!(unknown(&lowered).await?, PasswordAttempt::Refused);
        Ok(())
    }
}
