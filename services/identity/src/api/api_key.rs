//! `ApiKeyService`: key management for tenants, and verification for the gateway.

use std::sync::Arc;

use palisade_audit::AuditRecord;
use palisade_db::{Scope, outbox::Relay};
use palisade_grpc::{
    ApiError, Caller,
    aip::{self, CreatedCursor, FilterField},
    principal_type,
    time::{now_micros, timestamp},
};
use palisade_proto::palisade::{
    common::v1::Principal as ProtoPrincipal,
    compliance::v1::Outcome,
    identity::v1::{
        ApiKey, ApiKeyState, CreateApiKeyRequest, CreateApiKeyResponse, GetApiKeyRequest,
        ListApiKeysRequest, ListApiKeysResponse, RevokeApiKeyRequest, VerifyApiKeyRequest,
        VerifyApiKeyResponse, api_key_service_server::ApiKeyService,
    },
};
use palisade_tenancy::{PrincipalKind, TenantId};
use tonic::{Request, Response, Status};

use super::user::{require_listed_tenant, require_own_tenant};
use crate::{
    api_keys::{self, KeyRules},
    authz::Authz,
    store::{ApiKeyFilter, ApiKeyRecord, IdentityStore},
    users,
};

const FILTER_FIELDS: &[FilterField] = &[
    FilterField {
        name: "state",
        comparisons: aip::EQUALITY,
    },
    FilterField {
        name: "owner",
        comparisons: aip::EQUALITY,
    },
    FilterField {
        name: "created_with",
        comparisons: aip::EQUALITY,
    },
];

mod checks;

pub struct ApiKeyApi {
    store: IdentityStore,
    relay: Relay,
    authz: Arc<Authz>,
    rules: KeyRules,
}

impl ApiKeyApi {
    pub fn new(
        store: IdentityStore,
        relay: Relay,
        authz: Arc<Authz>,
        rules: KeyRules,
    ) -> ApiKeyApi {
        ApiKeyApi {
            store,
            relay,
            authz,
            rules,
        }
    }

    fn audit<'a>(
        &self,
        caller: &'a Caller,
        key: &'a ApiKeyRecord,
        resource: &'a str,
        action: &'a str,
        attributes: Vec<(&'static str, String)>,
    ) -> AuditRecord<'a> {
        AuditRecord {
            tenant: &key.tenant_id,
            actor_tenant: &caller.context.tenant_id,
            actor: Some(caller.principal()),
            action: caller.action(action),
            resource,
            outcome: Outcome::Success,
            request_id: caller.request_id.as_ref(),
            source: crate::COMPONENT,
            attributes,
        }
    }
}

#[tonic::async_trait]
impl ApiKeyService for ApiKeyApi {
    async fn verify_api_key(
        &self,
        request: Request<VerifyApiKeyRequest>,
    ) -> Result<Response<VerifyApiKeyResponse>, Status> {
        // A key names its tenant only once it is found: the gateway asks with no tenant.
        let key = self.authz.verify_api_key(&request.get_ref().key);
        let key = palisade_db::in_scope(Scope::AllTenants, key).await?;
        Ok(Response::new(VerifyApiKeyResponse {
            principal: Some(ProtoPrincipal {
                tenant_id: key.tenant_id.to_string(),
                id: key.id.clone(),
                r#type: principal_type(PrincipalKind::ApiKey) as i32,
                session_id: String::new(),
            }),
            key_name: key.name(),
            expire_time: Some(timestamp(key.expire_time)),
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        // Isolation comes before validation, so another tenant's callers learn nothing.
        if let Ok(tenant) = users::parse_parent(&request.parent) {
            require_own_tenant(&caller, &tenant)?;
        }
        let now = now_micros();
        let mut key = api_keys::validate_create(&request, &self.rules, &caller.context, now)?;
        if let Some(owner) = &key.owner_user_id {
            // A personal key is made by its owner alone: nobody mints credentials that act
            // as someone else.
            let principal = caller.principal();
            let by_owner = principal.kind == PrincipalKind::User
                && &principal.id == owner
                && caller.context.tenant_id == key.tenant_id;
            if !by_owner {
                return Err(ApiError::PermissionDenied {
                    reason: "NOT_KEY_OWNER",
                    message: "only a user itself creates api keys it owns".to_owned(),
                }
                .into());
            }
            if self.store.get_user(&key.tenant_id, owner).await?.is_none() {
                return Err(ApiError::NotFound {
                    resource: key.owner_name(),
                }
                .into());
            }
        } else if self.store.get_tenant(&key.tenant_id).await?.is_none() {
            return Err(ApiError::NotFound {
                resource: format!("tenants/{}", key.tenant_id),
            }
            .into());
        }
        let requested = request
            .api_key
            .as_ref()
            .map(|key| key.scopes.as_slice())
            .unwrap_or_default();
        self.require_scopes_held(&caller, &key, requested).await?;
        let makers_expiry = self
            .require_callers_key_may_make(&caller, &request, &key)
            .await?;

        let minted = api_keys::mint();
        key.id = minted.id;
        key.secret_hash = minted.secret_hash;
        let resource = key.name();
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        self.store
            .ensure_within_limit(&mut tx, &key.tenant_id, "api_keys")
            .await?;
        // The calling key was let in live; share-locked until this commits, it stays so, and
        // revoking it waits for the new key and then revokes that too. A key revoked since the
        // call was let in makes none.
        if key.created_with.is_some() {
            let principal = caller.principal();
            let live = self
                .store
                .share_lock_live_api_key(
                    &mut tx,
                    &caller.context.tenant_id,
                    &principal.id,
                    now_micros(),
                )
                .await?;
            if !live {
                return Err(ApiError::Unauthenticated {
                    reason: "INVALID_API_KEY",
                    message: "the api key this call was made with was revoked or has expired"
                        .to_owned(),
                }
                .into());
            }
        }
        // Stamped now that the limit's count holds the tenant's row, not when the request was
        // read: keys list by (create time, id), and a key stamped before a later-stamped one
        // commits would appear behind a page already read. A `ttl` counts from the stamp.
        let waited = now_micros().saturating_sub(key.create_time).max(0);
        key.create_time += waited;
        if request.ttl.is_some() {
            key.expire_time = key.expire_time.saturating_add(waited);
        }
        // Still no later than the key it was made with, however long the call waited: else
        // each generation of keys could gain the wait on its maker, and outlive the chain's root.
        if let Some(makers_expiry) = makers_expiry {
            key.expire_time = key.expire_time.min(makers_expiry);
        }
        self.store.insert_api_key(&mut tx, &key).await?;
        let attributes = vec![
            ("owner", key.owner_name()),
            ("scopes", key.scopes.join(" ")),
            // RFC 3339, as every time the API shows.
            ("expire_time", timestamp(key.expire_time).to_string()),
        ];
        let audit = self.audit(
            &caller,
            &key,
            &resource,
            "identity.apikeys.create",
            attributes,
        );
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(tenant = %key.tenant_id, key = %resource, owner = %key.owner_name(), "api key created");
        Ok(Response::new(CreateApiKeyResponse {
            api_key: Some(to_proto(key, now_micros())),
            key: minted.presented,
        }))
    }

    async fn get_api_key(
        &self,
        request: Request<GetApiKeyRequest>,
    ) -> Result<Response<ApiKey>, Status> {
        let caller = Caller::of(&request)?;
        let name = &request.get_ref().name;
        let (tenant, id) = api_keys::parse_name(name)?;
        // Another tenant's keys are not revealed: they are simply not found.
        let not_found = || ApiError::NotFound {
            resource: name.clone(),
        };
        if !caller.context.may_access(&tenant) {
            return Err(not_found().into());
        }
        let key = self
            .store
            .get_tenant_api_key(&tenant, &id)
            .await?
            .ok_or_else(not_found)?;
        Ok(Response::new(to_proto(key, now_micros())))
    }

    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let tenant = users::parse_parent(&request.parent)
            .map_err(|violation| ApiError::InvalidArgument(vec![violation]))?;
        require_listed_tenant(&self.store, &caller, &tenant).await?;
        let page_size = aip::page_size(request.page_size)?;
        let query = aip::ListQuery {
            collection: "apiKeys",
            parent: &request.parent,
            filter: &request.filter,
        };
        let after = aip::decode_page_token(&request.page_token, &query)?
            .map(|cursor| CreatedCursor::decode(&cursor))
            .transpose()?;
        let filters = parse_filters(&request.filter, &tenant)?;
        let now = now_micros();
        let mut records = self
            .store
            .list_api_keys(&tenant, after.as_ref(), &filters, now, page_size + 1)
            .await?;
        let next_page_token = aip::finish_page(&mut records, page_size, &query, |last| {
            CreatedCursor {
                create_time: last.create_time,
                id: last.id.clone(),
            }
            .encode()
        });
        Ok(Response::new(ListApiKeysResponse {
            api_keys: records.into_iter().map(|key| to_proto(key, now)).collect(),
            next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<ApiKey>, Status> {
        let caller = Caller::of(&request)?;
        let name = &request.get_ref().name;
        let (tenant, id) = api_keys::parse_name(name)?;
        let not_found = || ApiError::NotFound {
            resource: name.clone(),
        };
        if !caller.context.may_access(&tenant) {
            return Err(not_found().into());
        }
        let key = self
            .store
            .get_tenant_api_key(&tenant, &id)
            .await?
            .ok_or_else(not_found)?;
        self.require_may_revoke(&caller, &key).await?;
        let keep_calling_key = request.get_ref().keep_calling_key;
        let spared = (self.spared_by_revoking(&caller, &key, keep_calling_key)).await?;
        let now = now_micros();
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        // Locked whether revoked already or not, so two revocations of one key (each walking
        // its keys) take their turns rather than meet halfway down.
        self.store.lock_api_key(&mut tx, &tenant, &id).await?;
        let revoked = self
            .store
            .revoke_api_key(&mut tx, &tenant, &id, now)
            .await?;
        // The spared keys are share-locked from the top down, after the key revoked, as a
        // revocation's cascade locks keys (from the maker down), and the calling key, last,
        // must be live: it keeps itself only while it is (revoked meanwhile, it spares
        // nothing, as CreateApiKey refuses a key revoked meanwhile).
        for spared_key in spared.iter().rev() {
            let live = (self.store)
                .share_lock_live_api_key(&mut tx, &spared_key.tenant_id, &spared_key.id, now)
                .await?;
            if !live && spared_key.id == caller.principal().id {
                return Err(ApiError::Unauthenticated {
                    reason: "INVALID_API_KEY",
                    message: "the api key this call was made with was revoked or has expired"
                        .to_owned(),
                }
                .into());
            }
        }
        // Even when the key was revoked already: a restore may have brought back a live key
        // it made (its maker revoked since the export), and revoking it again catches that.
        let resource = key.name();
        let calling = caller.principal();
        let calling_key = (calling.kind == PrincipalKind::ApiKey).then_some(calling.id.as_str());
        let made_with_it = self
            .store
            .revoke_keys_created_with(&mut tx, &resource, now, &spared, calling_key)
            .await?;
        // Made (down a chain) with the key it revokes, the calling key would revoke itself
        // with it: refused, and nothing is revoked (the transaction is dropped). Retiring the
        // key it was made with takes `keep_calling_key`.
        if made_with_it
            .iter()
            .any(|made| Some(made.id.as_str()) == calling_key)
        {
            return Err(ApiError::FailedPrecondition {
                reason: "WOULD_REVOKE_CALLER",
                message: format!(
                    "the key making this call was created with {resource} (or with a key \
                     created with it), so revoking it would revoke this key too; to retire \
                     {resource} and keep this key, set keep_calling_key"
                ),
            }
            .into());
        }
        for made in &made_with_it {
            let name = made.name();
            let revoked_with = vec![("revoked_with", resource.clone())];
            let audit = self.audit(
                &caller,
                made,
                &name,
                "identity.apikeys.revoke",
                revoked_with,
            );
            palisade_audit::enqueue(&mut tx, &audit)
                .await
                .map_err(ApiError::from)?;
        }
        // Only the call that actually revokes the key is audited for it; a repeat changes
        // nothing about it.
        if revoked {
            let kept = spared
                .first()
                .map(|calling| ("kept_calling_key", calling.name()));
            let audit = self.audit(
                &caller,
                &key,
                &resource,
                "identity.apikeys.revoke",
                kept.into_iter().collect(),
            );
            palisade_audit::commit_with(tx, &audit, &self.relay)
                .await
                .map_err(ApiError::from)?;
        } else {
            tx.commit().await.map_err(ApiError::from)?;
            self.relay.notify();
        }
        if revoked || !made_with_it.is_empty() {
            tracing::info!(
                tenant = %tenant,
                key = %resource,
                keys_made_with_it = made_with_it.len(),
                "api key revoked"
            );
        }
        let key = self
            .store
            .get_tenant_api_key(&tenant, &id)
            .await?
            .ok_or_else(not_found)?;
        Ok(Response::new(to_proto(key, now)))
    }
}

fn to_proto(key: ApiKeyRecord, now: i64) -> ApiKey {
    ApiKey {
        name: key.name(),
        owner: key.owner_name(),
        state: key.state(now) as i32,
        display_name: key.display_name,
        scopes: key.scopes,
        create_time: Some(timestamp(key.create_time)),
        expire_time: Some(timestamp(key.expire_time)),
        revoke_time: key.revoke_time.map(timestamp),
        last_use_time: key.last_use_time.map(timestamp),
        created_with: key.created_with.unwrap_or_default(),
    }
}

fn parse_filters(filter: &str, tenant: &TenantId) -> Result<Vec<ApiKeyFilter>, ApiError> {
    aip::parse_filter(filter, FILTER_FIELDS)?
        .into_iter()
        .map(|term| match term.field {
            "state" => match ApiKeyState::from_str_name(&term.value) {
                Some(state) if state != ApiKeyState::Unspecified => {
                    Ok(ApiKeyFilter::State(term.comparison, state))
                }
                _ => Err(ApiError::invalid(
                    "filter",
                    format!("unknown state {:?}", palisade_grpc::echoed(&term.value)),
                )),
            },
            // The key the listed keys were made with, of any tenant: an operator's keys make
            // keys in every tenant.
            "created_with" => match api_keys::split_name(&term.value) {
                Some(_) => Ok(ApiKeyFilter::CreatedWith(term.comparison, term.value)),
                None => Err(ApiError::invalid(
                    "filter",
                    "created_with must be `tenants/{tenant_id}/apiKeys/{key_id}`",
                )),
            },
            _ => match api_keys::parse_owner(&term.value, tenant) {
                Some(owner) => Ok(ApiKeyFilter::Owner(term.comparison, owner)),
                None => Err(ApiError::invalid(
                    "filter",
                    format!(
                        "owner must be `tenants/{tenant}` or `tenants/{tenant}/users/{{user_id}}`"
                    ),
                )),
            },
        })
        .collect()
}
