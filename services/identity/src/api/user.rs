//! `UserService`: users, their roles and effective permissions (password changes are in
//! `user_password`, updates in `user_update`, deletion in `user_delete`, role assignment in
//! `user_roles`, the locks they take on users in `user_locks`).

use std::{collections::BTreeSet, sync::Arc};

use palisade_audit::AuditRecord;
use palisade_db::outbox::Relay;
use palisade_grpc::{
    ApiError, Caller,
    aip::{self, CreatedCursor, FilterField},
    time::{now_micros, timestamp},
};
use palisade_proto::palisade::{
    compliance::v1::Outcome,
    identity::v1::{
        AssignRoleRequest, ChangePasswordRequest, ChangePasswordResponse, CreateUserRequest,
        DeleteUserRequest, GetEffectivePermissionsRequest, GetEffectivePermissionsResponse,
        GetUserRequest, ListUsersRequest, ListUsersResponse, RevokeRoleRequest, UnlockUserRequest,
        UpdateUserRequest, User, UserState, user_service_server::UserService,
    },
};
use palisade_tenancy::TenantId;
use tonic::{Request, Response, Status};

use crate::{
    authz::Authz,
    lockout::LockoutPolicy,
    passwords::Passwords,
    roles::{RoleRecord, Roles},
    store::{IdentityStore, RoleLock, UserFilter},
    users::{self, UserRecord},
};

/// `status` and `state` are one filter: `state` is the resource's field (AIP-160 filters on
/// resource fields, as `ListApiKeys` does), `status` what the API first documented.
const FILTER_FIELDS: &[FilterField] = &[
    FilterField {
        name: "status",
        comparisons: aip::EQUALITY,
    },
    FilterField {
        name: "state",
        comparisons: aip::EQUALITY,
    },
    FilterField {
        name: "email",
        comparisons: aip::EQUALITY,
    },
    FilterField {
        name: "role",
        comparisons: aip::EQUALITY,
    },
];

pub struct UserApi {
    pub(super) store: IdentityStore,
    pub(super) relay: Relay,
    pub(super) authz: Arc<Authz>,
    pub(super) passwords: Passwords,
    pub(super) lockout: LockoutPolicy,
}

impl UserApi {
    pub fn new(
        store: IdentityStore,
        relay: Relay,
        authz: Arc<Authz>,
        passwords: Passwords,
        lockout: LockoutPolicy,
    ) -> UserApi {
        UserApi {
            store,
            relay,
            authz,
            passwords,
            lockout,
        }
    }

    pub(super) fn roles(&self) -> &Roles {
        self.authz.roles()
    }

    /// A caller passes on only rights it holds itself (see `Authz::holds_all`).
    pub(super) async fn require_may_grant(
        &self,
        caller: &Caller,
        role: &str,
        granted: &BTreeSet<String>,
    ) -> Result<(), ApiError> {
        let granted = self.roles().still_granted(granted);
        if self.authz.holds_all(&caller.context, &granted).await? {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied {
                reason: "ROLE_ESCALATION",
                message: format!("role {role} grants permissions the caller does not hold"),
            })
        }
    }

    /// Changing a user (setting its password, renaming or disabling it) takes power over it:
    /// only of users with no more rights than the caller, counting the rights of custom roles
    /// its tenant's plan switched off for now. Returns the permissions the user was judged on,
    /// for [`Self::lock_as_judged`].
    pub(super) async fn require_power_over(
        &self,
        caller: &Caller,
        user: &UserRecord,
    ) -> Result<BTreeSet<String>, ApiError> {
        let held = self.authz.permissions_named(user).await?;
        if self.authz.holds_all(&caller.context, &held).await? {
            Ok(held)
        } else {
            Err(ApiError::PermissionDenied {
                reason: "ROLE_ESCALATION",
                message: "the user holds permissions the caller does not hold".to_owned(),
            })
        }
    }

    /// The user `id` of `tenant` (named `name`), if the caller may see it: another tenant's
    /// users are not revealed, they are simply not found.
    pub(super) async fn visible_user(
        &self,
        caller: &Caller,
        name: &str,
        tenant: &TenantId,
        id: &str,
    ) -> Result<UserRecord, ApiError> {
        if !caller.context.may_access(tenant) {
            return Err(user_not_found(name));
        }
        self.store
            .get_user(tenant, id)
            .await?
            .ok_or_else(|| user_not_found(name))
    }

    /// The custom roles of `tenant` among `roles` (built-in names are skipped).
    async fn custom_roles_among(
        &self,
        tenant: &TenantId,
        roles: &[String],
    ) -> Result<Vec<RoleRecord>, ApiError> {
        let custom = self.custom_role_ids(roles);
        self.store.custom_roles(tenant, &custom).await
    }

    /// The ids of the custom roles among `roles` (built-in names are skipped), sorted, once.
    pub(super) fn custom_role_ids(&self, roles: &[String]) -> Vec<String> {
        let mut custom: Vec<String> = roles
            .iter()
            .filter(|role| !self.roles().is_known(role) && crate::roles::is_role_id(role))
            .cloned()
            .collect();
        custom.sort();
        custom.dedup();
        custom
    }

    /// Custom roles are assigned only while `tenant`'s plan has them on: they would grant
    /// nothing (`Authz::user_permissions`). A missing tenant is left to the caller to refuse.
    pub(super) async fn require_custom_roles_on(&self, tenant: &TenantId) -> Result<(), ApiError> {
        match self.store.get_tenant(tenant).await? {
            Some(record) => crate::roles::check_custom_role_plan(&record),
            None => Ok(()),
        }
    }
}

pub(super) fn user_not_found(name: &str) -> ApiError {
    ApiError::NotFound {
        resource: name.to_owned(),
    }
}

/// Tenant isolation (DESIGN §4.3): a principal acts only within its own tenant, whatever its
/// roles; platform operators of the `system` tenant act on any.
pub(super) fn require_own_tenant(caller: &Caller, tenant: &TenantId) -> Result<(), ApiError> {
    if caller.context.may_access(tenant) {
        Ok(())
    } else {
        Err(ApiError::PermissionDenied {
            reason: "CROSS_TENANT",
            message: format!("the caller may not act on tenants/{tenant}"),
        })
    }
}

/// A list's parent tenant, which the caller may read (`require_own_tenant`) and which exists:
/// an operator listing a tenant that does not is told so (`NOT_FOUND`), not handed an empty
/// page. A caller's own tenant exists, or its call was refused before it got here.
pub(super) async fn require_listed_tenant(
    store: &IdentityStore,
    caller: &Caller,
    tenant: &TenantId,
) -> Result<(), ApiError> {
    require_own_tenant(caller, tenant)?;
    if &caller.context.tenant_id != tenant && store.get_tenant(tenant).await?.is_none() {
        return Err(ApiError::NotFound {
            resource: format!("tenants/{tenant}"),
        });
    }
    Ok(())
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        // Isolation comes before validation, so another tenant's callers learn nothing.
        if let Ok(tenant) = users::parse_parent(&request.parent) {
            require_own_tenant(&caller, &tenant)?;
        }
        // Bounded before the roles are looked up, one query parameter each.
        if let Some(user) = &request.user {
            users::check_role_count(&user.roles)?;
        }
        let custom = match (users::parse_parent(&request.parent), &request.user) {
            (Ok(tenant), Some(user)) => self.custom_roles_among(&tenant, &user.roles).await?,
            _ => Vec::new(),
        };
        let is_role =
            |role: &str| self.roles().is_known(role) || custom.iter().any(|c| c.id == role);
        let mut record = users::validate_create(&request, is_role, now_micros())?;
        if !custom.is_empty() {
            self.require_custom_roles_on(&record.tenant_id).await?;
        }
        for role in &record.roles {
            let granted = match self.roles().permissions(role) {
                Some(granted) => granted,
                None => {
                    &custom
                        .iter()
                        .find(|c| &c.id == role)
                        .expect("validated as built-in or custom")
                        .permissions
                }
            };
            self.require_may_grant(&caller, role, granted).await?;
        }
        if self.store.get_tenant(&record.tenant_id).await?.is_none() {
            return Err(ApiError::NotFound {
                resource: format!("tenants/{}", record.tenant_id),
            }
            .into());
        }
        let password_hash = self.passwords.hash(&request.password).await?;
        let resource = record.name();
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        let custom_ids: Vec<String> = custom.iter().map(|c| c.id.clone()).collect();
        let locked = self
            .store
            .lock_roles(&mut tx, &record.tenant_id, &custom_ids, RoleLock::Share)
            .await?;
        if locked.len() != custom_ids.len() {
            return Err(
                ApiError::invalid("user.roles", "a custom role was deleted meanwhile").into(),
            );
        }
        for (role, judged) in locked.iter().zip(&custom) {
            self.grants_as_judged(role, &judged.permissions)?;
        }
        self.store
            .ensure_within_limit(&mut tx, &record.tenant_id, "users")
            .await?;
        // Stamped now that the tenant's row is locked (the limit's count locks it), so a
        // tenant's users are stamped in the order they commit. Stamped when the request was
        // read, a user whose hash queued behind others would commit after later-stamped ones,
        // behind where a list paging by creation time may have passed already.
        let created = now_micros();
        (record.create_time, record.update_time) = (created, created);
        self.store
            .insert_user(&mut tx, &record, &password_hash)
            .await?;
        let audit = AuditRecord {
            tenant: &record.tenant_id,
            actor_tenant: &caller.context.tenant_id,
            actor: Some(caller.principal()),
            action: caller.action("identity.users.create"),
            resource: &resource,
            outcome: Outcome::Success,
            request_id: caller.request_id.as_ref(),
            source: crate::COMPONENT,
            attributes: vec![("roles", record.roles.join(" "))],
        };
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(tenant = %record.tenant_id, user = %record.id, "user created");
        Ok(Response::new(to_proto(record)))
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let caller = Caller::of(&request)?;
        let name = &request.get_ref().name;
        let (tenant, id) = users::parse_name(name)?;
        // Another tenant's users are not revealed: they are simply not found.
        let record = self.visible_user(&caller, name, &tenant, &id).await?;
        Ok(Response::new(to_proto(record)))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let tenant = users::parse_parent(&request.parent)
            .map_err(|violation| ApiError::InvalidArgument(vec![violation]))?;
        require_listed_tenant(&self.store, &caller, &tenant).await?;
        let page_size = aip::page_size(request.page_size)?;
        let query = aip::ListQuery {
            collection: "users",
            parent: &request.parent,
            filter: &request.filter,
        };
        let after = aip::decode_page_token(&request.page_token, &query)?
            .map(|cursor| CreatedCursor::decode(&cursor))
            .transpose()?;
        let filters = parse_filters(&request.filter)?;
        for filter in &filters {
            if let UserFilter::Role(_, role) = filter
                && !self.roles().is_known(role)
                && self
                    .custom_roles_among(&tenant, std::slice::from_ref(role))
                    .await?
                    .is_empty()
            {
                return Err(ApiError::invalid("filter", users::unknown_role(role)).into());
            }
        }
        let mut records = self
            .store
            .list_users(&tenant, after.as_ref(), &filters, page_size + 1)
            .await?;
        let next_page_token = aip::finish_page(&mut records, page_size, &query, |last| {
            CreatedCursor {
                create_time: last.create_time,
                id: last.id.to_string(),
            }
            .encode()
        });
        Ok(Response::new(ListUsersResponse {
            users: records.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let caller = Caller::of(&request)?;
        let user = self.apply_user_update(caller, request.into_inner()).await?;
        Ok(Response::new(to_proto(user)))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = Caller::of(&request)?;
        self.delete_user_named(caller, &request.get_ref().name)
            .await?;
        Ok(Response::new(()))
    }

    async fn assign_role(
        &self,
        request: Request<AssignRoleRequest>,
    ) -> Result<Response<User>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let user = self
            .change_role(caller, &request.name, &request.role, true)
            .await?;
        Ok(Response::new(user))
    }

    async fn revoke_role(
        &self,
        request: Request<RevokeRoleRequest>,
    ) -> Result<Response<User>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let user = self
            .change_role(caller, &request.name, &request.role, false)
            .await?;
        Ok(Response::new(user))
    }

    async fn get_effective_permissions(
        &self,
        request: Request<GetEffectivePermissionsRequest>,
    ) -> Result<Response<GetEffectivePermissionsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let name = &request.get_ref().name;
        let (tenant, id) = users::parse_name(name)?;
        let user = self.visible_user(&caller, name, &tenant, &id).await?;
        // A disabled user may do nothing, whatever its roles say.
        let permissions = if user.state == UserState::Active {
            self.authz.user_permissions(&user).await?
        } else {
            BTreeSet::new()
        };
        Ok(Response::new(GetEffectivePermissionsResponse {
            user: user.name(),
            roles: user.roles,
            permissions: permissions.into_iter().collect(),
        }))
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        let caller = Caller::of(&request)?;
        let revoked = self
            .apply_password_change(caller, request.into_inner())
            .await?;
        Ok(Response::new(ChangePasswordResponse {
            revoked_sessions: i32::try_from(revoked).unwrap_or(i32::MAX),
        }))
    }

    async fn unlock_user(
        &self,
        request: Request<UnlockUserRequest>,
    ) -> Result<Response<User>, Status> {
        let caller = Caller::of(&request)?;
        let user = self.unlock(caller, request.into_inner()).await?;
        Ok(Response::new(to_proto(user)))
    }
}

pub(super) fn to_proto(record: UserRecord) -> User {
    let etag = record.etag();
    User {
        etag,
        name: record.name(),
        email: record.email,
        display_name: record.display_name,
        state: record.state as i32,
        roles: record.roles,
        create_time: Some(timestamp(record.create_time)),
        update_time: Some(timestamp(record.update_time)),
        // A lock that has run out is no lock: the next sign-in starts a new window.
        lock_expire_time: (record.locked_until)
            .filter(|&until| until > now_micros())
            .map(timestamp),
    }
}

fn parse_filters(filter: &str) -> Result<Vec<UserFilter>, ApiError> {
    aip::parse_filter(filter, FILTER_FIELDS)?
        .into_iter()
        .map(|term| match term.field {
            "status" | "state" => match UserState::from_str_name(&term.value) {
                Some(state) if state != UserState::Unspecified => Ok(UserFilter::State(
                    term.comparison,
                    users::state_key(state).to_owned(),
                )),
                _ => Err(ApiError::invalid(
                    "filter",
                    format!(
                        "unknown {} {:?}",
                        term.field,
                        palisade_grpc::echoed(&term.value)
                    ),
                )),
            },
            "email" => Ok(UserFilter::Email(
                term.comparison,
                term.value.trim().to_lowercase(),
            )),
            _ => Ok(UserFilter::Role(term.comparison, term.value)),
        })
        .collect()
}
