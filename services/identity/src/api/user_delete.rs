//! `UserService.DeleteUser`: a user goes for good, with its role assignments, its sessions and
//! the API keys it owns, in one transaction. Like disabling, it is refused on users holding
//! rights the caller lacks, and a user never deletes itself.

use palisade_audit::AuditRecord;
use palisade_grpc::{ApiError, Caller, time::now_micros};
use palisade_proto::palisade::compliance::v1::Outcome;

use super::UserApi;
use crate::users;

impl UserApi {
    /// Checks who may delete the user `name`, deletes it and audits the deletion.
    pub(super) async fn delete_user_named(
        &self,
        caller: Caller,
        name: &str,
    ) -> Result<(), ApiError> {
        let (tenant, id) = users::parse_name(name)?;
        let user = self.visible_user(&caller, name, &tenant, &id).await?;
        if self.is_own_account(&caller, &user).await? {
            return Err(ApiError::FailedPrecondition {
                reason: "OWN_ACCOUNT",
                message: "a user cannot delete itself; another admin or an operator can".to_owned(),
            });
        }
        let judged = self.require_power_over(&caller, &user).await?;
        // Checked on the user as read (no lock is held while the caller's rights are looked
        // up), then locked: what races with the deletion (a login opening a session, a new key
        // for the user, a role assigned) either committed before and is deleted here, or
        // waits and then finds no user. A role that changed in between means the check above
        // judged another user: the call is aborted, to be retried.
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        self.lock_as_judged(&mut tx, &caller, &user, Some(&judged))
            .await?;
        let ended = self.store.delete_user(&mut tx, &user, now_micros()).await?;
        let resource = user.name();
        let audit = AuditRecord {
            tenant: &tenant,
            actor_tenant: &caller.context.tenant_id,
            actor: Some(caller.principal()),
            action: caller.action("identity.users.delete"),
            resource: &resource,
            outcome: Outcome::Success,
            request_id: caller.request_id.as_ref(),
            source: crate::COMPONENT,
            attributes: vec![
                ("roles", user.roles.join(" ")),
                ("revoked_sessions", ended.sessions.to_string()),
                ("deleted_api_keys", ended.api_keys.to_string()),
            ],
        };
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(tenant = %tenant, user = %id, sessions = ended.sessions, api_keys = ended.api_keys, "user deleted");
        Ok(())
    }
}
