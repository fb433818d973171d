//! `UserService.UpdateUser`: a user's display name and state. Disabling a user ends its
//! sessions in the same transaction; its access tokens and API keys stop at once because every
//! permission check reads the user's current state. Like setting a password, it is refused on
//! users holding rights the caller lacks, and a user never disables itself (nor, in
//! `user_delete`, deletes itself: `is_own_account`).

use palisade_audit::AuditRecord;
use palisade_grpc::{ApiError, Caller, aip, time::now_micros};
use palisade_proto::palisade::{
    compliance::v1::Outcome,
    identity::v1::{UpdateUserRequest, UserState},
};
use palisade_tenancy::{PrincipalKind, TenantId};

use super::UserApi;
use crate::users::{self, UserRecord};

impl UserApi {
    /// Validates and applies the update and audits it; returns the user as it now is.
    pub(super) async fn apply_user_update(
        &self,
        caller: Caller,
        request: UpdateUserRequest,
    ) -> Result<UserRecord, ApiError> {
        let Some(user) = &request.user else {
            return Err(ApiError::invalid("user", "is required"));
        };
        let (tenant, id) = users::parse_name(&user.name).map_err(|_| {
            ApiError::invalid("user.name", "must be `tenants/{tenant_id}/users/{user_id}`")
        })?;
        let current = self.visible_user(&caller, &user.name, &tenant, &id).await?;
        let now = now_micros();
        // Checked on the user as read, so bad input is told before any refusal ...
        let mut sent_back = user.clone();
        sent_back.roles.sort();
        sent_back.roles.dedup();
        let mut violations = aip::require_read_back(
            request.update_mask.as_ref(),
            &users::SET_ELSEWHERE,
            ("palisade.identity.v1.User", "user"),
            &super::user::to_proto(current.clone()),
            &sent_back,
        )?;
        let update = match users::apply_update(&current, user, request.update_mask.as_ref(), now) {
            Ok(update) if violations.is_empty() => update,
            Ok(_) => return Err(ApiError::InvalidArgument(violations)),
            Err(ApiError::InvalidArgument(more)) => {
                violations.extend(more);
                return Err(ApiError::InvalidArgument(violations));
            }
            Err(error) => return Err(error),
        };
        // Against the user as read (a stale copy sent back unchanged is told too), and again
        // below against the user under the lock.
        aip::require_etag(&user.etag, &current.etag(), &user.name)?;
        if update.changed.is_empty() {
            return Ok(current);
        }
        if update.user.state != UserState::Active && self.is_own_account(&caller, &current).await? {
            return Err(ApiError::FailedPrecondition {
                reason: "OWN_ACCOUNT",
                message: "a user cannot disable itself; another admin or an operator can"
                    .to_owned(),
            });
        }
        let judged = self.require_power_over(&caller, &current).await?;
        // ... and applied to the user as it is under the lock, so a concurrent update (a
        // disable, say) is never written over with what was read before it.
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        let locked = self
            .lock_as_judged(&mut tx, &caller, &current, Some(&judged))
            .await?;
        aip::require_etag(&user.etag, &locked.etag(), &user.name)?;
        let update = users::apply_update(&locked, user, request.update_mask.as_ref(), now)?;
        if update.changed.is_empty() {
            return Ok(locked);
        }
        let enabling = update.changes_state() && update.user.state == UserState::Active;
        if enabling {
            // Disabled users do not count towards the limit: enabling one takes a place.
            self.store
                .ensure_within_limit(&mut tx, &tenant, "users")
                .await?;
        }
        self.store.update_user(&mut tx, &update.user).await?;
        let mut attributes = vec![("fields", update.changed.join(" "))];
        if update.changes_state() {
            attributes.push(("state", users::state_key(update.user.state).to_owned()));
        }
        if update.changes_state() && !enabling {
            let revoked = self
                .store
                .revoke_user_sessions(&mut tx, &locked, now)
                .await?;
            attributes.push(("revoked_sessions", revoked.to_string()));
        }
        let resource = locked.name();
        let audit = AuditRecord {
            tenant: &tenant,
            actor_tenant: &caller.context.tenant_id,
            actor: Some(caller.principal()),
            action: caller.action("identity.users.update"),
            resource: &resource,
            outcome: Outcome::Success,
            request_id: caller.request_id.as_ref(),
            source: crate::COMPONENT,
            attributes,
        };
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(tenant = %tenant, user = %locked.id, fields = %update.changed.join(" "), "user updated");
        Ok(update.user)
    }

    /// Whether the caller is the user itself, signed in or through one of its own API keys.
    pub(super) async fn is_own_account(
        &self,
        caller: &Caller,
        user: &UserRecord,
    ) -> Result<bool, ApiError> {
        self.acts_as(caller, &user.tenant_id, &user.id).await
    }

    /// Whether the caller is user `id` of `tenant`, signed in or through one of its own API
    /// keys (which act for their owner, so they are held to what the owner is).
    pub(super) async fn acts_as(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        id: &str,
    ) -> Result<bool, ApiError> {
        let principal = caller.principal();
        if caller.context.tenant_id != *tenant {
            return Ok(false);
        }
        Ok(match principal.kind {
            PrincipalKind::User => principal.id == id,
            PrincipalKind::ApiKey => self
                .store
                .get_api_key(&principal.id)
                .await?
                .is_some_and(|key| key.owner_user_id.as_deref() == Some(id)),
            _ => false,
        })
    }
}
