//! `UserService.ChangePassword`: users change their own password (signed in, or through one of
//! their own API keys) with the current one; callers with `identity.users.update` set other
//! users' passwords, never of accounts with more rights than their own. Either way every
//! session of the user ends. And `UserService.UnlockUser`: such callers lift another user's
//! lockout without changing its password.

use palisade_audit::AuditRecord;
use palisade_grpc::{ApiError, Caller, FieldViolation, time::now_micros};
use palisade_proto::palisade::{
    compliance::v1::Outcome,
    identity::v1::{ChangePasswordRequest, UnlockUserRequest},
};

use super::UserApi;
use crate::{passwords, store::PasswordAttempt, users};

/// The permission that lets a caller set another user's password.
const UPDATE_USERS: &str = "identity.users.update";

fn wrong_password() -> ApiError {
    ApiError::PermissionDenied {
        reason: "WRONG_PASSWORD",
        message: "the current password is wrong, or the account is locked after repeated failures"
            .to_owned(),
    }
}

impl UserApi {
    /// Checks who may change the password, sets it, ends the user's sessions and audits the
    /// change; returns how many sessions ended.
    pub(super) async fn apply_password_change(
        &self,
        caller: Caller,
        request: ChangePasswordRequest,
    ) -> Result<u64, ApiError> {
        let (tenant, id) = users::parse_name(&request.name)?;
        let principal = caller.principal();
        // A user's own key is the user too: it needs the current password like a session
        // does, or a leaked key would be a takeover of the account's password.
        let own = self.acts_as(&caller, &tenant, &id).await?;
        let mut violations: Vec<FieldViolation> =
            passwords::check_policy("new_password", &request.new_password, &[tenant.as_str()])
                .into_iter()
                .collect();
        if own && request.current_password.is_empty() {
            violations.push(FieldViolation::new(
                "current_password",
                "is required to change your own password",
            ));
        }
        // As at Login: longer than any password identity keeps, refused before it counts.
        if request.current_password.len() > passwords::MAX_TYPED_BYTES {
            let problem = format!("must be at most {} bytes", passwords::MAX_TYPED_BYTES);
            violations.push(FieldViolation::new("current_password", problem));
        }
        if !violations.is_empty() {
            return Err(ApiError::InvalidArgument(violations));
        }
        let user = self
            .visible_user(&caller, &request.name, &tenant, &id)
            .await?;
        // The email is known only now: a password made of its local part is refused here as it
        // is when the user is created.
        let local_part = user.email.split('@').next().unwrap_or_default();
        if let Some(violation) =
            passwords::check_policy("new_password", &request.new_password, &[local_part])
        {
            return Err(ApiError::InvalidArgument(vec![violation]));
        }
        let now = now_micros();
        // Changing one's own password needs the current one, not power over oneself.
        let judged = if own {
            self.check_current_password(&caller, &user, &request.current_password, now)
                .await?;
            None
        } else {
            let decision = self
                .authz
                .decide(
                    &caller.context.tenant_id,
                    principal,
                    UPDATE_USERS,
                    Some(&user.name()),
                )
                .await?;
            if !decision.allowed {
                return Err(ApiError::PermissionDenied {
                    reason: "PERMISSION_DENIED",
                    message: format!(
                        "missing permission {UPDATE_USERS} to change another user's password: {}",
                        decision.reason
                    ),
                });
            }
            Some(self.require_power_over(&caller, &user).await?)
        };
        let password_hash = self.passwords.hash(&request.new_password).await?;
        let resource = user.name();
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        // A user deleted since it was read is not found, rather than "changed"; one whose
        // roles changed is judged again on retry.
        self.lock_as_judged(&mut tx, &caller, &user, judged.as_ref())
            .await?;
        self.store
            .set_password_hash(&mut tx, &user, &password_hash, now)
            .await?;
        let revoked = self.store.revoke_user_sessions(&mut tx, &user, now).await?;
        self.store.clear_failed_logins(&mut tx, &user.id).await?;
        let audit = AuditRecord {
            tenant: &user.tenant_id,
            actor_tenant: &caller.context.tenant_id,
            actor: Some(principal),
            action: caller.action("identity.users.changePassword"),
            resource: &resource,
            outcome: Outcome::Success,
            request_id: caller.request_id.as_ref(),
            source: crate::COMPONENT,
            attributes: vec![
                ("own_password", own.to_string()),
                ("revoked_sessions", revoked.to_string()),
            ],
        };
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(tenant = %user.tenant_id, user = %user.id, own, revoked, "password changed");
        Ok(revoked)
    }

    /// Lifts the lockout of another user the caller has power over, and audits it; returns
    /// the user as it is now.
    pub(super) async fn unlock(
        &self,
        caller: Caller,
        request: UnlockUserRequest,
    ) -> Result<users::UserRecord, ApiError> {
        let (tenant, id) = users::parse_name(&request.name)?;
        let user = self
            .visible_user(&caller, &request.name, &tenant, &id)
            .await?;
        if self.acts_as(&caller, &tenant, &id).await? {
            return Err(ApiError::PermissionDenied {
                reason: "OWN_ACCOUNT",
                message: "a user cannot lift its own lockout: another admin can, or the lock ends by itself"
                    .to_owned(),
            });
        }
        // Unlocking reopens the account's password to guessing: as much power over the user
        // as setting that password takes.
        let judged = self.require_power_over(&caller, &user).await?;
        let now = now_micros();
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        let mut current = self
            .lock_as_judged(&mut tx, &caller, &user, Some(&judged))
            .await?;
        let was_locked = current.locked_until.is_some_and(|until| until > now);
        self.store.clear_failed_logins(&mut tx, &user.id).await?;
        current.locked_until = None;
        let resource = user.name();
        let audit = AuditRecord {
            tenant: &user.tenant_id,
            actor_tenant: &caller.context.tenant_id,
            actor: Some(caller.principal()),
            action: caller.action("identity.users.unlock"),
            resource: &resource,
            outcome: Outcome::Success,
            request_id: caller.request_id.as_ref(),
            source: crate::COMPONENT,
            attributes: vec![("was_locked", was_locked.to_string())],
        };
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(tenant = %user.tenant_id, user = %user.id, was_locked, "user unlocked");
        Ok(current)
    }

    /// A user proves it knows its password as at login: a locked account is refused before any
    /// hashing, and a wrong password is audited and counts towards the lockout, so a stolen
    /// access token cannot be used to guess the password.
    async fn check_current_password(
        &self,
        caller: &Caller,
        user: &users::UserRecord,
        current: &str,
        now: i64,
    ) -> Result<(), ApiError> {
        // Claimed before the password is checked, as at login (see `claim_password_attempt`).
        let attempt = self
            .store
            .claim_password_attempt(&user.id, now, &self.lockout)
            .await?;
        let locked = attempt == PasswordAttempt::Refused;
        let stored = self
            .store
            .password_hash(&user.tenant_id, &user.id)
            .await?
            .ok_or_else(|| ApiError::internal("a user without a password hash"))?;
        if !locked && self.passwords.verify(&user.id, &stored, current).await? {
            // The change that follows clears the claim with the other failures.
            return Ok(());
        }
        let resource = user.name();
        let refusal = if locked { "locked" } else { "wrong_password" };
        let locks_now = attempt == PasswordAttempt::Counted { locks: true };
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        palisade_audit::enqueue(
            &mut tx,
            &AuditRecord {
                tenant: &user.tenant_id,
                actor_tenant: &caller.context.tenant_id,
                actor: Some(caller.principal()),
                action: caller.action("identity.users.changePassword"),
                resource: &resource,
                outcome: Outcome::Denied,
                request_id: caller.request_id.as_ref(),
                source: crate::COMPONENT,
                attributes: vec![("reason", refusal.to_owned())],
            },
        )
        .await
        .map_err(ApiError::from)?;
        let lockout = AuditRecord {
            tenant: &user.tenant_id,
            actor_tenant: &user.tenant_id,
            actor: None,
            action: "identity.auth.lockout",
            resource: &resource,
            outcome: Outcome::Denied,
            request_id: caller.request_id.as_ref(),
            source: crate::COMPONENT,
            attributes: vec![
                ("failures", self.lockout.max_failures.to_string()),
                ("lock_seconds", self.lockout.lock_for.as_secs().to_string()),
            ],
        };
        if locks_now {
            tracing::warn!(tenant = %user.tenant_id, user = %user.id, "account locked out after repeated failures");
            palisade_audit::enqueue(&mut tx, &lockout)
                .await
                .map_err(ApiError::from)?;
        }
        tx.commit().await.map_err(ApiError::from)?;
        self.relay.notify();
        tracing::info!(tenant = %user.tenant_id, user = %user.id, reason = refusal, "password change refused");
        Err(wrong_password())
    }
}
