//! `RoleService`: the built-in roles (read-only) and a tenant's custom roles.

use std::{collections::BTreeSet, sync::Arc};

use palisade_audit::AuditRecord;
use palisade_db::outbox::Relay;
use palisade_grpc::{
    ApiError, Caller,
    aip::{self, Comparison, FilterField},
    time::{now_micros, timestamp},
};
use palisade_proto::palisade::{
    compliance::v1::Outcome,
    identity::v1::{
        CreateRoleRequest, DeleteRoleRequest, GetRoleRequest, ListRolesRequest, ListRolesResponse,
        Role, UpdateRoleRequest, role_service_server::RoleService,
    },
};
use palisade_tenancy::TenantId;
use tonic::{Request, Response, Status};

use super::user::require_own_tenant;
use crate::{
    authz::Authz,
    roles::{self, RoleRecord, Roles, UpdatePaths},
    store::{IdentityStore, RoleFilter, RoleLock},
};

const FILTER_FIELDS: &[FilterField] = &[
    FilterField {
        name: "built_in",
        comparisons: aip::EQUALITY,
    },
    FilterField {
        name: "permission",
        comparisons: aip::EQUALITY,
    },
];

/// How often `UpdateRole` re-reads a role that changed between its checks and its lock.
const UPDATE_ATTEMPTS: usize = 3;

pub struct RoleApi {
    store: IdentityStore,
    relay: Relay,
    authz: Arc<Authz>,
}

impl RoleApi {
    pub fn new(store: IdentityStore, relay: Relay, authz: Arc<Authz>) -> RoleApi {
        RoleApi {
            store,
            relay,
            authz,
        }
    }

    fn roles(&self) -> &Roles {
        self.authz.roles()
    }

    /// A caller puts into a role only permissions it holds itself.
    async fn require_holds(
        &self,
        caller: &Caller,
        permissions: &BTreeSet<String>,
    ) -> Result<(), ApiError> {
        let granted = self.roles().still_granted(permissions);
        if self.authz.holds_all(&caller.context, &granted).await? {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied {
                reason: "ROLE_ESCALATION",
                message: "the role grants permissions the caller does not hold".to_owned(),
            })
        }
    }

    async fn require_tenant(&self, tenant: &TenantId, missing: ApiError) -> Result<(), ApiError> {
        match self.store.get_tenant(tenant).await? {
            Some(_) => Ok(()),
            None => Err(missing),
        }
    }

    fn audit<'a>(
        caller: &'a Caller,
        role: &'a RoleRecord,
        resource: &'a str,
        fallback: &'a str,
        attributes: Vec<(&'a str, String)>,
    ) -> AuditRecord<'a> {
        AuditRecord {
            tenant: &role.tenant_id,
            actor_tenant: &caller.context.tenant_id,
            actor: Some(caller.principal()),
            action: caller.action(fallback),
            resource,
            outcome: Outcome::Success,
            request_id: caller.request_id.as_ref(),
            source: crate::COMPONENT,
            attributes,
        }
    }

    /// One attempt of `UpdateRole`: `None` when the role changed between the checks and the
    /// lock (the caller tries again).
    async fn try_update(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        id: &str,
        update: &Role,
        paths: UpdatePaths,
    ) -> Result<Option<RoleRecord>, ApiError> {
        let not_found = || ApiError::NotFound {
            resource: format!("tenants/{tenant}/roles/{id}"),
        };
        let current = self
            .store
            .get_role(tenant, id)
            .await?
            .ok_or_else(not_found)?;
        // Against the role as read; the lock below sends a role changed since back here.
        aip::require_etag(&update.etag, &current.etag(), &current.name())?;
        let next = roles::apply_update(&current, update, paths, self.roles(), now_micros())?;
        if next == current {
            return Ok(Some(current));
        }
        // Changing a role changes what its holders may do: the caller must hold what it
        // takes away as well as what it grants.
        let touched = current
            .permissions
            .union(&next.permissions)
            .cloned()
            .collect();
        self.require_holds(caller, &touched).await?;
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        let locked = self
            .store
            .lock_role(&mut tx, tenant, id, RoleLock::Update)
            .await?
            .ok_or_else(not_found)?;
        if locked != current {
            return Ok(None);
        }
        self.store.update_role(&mut tx, &next).await?;
        let resource = next.name();
        let mut fields = Vec::new();
        for (changed, field) in [
            (current.display_name != next.display_name, "display_name"),
            (current.description != next.description, "description"),
            (current.permissions != next.permissions, "permissions"),
        ] {
            if changed {
                fields.push(field);
            }
        }
        let attributes = vec![
            ("changed", fields.join(" ")),
            ("permissions", next.permission_list()),
        ];
        let audit = Self::audit(
            caller,
            &next,
            &resource,
            "identity.roles.update",
            attributes,
        );
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(tenant = %tenant, role = id, "role updated");
        Ok(Some(next))
    }
}

fn built_in_is_read_only(role: &str) -> ApiError {
    ApiError::FailedPrecondition {
        reason: "BUILT_IN_ROLE",
        message: format!("{role} is a built-in role, which cannot be changed or deleted"),
    }
}

#[tonic::async_trait]
impl RoleService for RoleApi {
    async fn create_role(
        &self,
        request: Request<CreateRoleRequest>,
    ) -> Result<Response<Role>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        // Isolation comes before validation, so another tenant's callers learn nothing.
        if let Ok(tenant) = roles::parse_parent(&request.parent) {
            require_own_tenant(&caller, &tenant)?;
        }
        let record = roles::validate_create(&request, self.roles(), now_micros())?;
        self.require_holds(&caller, &record.permissions).await?;
        let not_found = || ApiError::NotFound {
            resource: format!("tenants/{}", record.tenant_id),
        };
        let tenant = self
            .store
            .get_tenant(&record.tenant_id)
            .await?
            .ok_or_else(not_found)?;
        let resource = record.name();
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        roles::check_custom_role_plan(&tenant)?;
        self.store
            .ensure_within_limit(&mut tx, &record.tenant_id, "custom_roles")
            .await?;
        self.store.insert_role(&mut tx, &record).await?;
        let attributes = vec![("permissions", record.permission_list())];
        let audit = Self::audit(
            &caller,
            &record,
            &resource,
            "identity.roles.create",
            attributes,
        );
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(tenant = %record.tenant_id, role = %record.id, "role created");
        Ok(Response::new(to_proto(record)))
    }

    async fn get_role(&self, request: Request<GetRoleRequest>) -> Result<Response<Role>, Status> {
        let caller = Caller::of(&request)?;
        let name = &request.get_ref().name;
        let (tenant, id) = roles::parse_role_name("name", name)?;
        // Another tenant's roles are not revealed: they are simply not found.
        let not_found = || ApiError::NotFound {
            resource: name.clone(),
        };
        if !caller.context.may_access(&tenant) {
            return Err(not_found().into());
        }
        let record = match self.roles().built_in(&tenant, &id) {
            Some(record) => {
                self.require_tenant(&tenant, not_found()).await?;
                record
            }
            None => self
                .store
                .get_role(&tenant, &id)
                .await?
                .ok_or_else(not_found)?,
        };
        Ok(Response::new(to_proto(record)))
    }

    async fn list_roles(
        &self,
        request: Request<ListRolesRequest>,
    ) -> Result<Response<ListRolesResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let tenant = roles::parse_parent(&request.parent)
            .map_err(|violation| ApiError::InvalidArgument(vec![violation]))?;
        require_own_tenant(&caller, &tenant)?;
        let page_size = aip::page_size(request.page_size)?;
        let query = aip::ListQuery {
            collection: "roles",
            parent: &request.parent,
            filter: &request.filter,
        };
        let after = aip::decode_page_token(&request.page_token, &query)?
            .map(|cursor| Cursor::decode(&cursor))
            .transpose()?;
        let filter = parse_filter(&request.filter, self.roles())?;
        self.require_tenant(
            &tenant,
            ApiError::NotFound {
                resource: request.parent.clone(),
            },
        )
        .await?;

        // Built-in roles first, in their documented order, then custom roles by id.
        let mut records: Vec<RoleRecord> = Vec::new();
        if filter.built_in && !matches!(after, Some(Cursor::Custom(_))) {
            let start = match &after {
                Some(Cursor::BuiltIn(index)) => index + 1,
                _ => 0,
            };
            records.extend(
                roles::BUILT_IN
                    .iter()
                    .skip(start)
                    .filter_map(|role| self.roles().built_in(&tenant, role))
                    .filter(|role| filter.matches(&role.permissions)),
            );
        }
        let wanted = (page_size + 1).saturating_sub(records.len());
        if filter.custom && wanted > 0 {
            let after = match &after {
                Some(Cursor::Custom(id)) => Some(id.as_str()),
                _ => None,
            };
            records.extend(
                self.store
                    .list_roles(&tenant, after, &filter.store_filters(), wanted)
                    .await?,
            );
        }
        let next_page_token = aip::finish_page(&mut records, page_size, &query, |last| {
            if last.built_in {
                let index = roles::BUILT_IN
                    .iter()
                    .position(|role| *role == last.id)
                    .unwrap_or_default();
                Cursor::BuiltIn(index).encode()
            } else {
                Cursor::Custom(last.id.clone()).encode()
            }
        });
        Ok(Response::new(ListRolesResponse {
            roles: records.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_role(
        &self,
        request: Request<UpdateRoleRequest>,
    ) -> Result<Response<Role>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let Some(update) = &request.role else {
            return Err(ApiError::invalid("role", "is required").into());
        };
        let (tenant, id) = roles::parse_role_name("role.name", &update.name)?;
        let mask = request
            .update_mask
            .as_ref()
            .map_or(&[][..], |mask| mask.paths.as_slice());
        let paths = UpdatePaths::parse(mask, update)?;
        let not_found = || ApiError::NotFound {
            resource: update.name.clone(),
        };
        if !caller.context.may_access(&tenant) {
            return Err(not_found().into());
        }
        if self.roles().is_known(&id) {
            self.require_tenant(&tenant, not_found()).await?;
            return Err(built_in_is_read_only(&id).into());
        }
        for _ in 0..UPDATE_ATTEMPTS {
            if let Some(updated) = self
                .try_update(&caller, &tenant, &id, update, paths)
                .await?
            {
                return Ok(Response::new(to_proto(updated)));
            }
        }
        Err(ApiError::Unavailable {
            message: format!("{} kept changing concurrently; try again", update.name),
        }
        .into())
    }

    async fn delete_role(
        &self,
        request: Request<DeleteRoleRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = Caller::of(&request)?;
        let name = &request.get_ref().name;
        let (tenant, id) = roles::parse_role_name("name", name)?;
        let not_found = || ApiError::NotFound {
            resource: name.clone(),
        };
        if !caller.context.may_access(&tenant) {
            return Err(not_found().into());
        }
        if self.roles().is_known(&id) {
            self.require_tenant(&tenant, not_found()).await?;
            return Err(built_in_is_read_only(&id).into());
        }
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        // Locked before looking for holders: an assignment in flight either committed (and is
        // seen) or waits, and then finds the role gone.
        let role = self
            .store
            .lock_role(&mut tx, &tenant, &id, RoleLock::Update)
            .await?
            .ok_or_else(not_found)?;
        if self.store.role_in_use(&mut tx, &tenant, &id).await? {
            return Err(ApiError::FailedPrecondition {
                reason: "ROLE_IN_USE",
                message: format!("users still hold {name}; revoke it from them first"),
            }
            .into());
        }
        self.store.delete_role(&mut tx, &tenant, &id).await?;
        let attributes = vec![("permissions", role.permission_list())];
        let audit = Self::audit(&caller, &role, name, "identity.roles.delete", attributes);
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(tenant = %tenant, role = id, "role deleted");
        Ok(Response::new(()))
    }
}

/// Where a page of roles resumes: after the built-in role at this index, or after this custom
/// role id. Its cursor text is `b:<index>` or `c:<id>`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Cursor {
    BuiltIn(usize),
    Custom(String),
}

impl Cursor {
    fn encode(&self) -> String {
        match self {
            Cursor::BuiltIn(index) => format!("b:{index}"),
            Cursor::Custom(id) => format!("c:{id}"),
        }
    }

    fn decode(cursor: &str) -> Result<Cursor, ApiError> {
        let malformed = || ApiError::invalid("page_token", "malformed page token");
        match cursor.split_once(':').ok_or_else(malformed)? {
            ("b", index) => match index.parse() {
                Ok(index) if index < roles::BUILT_IN.len() => Ok(Cursor::BuiltIn(index)),
                _ => Err(malformed()),
            },
            ("c", id) if !id.is_empty() => Ok(Cursor::Custom(id.to_owned())),
            _ => Err(malformed()),
        }
    }
}

/// A parsed `ListRoles` filter: which kinds of role may match, and the permission terms.
struct ListFilter {
    built_in: bool,
    custom: bool,
    permissions: Vec<(Comparison, String)>,
}

impl ListFilter {
    fn matches(&self, granted: &BTreeSet<String>) -> bool {
        self.permissions.iter().all(|(comparison, permission)| {
            granted.contains(permission) == (*comparison == Comparison::Eq)
        })
    }

    fn store_filters(&self) -> Vec<RoleFilter> {
        self.permissions
            .iter()
            .map(|(comparison, permission)| RoleFilter::Permission(*comparison, permission.clone()))
            .collect()
    }
}

/// A permission outside the catalogue is refused, as an unknown role is by `ListUsers`: no role
/// could hold it, so the filter can only be a mistake.
fn parse_filter(filter: &str, roles: &Roles) -> Result<ListFilter, ApiError> {
    let mut parsed = ListFilter {
        built_in: true,
        custom: true,
        permissions: Vec::new(),
    };
    for term in aip::parse_filter(filter, FILTER_FIELDS)? {
        match term.field {
            "built_in" => {
                let value = match term.value.as_str() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(ApiError::invalid(
                            "filter",
                            format!(
                                "built_in is true or false, not {:?}",
                                palisade_grpc::echoed(other)
                            ),
                        ));
                    }
                };
                // `built_in = true` keeps the built-in roles, `built_in != true` the others.
                let wants_built_in = value == (term.comparison == Comparison::Eq);
                parsed.built_in &= wants_built_in;
                parsed.custom &= !wants_built_in;
            }
            _ if !roles.in_catalogue(&term.value) => {
                return Err(ApiError::invalid(
                    "filter",
                    format!(
                        "unknown permission {:?}; the catalogue is the admin role's permissions",
                        palisade_grpc::echoed(&term.value)
                    ),
                ));
            }
            _ => parsed.permissions.push((term.comparison, term.value)),
        }
    }
    Ok(parsed)
}

fn to_proto(record: RoleRecord) -> Role {
    Role {
        etag: record.etag(),
        name: record.name(),
        display_name: record.display_name,
        description: record.description,
        permissions: record.permissions.into_iter().collect(),
        built_in: record.built_in,
        create_time: record.create_time.map(timestamp),
        update_time: record.update_time.map(timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        for cursor in [
            Cursor::BuiltIn(0),
            Cursor::BuiltIn(4),
            Cursor::Custom("a-b".into()),
        ] {
            assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        }
        for bad in ["b:5", "b:x", "c:", "x:1", "nope"] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters_select_kinds_and_permissions() {
        let roles = Roles::from_catalogue(&palisade_grpc::MethodPolicies::palisade().unwrap());
        let parse = |filter| parse_filter(filter, &roles);
        let only_custom = parse("built_in = false").unwrap();
        assert!(!only_custom.built_in && only_custom.custom);
        let only_built_in = parse("built_in != false").unwrap();
        assert!(only_built_in.built_in && !only_built_in.custom);
        let granting = parse(r#"permission = "identity.users.list""#).unwrap();
        assert!(granting.matches(&BTreeSet::from(["identity.users.list".to_owned()])));
        assert!(!granting.matches(&BTreeSet::new()));
        assert!(parse("built_in = maybe").is_err());
        assert!(parse("display_name = x").is_err());
        // No role could hold it.
        assert!(parse(r#"permission = "nope.x""#).is_err());
    }
}
