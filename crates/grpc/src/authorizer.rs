//! Who decides whether a principal holds a permission: identity locally, every other
//! component through `AuthorizationService.Check` with a short-lived cache.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use palisade_proto::palisade::{
    common::v1::{Principal as WirePrincipal, PrincipalType},
    identity::v1::{CheckRequest, authorization_service_client::AuthorizationServiceClient},
};
use palisade_tenancy::{PrincipalKind, TenantContext};
use tonic::Status;

use crate::{ApiError, MeshChannel};

/// The answer to a permission check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
    /// For a refusal that is not about the permission itself, the stable `ErrorInfo.reason`
    /// the caller's error carries, e.g. `TENANT_SUSPENDED`.
    pub refusal: Option<String>,
}

/// Decides permission checks for the policy layer.
pub trait Authorizer: Send + Sync + 'static {
    /// Whether the context's principal holds `permission`. Errors are failures to decide
    /// (identity unreachable), which the caller turns into `UNAVAILABLE`, never into "allowed".
    fn check(
        &self,
        context: &TenantContext,
        permission: &str,
    ) -> BoxFuture<'static, Result<Decision, Status>>;
}

type CacheKey = (TenantContext, String);

/// Asks identity over mTLS and remembers answers for `ttl`, so a hot path pays one round trip
/// per principal and permission per TTL. A revoked grant therefore takes up to `ttl` to bite.
#[derive(Clone)]
pub struct RemoteAuthorizer {
    client: AuthorizationServiceClient<MeshChannel>,
    cache: Arc<Mutex<HashMap<CacheKey, (Decision, Instant)>>>,
    ttl: Duration,
}

/// A permission check that takes longer fails the call with `UNAVAILABLE` instead of hanging it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Bounds memory under a flood of distinct principals; the cache is simply emptied when full.
const MAX_CACHED: usize = 10_000;

impl RemoteAuthorizer {
    pub fn new(identity: MeshChannel, ttl: Duration) -> RemoteAuthorizer {
        RemoteAuthorizer {
            client: AuthorizationServiceClient::new(identity),
            cache: Arc::default(),
            ttl,
        }
    }

    fn cached(&self, key: &CacheKey) -> Option<Decision> {
        let cache = self.cache.lock().expect("authorizer cache lock");
        cache
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(decision, _)| decision.clone())
    }
}

impl Authorizer for RemoteAuthorizer {
    fn check(
        &self,
        context: &TenantContext,
        permission: &str,
    ) -> BoxFuture<'static, Result<Decision, Status>> {
        let key = (context.clone(), permission.to_owned());
        if let Some(decision) = self.cached(&key) {
            return Box::pin(async move { Ok(decision) });
        }
        let this = self.clone();
        Box::pin(async move {
            let (context, permission) = &key;
            let principal = context.principal.as_ref().map(|p| WirePrincipal {
                tenant_id: context.tenant_id.to_string(),
                id: p.id.clone(),
                r#type: principal_type(p.kind) as i32,
                session_id: p.session_id.clone().unwrap_or_default(),
            });
            let mut request = tonic::Request::new(CheckRequest {
                principal,
                permission: permission.clone(),
                resource: String::new(),
            });
            request.set_timeout(CHECK_TIMEOUT);
            let response = this.client.clone().check(request).await.map_err(|status| {
                tracing::warn!(code = ?status.code(), "permission check failed");
                Status::from(ApiError::Unavailable {
                    message: "permission check unavailable".to_owned(),
                })
            })?;
            let response = response.into_inner();
            let decision = Decision {
                allowed: response.allowed,
                reason: response.reason,
                refusal: (!response.refusal_reason.is_empty()).then_some(response.refusal_reason),
            };
            let mut cache = this.cache.lock().expect("authorizer cache lock");
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(key.clone(), (decision.clone(), Instant::now()));
            Ok(decision)
        })
    }
}

/// The wire enum of a principal kind.
pub fn principal_type(kind: PrincipalKind) -> PrincipalType {
    match kind {
        PrincipalKind::User => PrincipalType::User,
        PrincipalKind::ApiKey => PrincipalType::ApiKey,
        PrincipalKind::Service => PrincipalType::Service,
    }
}
