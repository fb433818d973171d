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
/// per principal and permission per TTL. A revoked grant therefore takes up to `ttl` to bite:
/// an answer counts from when identity was asked, and never replaces one asked for later.
#[derive(Clone)]
pub struct RemoteAuthorizer {
    client: AuthorizationServiceClient<MeshChannel>,
    cache: Arc<Mutex<HashMap<CacheKey, (Decision, Instant)>>>,
    ttl: Duration,
}

/// A permission check that takes longer fails the call with `UNAVAILABLE` instead of hanging it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Bounds memory under a flood of distinct principals: when full, expired answers go, and
/// if none has expired the cache is emptied.
const MAX_CACHED: usize = 10_000;

impl RemoteAuthorizer {
    pub fn new(identity: MeshChannel, ttl: Duration) -> RemoteAuthorizer {
        RemoteAuthorizer {
            client: AuthorizationServiceClient::new(identity),
            cache: Arc::default(),
            ttl,
        }
    }

    /// Keeps `decision`, asked of identity at `asked`, unless a later-asked answer is kept
    /// already: concurrent misses race, and a slow answer read before a revocation must not
    /// replace the refusal read after it.
    fn remember(&self, key: CacheKey, decision: &Decision, asked: Instant) {
        let mut cache = self.cache.lock().expect("authorizer cache lock");
        if cache.get(&key).is_some_and(|(_, kept)| *kept > asked) {
            return;
        }
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (decision.clone(), asked));
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
            let asked = Instant::now();
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
            this.remember(key, &decision, asked);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use palisade_proto::palisade::identity::v1::{
        BatchCheckRequest, BatchCheckResponse, CheckResponse,
        authorization_service_server::{AuthorizationService, AuthorizationServiceServer},
    };
    use palisade_tenancy::{Principal, TenantId};
    use tonic::{Request, Response};
    use tower::Layer;

    use super::*;

    /// Identity before and after a revocation: the first check is read while the grant holds
    /// and answered slowly; every later one is refused at once.
    struct RevokedMeanwhile {
        checks: AtomicUsize,
    }

    #[tonic::async_trait]
    impl AuthorizationService for RevokedMeanwhile {
        async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
            let first = self.checks.fetch_add(1, Ordering::SeqCst) == 0;
            if first {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok(Response::new(CheckResponse {
                allowed: first,
                reason: if first { "granted" } else { "revoked" }.into(),
                refusal_reason: String::new(),
            }))
        }

        async fn batch_check(
            &self,
            _: Request<BatchCheckRequest>,
        ) -> Result<Response<BatchCheckResponse>, Status> {
            Err(Status::unimplemented("not here"))
        }
    }

    #[tokio::test]
    async fn a_slow_answer_never_replaces_one_asked_for_later() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let identity = RevokedMeanwhile {
            checks: AtomicUsize::new(0),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AuthorizationServiceServer::new(identity))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_lazy();
        let metrics = palisade_telemetry::ComponentMetrics::new("compliance");
        let channel = crate::ClientObserveLayer::new("compliance", metrics.rpc.client.clone())
            .layer(palisade_tenancy::PropagateContext::new(channel));
        let authorizer = RemoteAuthorizer::new(channel, Duration::from_secs(60));
        let context = TenantContext {
            tenant_id: TenantId::parse("acme").unwrap(),
            principal: Some(Principal::new("ada", PrincipalKind::User)),
        };

        let before = authorizer.check(&context, "compliance.audit.list");
        let before = tokio::spawn(before);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = authorizer.check(&context, "compliance.audit.list").await;
        assert!(!after.unwrap().allowed);
        assert!(before.await.unwrap().unwrap().allowed, "the slow answer");
        let kept = authorizer.cached(&(context, "compliance.audit.list".to_owned()));
        assert_eq!(
            kept.map(|decision| decision.reason),
            Some("revoked".to_owned())
        );
    }
}
