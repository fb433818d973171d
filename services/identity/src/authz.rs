//! Who may do what: permission decisions and API-key verification, shared by the policy layer
//! (identity checks its own RPCs locally) and the `Check` / `VerifyApiKey` RPCs.

use std::{collections::BTreeSet, sync::Arc};

use futures::future::BoxFuture;
use palisade_grpc::{ApiError, Authorizer, Decision, time::now_micros};
use palisade_proto::palisade::identity::v1::{TenantState, UserState};
use palisade_tenancy::{Principal, PrincipalKind, TenantContext, TenantId};
use tonic::Status;

mod decisions;

pub use decisions::resource_tenant;
use decisions::{
    deny, key_refused, malformed_resource, platform_operators_only, session_revoked,
    tenant_refusal, unusable, user_decision,
};

use crate::{
    api_keys,
    roles::{self, RoleRecord, Roles, custom_roles_grant},
    store::{ApiKeyRecord, IdentityStore},
    users::UserRecord,
};

/// The scope that grants every permission (held by the bootstrap operator key).
pub const ALL_PERMISSIONS: &str = "*";

#[derive(Clone)]
pub struct Authz {
    store: IdentityStore,
    roles: Arc<Roles>,
}

impl Authz {
    pub fn new(store: IdentityStore, roles: Arc<Roles>) -> Authz {
        Authz { store, roles }
    }

    /// Whether `principal` of `tenant` may use `permission`, on `resource` if one is named: it
    /// holds it ([`Authz::decide_held`]), and a permission only `platform_only` methods need
    /// is of use in the system tenant alone, whatever a tenant's roles name.
    pub async fn decide(
        &self,
        tenant: &TenantId,
        principal: &Principal,
        permission: &str,
        resource: Option<&str>,
    ) -> Result<Decision, ApiError> {
        let held = (self.decide_held(tenant, principal, permission, resource)).await?;
        Ok(self.platform_rule(tenant, permission, held))
    }

    /// A decision on a held permission, refused as the method would refuse it when only
    /// platform operators can use it (`PLATFORM_OPERATOR_ONLY`).
    fn platform_rule(&self, tenant: &TenantId, permission: &str, held: Decision) -> Decision {
        if held.allowed && !tenant.is_system() && self.roles.platform_only(permission) {
            platform_operators_only(permission)
        } else {
            held
        }
    }

    /// Whether `principal` of `tenant` holds `permission` by its roles, scopes and state, on
    /// `resource` if one is named: what it may pass on (key scopes), whether or not the mesh
    /// lets it use it.
    async fn decide_held(
        &self,
        tenant: &TenantId,
        principal: &Principal,
        permission: &str,
        resource: Option<&str>,
    ) -> Result<Decision, ApiError> {
        if let Some(resource) = resource {
            match resource_tenant(resource) {
                None => return Ok(malformed_resource(resource)),
                Some(owner) if &owner != tenant && !tenant.is_system() => {
                    return Ok(deny(format!(
                        "{} belongs to another tenant",
                        palisade_grpc::echoed(resource)
                    )));
                }
                Some(_) => {}
            }
        }
        let record = self.store.get_tenant(tenant).await?;
        let custom_roles = custom_roles_grant(record.as_ref());
        if record.is_none() && principal.kind == PrincipalKind::ApiKey {
            // Its keys went with the tenant: the gateway's answer once its cache lapses.
            return Ok(key_refused("unknown api key"));
        }
        if let Some(refusal) = tenant_refusal(tenant, record) {
            return Ok(refusal);
        }
        match principal.kind {
            PrincipalKind::ApiKey => {
                let key = match self.store.get_api_key(&principal.id).await? {
                    Some(key) if &key.tenant_id == tenant => key,
                    _ => return Ok(key_refused("unknown api key")),
                };
                if let Some(problem) = unusable(&key, now_micros()) {
                    return Ok(key_refused(problem));
                }
                self.key_decision(&key, permission, custom_roles).await
            }
            PrincipalKind::User => {
                // The user is looked up within `tenant`: a user id asserted with another
                // tenant's context is unknown there.
                let user = match self.store.get_user(tenant, &principal.id).await? {
                    Some(user) => user,
                    // A deleted user's sessions went with it: its clients must sign in again.
                    None if principal.session_id.is_some() => return Ok(session_revoked()),
                    None => return Ok(deny("unknown user".to_owned())),
                };
                if user.state != UserState::Active {
                    return Ok(deny(format!(
                        "user is {}",
                        crate::users::state_key(user.state)
                    )));
                }
                if !self.session_is_live(tenant, principal).await? {
                    return Ok(session_revoked());
                }
                let granted = self.user_holds(&user, permission, custom_roles).await?;
                Ok(user_decision(granted, permission))
            }
            PrincipalKind::Service => Ok(deny(
                "service principals hold no tenant permissions".to_owned(),
            )),
        }
    }

    /// The permissions the role `role` of `tenant` grants: a built-in role's, or a custom
    /// role's as stored and still in the catalogue; `None` for an unknown role.
    pub async fn role_permissions(
        &self,
        tenant: &TenantId,
        role: &str,
    ) -> Result<Option<BTreeSet<String>>, ApiError> {
        if let Some(granted) = self.roles.permissions(role) {
            return Ok(Some(granted.clone()));
        }
        Ok(self.store.get_role(tenant, role).await?.map(|mut role| {
            role.permissions
                .retain(|permission| self.roles.in_catalogue(permission));
            role.permissions
        }))
    }

    /// Whether the caller holds every permission in `granted` (in its own tenant), so that
    /// passing them on to someone escalates nothing: granting or revoking a role, putting
    /// permissions into a role, or taking over an account (setting its password, disabling or
    /// deleting it). Platform operators too, in every tenant: what the policy layer lets them
    /// do in another tenant is what they hold in the system tenant, so a system manager can
    /// neither make an admin elsewhere nor take over or remove a system admin.
    pub async fn holds_all(
        &self,
        context: &TenantContext,
        granted: &BTreeSet<String>,
    ) -> Result<bool, ApiError> {
        let Some(principal) = &context.principal else {
            return Ok(false);
        };
        let tenant = &context.tenant_id;
        let holds: Box<dyn Fn(&str) -> bool + Send> = match principal.kind {
            PrincipalKind::ApiKey => {
                let key = match self.store.get_api_key(&principal.id).await? {
                    Some(key)
                        if &key.tenant_id == tenant && unusable(&key, now_micros()).is_none() =>
                    {
                        key
                    }
                    _ => return Ok(false),
                };
                // A user's key holds a permission only while its owner does, which takes a
                // lookup per permission: decided here rather than in a synchronous `holds`.
                let custom_roles =
                    custom_roles_grant(self.store.get_tenant(tenant).await?.as_ref());
                for permission in granted {
                    if !self
                        .key_decision(&key, permission, custom_roles)
                        .await?
                        .allowed
                    {
                        return Ok(false);
                    }
                }
                return Ok(true);
            }
            PrincipalKind::User => match self.store.get_user(tenant, &principal.id).await? {
                Some(user) if user.state == UserState::Active => {
                    let held = self.user_permissions(&user).await?;
                    Box::new(move |permission| held.contains(permission))
                }
                _ => return Ok(false),
            },
            PrincipalKind::Service => return Ok(false),
        };
        Ok(granted.iter().all(|permission| holds(permission)))
    }

    pub fn roles(&self) -> &Roles {
        &self.roles
    }

    /// Every permission `user` holds: its roles' (built-in, and custom while its tenant's plan
    /// has them on) and the self-service ones. A disabled user's roles still name these;
    /// `decide` refuses it everything anyway.
    pub async fn user_permissions(&self, user: &UserRecord) -> Result<BTreeSet<String>, ApiError> {
        let custom_roles = self.roles.any_custom(&user.roles)
            && custom_roles_grant(self.store.get_tenant(&user.tenant_id).await?.as_ref());
        self.permissions_of(user, custom_roles).await
    }

    /// Every permission `user`'s roles name, custom roles counted whether or not its tenant's
    /// plan has them on, and the self-service ones: what the user holds whenever they grant.
    /// Power over a user is judged on these, so a plan without custom roles for a while does
    /// not let a manager take over an account that gets more rights back with them.
    pub async fn permissions_named(&self, user: &UserRecord) -> Result<BTreeSet<String>, ApiError> {
        self.permissions_of(user, true).await
    }

    /// [`Authz::permissions_named`] with `custom`, the user's custom roles as the caller read
    /// them (under a lock, say), instead of reading them.
    pub fn permissions_named_with(
        &self,
        user: &UserRecord,
        custom: &[RoleRecord],
    ) -> BTreeSet<String> {
        let mut held = self.built_in_and_self_service(user);
        let granted = custom.iter().flat_map(|role| &role.permissions);
        held.extend(
            granted
                .filter(|permission| self.roles.in_catalogue(permission))
                .cloned(),
        );
        held
    }

    /// [`Authz::user_permissions`], told whether custom roles grant in the user's tenant.
    async fn permissions_of(
        &self,
        user: &UserRecord,
        custom_roles: bool,
    ) -> Result<BTreeSet<String>, ApiError> {
        let mut held = self.built_in_and_self_service(user);
        if custom_roles && self.roles.any_custom(&user.roles) {
            held.extend(self.custom_permissions(user).await?);
        }
        Ok(held)
    }

    fn built_in_and_self_service(&self, user: &UserRecord) -> BTreeSet<String> {
        let mut held = self.roles.built_in_grants(&user.roles);
        held.extend(roles::SELF_SERVICE.map(str::to_owned));
        held
    }

    /// The permissions `user` holds through custom roles, limited to the catalogue (a role
    /// stored before a permission left the API grants nothing by it).
    async fn custom_permissions(&self, user: &UserRecord) -> Result<BTreeSet<String>, ApiError> {
        let mut held = self
            .store
            .user_custom_permissions(&user.tenant_id, &user.id)
            .await?;
        held.retain(|permission| self.roles.in_catalogue(permission));
        Ok(held)
    }

    /// `decide` for several (permission, resource) pairs of one principal. A user, its tenant
    /// and its roles are looked up once for all pairs; other principals are decided pair by
    /// pair. Each answer is exactly what `decide` answers for its pair.
    pub async fn decide_many(
        &self,
        tenant: &TenantId,
        principal: &Principal,
        items: &[(String, Option<String>)],
    ) -> Result<Vec<Decision>, ApiError> {
        if principal.kind != PrincipalKind::User {
            let mut decisions = Vec::with_capacity(items.len());
            for (permission, resource) in items {
                decisions.push(
                    self.decide(tenant, principal, permission, resource.as_deref())
                        .await?,
                );
            }
            return Ok(decisions);
        }
        // The same checks as `decide`, in the same order, with the lookups hoisted.
        let record = self.store.get_tenant(tenant).await?;
        let custom_roles = custom_roles_grant(record.as_ref());
        let tenant_refusal = tenant_refusal(tenant, record);
        let user = match &tenant_refusal {
            Some(_) => None,
            None => self.store.get_user(tenant, &principal.id).await?,
        };
        let user_refusal = match &user {
            None if principal.session_id.is_some() => Some(session_revoked()),
            None => Some(deny("unknown user".to_owned())),
            Some(user) if user.state != UserState::Active => Some(deny(format!(
                "user is {}",
                crate::users::state_key(user.state)
            ))),
            Some(_) if !self.session_is_live(tenant, principal).await? => Some(session_revoked()),
            Some(_) => None,
        };
        let held = match (&user, &user_refusal) {
            (Some(user), None) => self.permissions_of(user, custom_roles).await?,
            _ => BTreeSet::new(),
        };
        Ok(items
            .iter()
            .map(|(permission, resource)| {
                let owner = resource.as_deref().map(|r| (r, resource_tenant(r)));
                if let Some((resource, None)) = owner {
                    malformed_resource(resource)
                } else if let Some((resource, Some(owner))) = owner
                    && &owner != tenant
                    && !tenant.is_system()
                {
                    deny(format!(
                        "{} belongs to another tenant",
                        palisade_grpc::echoed(resource)
                    ))
                } else if let Some(refusal) = tenant_refusal.as_ref().or(user_refusal.as_ref()) {
                    refusal.clone()
                } else {
                    let decision = user_decision(held.contains(permission), permission);
                    self.platform_rule(tenant, permission, decision)
                }
            })
            .collect())
    }

    /// Whether a user principal's sign-in session, if it names one, has not ended. A token
    /// issued before sessions were named carries none and is trusted until it expires.
    async fn session_is_live(
        &self,
        tenant: &TenantId,
        principal: &Principal,
    ) -> Result<bool, ApiError> {
        match &principal.session_id {
            Some(session) => {
                self.store
                    .session_is_live(tenant, &principal.id, session)
                    .await
            }
            None => Ok(true),
        }
    }

    /// The key behind a presented `pal_…` string, if it is genuine and usable.
    pub async fn verify_api_key(&self, presented: &str) -> Result<ApiKeyRecord, ApiError> {
        let refused = || ApiError::Unauthenticated {
            reason: "INVALID_API_KEY",
            message: "the api key is invalid, expired or revoked".to_owned(),
        };
        let (id, secret) = api_keys::parse(presented).ok_or_else(refused)?;
        let key = self.store.get_api_key(id).await?.ok_or_else(refused)?;
        let now = now_micros();
        if !api_keys::hashes_match(&api_keys::hash_secret(secret), &key.secret_hash)
            || unusable(&key, now).is_some()
        {
            return Err(refused());
        }
        // A user's key works only while its owner may sign in; told apart for the gateway,
        // which remembers refusals that never change but not this one.
        if let Some(owner) = &key.owner_user_id {
            match self.store.get_user(&key.tenant_id, owner).await? {
                Some(user) if user.state == UserState::Active => {}
                _ => {
                    return Err(ApiError::Unauthenticated {
                        reason: "API_KEY_OWNER_NOT_ACTIVE",
                        message: "the api key is invalid, expired or revoked".to_owned(),
                    });
                }
            }
        }
        match self.store.get_tenant(&key.tenant_id).await? {
            Some(tenant) if tenant.state == TenantState::Active => {}
            // The reason the gateway gives for a key it has cached, so clients see one answer.
            Some(tenant) if tenant.state == TenantState::Suspended => {
                return Err(ApiError::Unauthenticated {
                    reason: "TENANT_SUSPENDED",
                    message: format!("tenant {} is suspended", key.tenant_id),
                });
            }
            _ => {
                return Err(ApiError::Unauthenticated {
                    reason: "TENANT_NOT_ACTIVE",
                    message: format!("tenant {} is not active", key.tenant_id),
                });
            }
        }
        self.store.touch_api_key(&key.id, now).await?;
        Ok(key)
    }
}

impl Authz {
    /// What an api key may do: a permission its scopes name and, for a user's key, one its
    /// owner holds now (decided as for the owner itself, so a demoted or disabled owner's keys
    /// shrink with it). The caller has checked that the key is usable. A boxed future because
    /// `decide` and this function call each other (an owner is never a key, so the recursion
    /// is one level deep).
    fn key_decision<'a>(
        &'a self,
        key: &'a ApiKeyRecord,
        permission: &'a str,
        custom_roles: bool,
    ) -> BoxFuture<'a, Result<Decision, ApiError>> {
        Box::pin(async move {
            let in_scope = key
                .scopes
                .iter()
                .any(|scope| scope == ALL_PERMISSIONS || scope == permission);
            if !in_scope {
                return Ok(deny(format!("api key scopes do not include {permission}")));
            }
            let Some(owner) = &key.owner_user_id else {
                return Ok(Decision {
                    allowed: true,
                    reason: "granted by api key scope".to_owned(),
                    refusal: None,
                });
            };
            // A user's key works only while its owner may sign in: refused as the gateway
            // refuses it once its cached verification lapses (`verify_api_key`), telling
            // nothing of the owner.
            let owner = match self.store.get_user(&key.tenant_id, owner).await? {
                Some(user) if user.state == UserState::Active => user,
                _ => return Ok(key_refused("the api key's owner may not sign in")),
            };
            Ok(
                if self.user_holds(&owner, permission, custom_roles).await? {
                    Decision {
                        allowed: true,
                        reason: "granted by api key scope and its owner's roles".to_owned(),
                        refusal: None,
                    }
                } else {
                    deny(format!("the api key's owner does not hold {permission}"))
                },
            )
        })
    }

    /// Whether the active `user` holds `permission`: by self-service, a built-in role (from
    /// memory) or, while `custom_roles` grant in its tenant, a custom role (one query, only
    /// for users that hold some).
    async fn user_holds(
        &self,
        user: &UserRecord,
        permission: &str,
        custom_roles: bool,
    ) -> Result<bool, ApiError> {
        Ok(roles::SELF_SERVICE.contains(&permission)
            || self.roles.grant(&user.roles, permission)
            || (custom_roles
                && self.roles.any_custom(&user.roles)
                && self.custom_permissions(user).await?.contains(permission)))
    }

    /// Which of `permissions` `principal` of `tenant` does not hold now (the scopes a new api
    /// key may not have). `*` is held by whoever holds every catalogue permission: in the
    /// system tenant, an admin or an operator key of scope `*`.
    pub async fn lacking(
        &self,
        tenant: &TenantId,
        principal: &Principal,
        permissions: &[String],
    ) -> Result<Vec<String>, ApiError> {
        let mut lacking = Vec::new();
        for permission in permissions {
            let held = if permission == ALL_PERMISSIONS {
                // Every permission: held by whoever holds the whole catalogue (decided in one
                // batch, the principal looked up once).
                let catalogue: Vec<(String, Option<String>)> = self
                    .roles
                    .catalogue()
                    .map(|permission| (permission.to_owned(), None))
                    .collect();
                self.decide_many(tenant, principal, &catalogue)
                    .await?
                    .iter()
                    .all(|decision| decision.allowed)
            } else {
                // Held, though perhaps not usable here: a tenant admin's key may carry what
                // the admin role names, so that it can grant that role as its owner can.
                self.decide_held(tenant, principal, permission, None)
                    .await?
                    .allowed
            };
            if !held {
                lacking.push(permission.clone());
            }
        }
        Ok(lacking)
    }
}

/// Identity's policy layer decides locally, without a network hop.
#[derive(Clone)]
pub struct LocalAuthorizer(pub Arc<Authz>);

impl Authorizer for LocalAuthorizer {
    fn check(
        &self,
        context: &TenantContext,
        permission: &str,
    ) -> BoxFuture<'static, Result<Decision, Status>> {
        let authz = self.0.clone();
        let context = context.clone();
        let permission = permission.to_owned();
        Box::pin(async move {
            let Some(principal) = &context.principal else {
                return Ok(deny("no principal".to_owned()));
            };
            Ok(authz
                .decide(&context.tenant_id, principal, &permission, None)
                .await?)
        })
    }
}
