//! `UserService.AssignRole` and `RevokeRole`: a caller hands out or takes back only roles
//! whose permissions it holds, nobody revokes its own roles, and a custom role is assigned
//! only while the tenant's plan has custom roles on.

use palisade_audit::AuditRecord;
use palisade_grpc::{ApiError, Caller, time::now_micros};
use palisade_proto::palisade::{compliance::v1::Outcome, identity::v1::User};

use super::{
    UserApi,
    user::{to_proto, user_not_found},
};
use crate::{store::RoleLock, users};

impl UserApi {
    /// `AssignRole` (`assign`) and `RevokeRole`.
    pub(super) async fn change_role(
        &self,
        caller: Caller,
        name: &str,
        role: &str,
        assign: bool,
    ) -> Result<User, ApiError> {
        let (tenant, id) = users::parse_name(name)?;
        let unknown = || ApiError::invalid("role", users::unknown_role(role));
        if role.is_empty() {
            return Err(ApiError::invalid("role", "is required"));
        }
        let not_found = || user_not_found(name);
        let user = self.visible_user(&caller, name, &tenant, &id).await?;
        let granted = self
            .authz
            .role_permissions(&tenant, role)
            .await?
            .ok_or_else(unknown)?;
        // As nobody disables or deletes itself: a tenant's only admin would leave it with none.
        let held = user.roles.iter().any(|held| held == role);
        if !assign && held && self.is_own_account(&caller, &user).await? {
            return Err(ApiError::FailedPrecondition {
                reason: "OWN_ACCOUNT",
                message: "a user cannot revoke its own roles; another admin or an operator can"
                    .to_owned(),
            });
        }
        if assign && !self.roles().is_known(role) {
            self.require_custom_roles_on(&tenant).await?;
        }
        self.require_may_grant(&caller, role, &granted).await?;
        let action = if assign {
            "identity.roles.assign"
        } else {
            "identity.roles.revoke"
        };
        let now = now_micros();
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        // Locked, so a deletion either committed before (the user is not found) or waits. The
        // caller too, who must still hold the role's permissions then: two admins revoking
        // each other's admin role at once would otherwise leave the tenant with neither.
        self.lock_with_caller(&mut tx, &caller, &tenant, &id, Some(&granted))
            .await?
            .ok_or_else(not_found)?;
        // A custom role being assigned is held (share-locked) until commit, so a concurrent
        // DeleteRole either sees this assignment or has already removed the role.
        if assign && !self.roles().is_known(role) {
            let locked = (self.store)
                .lock_roles(&mut tx, &tenant, &[role.to_owned()], RoleLock::Share)
                .await?;
            let locked = locked.first().ok_or_else(unknown)?;
            self.grants_as_judged(locked, &granted)?;
        }
        let changed = if assign {
            self.store.add_user_role(&mut tx, &user, role, now).await?
        } else {
            self.store
                .remove_user_role(&mut tx, &user, role, now)
                .await?
        };
        if changed {
            let resource = user.name();
            let audit = AuditRecord {
                tenant: &user.tenant_id,
                actor_tenant: &caller.context.tenant_id,
                actor: Some(caller.principal()),
                action: caller.action(action),
                resource: &resource,
                outcome: Outcome::Success,
                request_id: caller.request_id.as_ref(),
                source: crate::COMPONENT,
                attributes: vec![("role", role.to_owned())],
            };
            palisade_audit::enqueue(&mut tx, &audit)
                .await
                .map_err(ApiError::from)?;
        }
        tx.commit().await.map_err(ApiError::from)?;
        if changed {
            self.relay.notify();
            tracing::info!(tenant = %user.tenant_id, user = %user.id, role, assign, "user role changed");
        }
        let user = self
            .store
            .get_user(&tenant, &id)
            .await?
            .ok_or_else(not_found)?;
        Ok(to_proto(user))
    }
}
