//! The locks `UserService`'s changes take once the caller's rights have been judged: on the
//! user acted on, and on the user acting, each checked to be as it was judged, so that a
//! change that raced the judgement is aborted (to be retried) rather than acting on rights
//! nobody holds any more.

use std::collections::BTreeSet;

use palisade_grpc::{ApiError, Caller};
use palisade_tenancy::{PrincipalKind, TenantId};

use super::{UserApi, user::user_not_found};
use crate::{roles::RoleRecord, store::RoleLock, users::UserRecord};

impl UserApi {
    /// Locks `user` (as read when the caller's rights over it were judged) for the rest of
    /// `tx`, and returns it as it is now, with those roles. Not found if it was deleted
    /// meanwhile; aborted (to be retried) if its roles changed, since the judgement was about
    /// a user holding the old ones: a manager must not set the password of a user just made
    /// an admin. With `judged`, the permissions [`Self::require_power_over`] judged the user
    /// on, its custom roles are share-locked too (an `UpdateRole` waits, or has committed),
    /// and the call is aborted as well if they now grant more than that.
    ///
    /// A caller who is another user of the tenant (or that user's key) is share-locked too,
    /// the two rows in id order (so that two calls on the same pair cannot deadlock), and with
    /// `judged` the caller must still hold every one of those permissions then, or the call
    /// is aborted: otherwise two admins deleting, disabling or demoting each other at once
    /// would both succeed, and leave the tenant with neither.
    pub(super) async fn lock_as_judged(
        &self,
        tx: &mut sqlx::AnyConnection,
        caller: &Caller,
        user: &UserRecord,
        judged: Option<&BTreeSet<String>>,
    ) -> Result<UserRecord, ApiError> {
        let name = user.name();
        let mut locked = self
            .lock_with_caller(tx, caller, &user.tenant_id, &user.id, judged)
            .await?
            .ok_or_else(|| user_not_found(&name))?;
        if self
            .store
            .user_roles_in(tx, &user.tenant_id, &user.id)
            .await?
            != user.roles
        {
            return Err(ApiError::Aborted {
                reason: "CONCURRENT_CHANGE",
                message: format!("the roles of {name} changed meanwhile; retry"),
            });
        }
        if let Some(judged) = judged {
            let custom = self.custom_role_ids(&user.roles);
            let custom = (self.store)
                .lock_roles(tx, &user.tenant_id, &custom, RoleLock::Share)
                .await?;
            if !self
                .authz
                .permissions_named_with(user, &custom)
                .is_subset(judged)
            {
                return Err(ApiError::Aborted {
                    reason: "CONCURRENT_CHANGE",
                    message: format!("the roles of {name} grant more than they did; retry"),
                });
            }
        }
        locked.roles = user.roles.clone();
        Ok(locked)
    }

    /// Locks the user `id` of `tenant` for the rest of `tx` and returns it (`None`: gone), and
    /// share-locks the user making the call if that is another user of the tenant, the two
    /// rows in id order (see [`Self::lock_as_judged`]). The caller must then still hold all of
    /// `caller_holds`, or the call is aborted.
    pub(super) async fn lock_with_caller(
        &self,
        tx: &mut sqlx::AnyConnection,
        caller: &Caller,
        tenant: &TenantId,
        id: &str,
        caller_holds: Option<&BTreeSet<String>>,
    ) -> Result<Option<UserRecord>, ApiError> {
        let acting_user = self
            .acting_user(caller)
            .await?
            .filter(|acting| caller.context.tenant_id == *tenant && acting != id);
        let caller_first = acting_user.as_deref().is_some_and(|acting| acting < id);
        if let Some(acting) = acting_user.as_deref().filter(|_| caller_first) {
            self.lock_acting_user(tx, caller, tenant, acting, caller_holds)
                .await?;
        }
        let locked = self.store.lock_user(tx, tenant, id).await?;
        if let Some(acting) = acting_user.as_deref().filter(|_| !caller_first) {
            self.lock_acting_user(tx, caller, tenant, acting, caller_holds)
                .await?;
        }
        Ok(locked)
    }

    /// The user a call is made by: the user principal itself, or a user's key's owner.
    async fn acting_user(&self, caller: &Caller) -> Result<Option<String>, ApiError> {
        let principal = caller.principal();
        Ok(match principal.kind {
            PrincipalKind::User => Some(principal.id.clone()),
            PrincipalKind::ApiKey => {
                (self.store.get_api_key(&principal.id).await?).and_then(|key| key.owner_user_id)
            }
            PrincipalKind::Service => None,
        })
    }

    /// Share-locks the user `id` making the call ([`Self::lock_as_judged`]) and, with
    /// `judged`, checks that the caller still holds all of it (which also takes the user to be
    /// there and active): aborted otherwise. Read once the lock holds, a role revoked from the
    /// caller meanwhile (its assignment locks the caller's row) has committed or waits.
    async fn lock_acting_user(
        &self,
        tx: &mut sqlx::AnyConnection,
        caller: &Caller,
        tenant: &TenantId,
        id: &str,
        judged: Option<&BTreeSet<String>>,
    ) -> Result<(), ApiError> {
        let still_holds = self.store.share_lock_user(tx, tenant, id).await?
            && match judged {
                Some(judged) => self.authz.holds_all(&caller.context, judged).await?,
                None => true,
            };
        if still_holds {
            return Ok(());
        }
        Err(ApiError::Aborted {
            reason: "CONCURRENT_CHANGE",
            message: "the calling user was deleted, disabled or demoted meanwhile".to_owned(),
        })
    }

    /// Whether the custom role `locked`, as it is under its lock, still grants `judged`: what
    /// the caller's right to grant it was checked against. If an `UpdateRole` committed in
    /// between, the call is aborted, to be retried (and judged again).
    pub(super) fn grants_as_judged(
        &self,
        locked: &RoleRecord,
        judged: &BTreeSet<String>,
    ) -> Result<(), ApiError> {
        let roles = self.roles();
        if roles.still_granted(&locked.permissions) != roles.still_granted(judged) {
            return Err(ApiError::Aborted {
                reason: "CONCURRENT_CHANGE",
                message: format!(
                    "the permissions of role {} changed meanwhile; retry",
                    locked.id
                ),
            });
        }
        Ok(())
    }
}
