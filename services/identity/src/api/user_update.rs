//! `UserService.UpdateUser`: a user's display name and state. Disabling a user ends its
//! sessions in the same transaction; its access tokens and API keys stop at once because every
//! permission check reads the user's current state. Like setting a password, it is refused on
//! users holding rights the caller lacks, and a user never disables itself.

use palisade_audit::AuditRecord;
use palisade_grpc::{ApiError, Caller, time::now_micros};
use palisade_proto::palisade::{
    compliance::v1::Outcome,
    identity::v1::{UpdateUserRequest, UserState},
};
use palisade_tenancy::PrincipalKind;

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
        let not_found = || ApiError::NotFound {
            resource: user.name.clone(),
        };
        // Another tenant's users are not revealed: they are simply not found.
        if !caller.context.may_access(&tenant) {
            return Err(not_found());
        }
        let current = self
            .store
            .get_user(&tenant, &id)
            .await?
            .ok_or_else(not_found)?;
        let now = now_micros();
        let update = users::apply_update(&current, user, request.update_mask.as_ref(), now)?;
        if update.changed.is_empty() {
            return Ok(current);
        }
        let principal = caller.principal();
        let own = principal.kind == PrincipalKind::User
            && principal.id == current.id
            && caller.context.tenant_id == tenant;
        if own && update.user.state != UserState::Active {
            return Err(ApiError::FailedPrecondition {
                reason: "OWN_ACCOUNT",
                message: "a user cannot disable itself; another admin or an operator can"
                    .to_owned(),
            });
        }
        // Changing a user takes power over it: only of users with no more rights.
        let held = self.authz.user_permissions(&current).await?;
        if !own && !self.authz.holds_all(&caller.context, &held).await? {
            return Err(ApiError::PermissionDenied {
                reason: "ROLE_ESCALATION",
                message: "the user holds permissions the caller does not hold".to_owned(),
            });
        }
        let mut tx = self.store.db().begin().await.map_err(ApiError::internal)?;
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
                .revoke_user_sessions(&mut tx, &current, now)
                .await?;
            attributes.push(("revoked_sessions", revoked.to_string()));
        }
        let resource = current.name();
        let audit = AuditRecord {
            tenant: &tenant,
            actor_tenant: &caller.context.tenant_id,
            actor: Some(principal),
            action: caller.action("identity.users.update"),
            resource: &resource,
            outcome: Outcome::Success,
            request_id: caller.request_id.as_ref(),
            source: crate::COMPONENT,
            attributes,
        };
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::internal)?;
        tracing::info!(tenant = %tenant, user = %current.id, fields = %update.changed.join(" "), "user updated");
        Ok(update.user)
    }
}
