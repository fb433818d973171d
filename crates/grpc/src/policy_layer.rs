//! The policy layer: enforces each method's proto option before the handler runs.
//!
//! - `public`: passes.
//! - `internal`: only mesh components over mTLS (and only the listed `callers`, if any).
//! - `permission`: needs a principal in the tenant context (`UNAUTHENTICATED` otherwise) that
//!   the [`Authorizer`] allows (`PERMISSION_DENIED` otherwise).
//!
//! Methods outside `palisade.*` (health, reflection) are always reachable.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use palisade_tenancy::{TenantContext, TrustPolicy};
use palisade_tls::PeerIdentity;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use crate::{ApiError, Authorizer, MethodPolicies, MethodPolicy};

/// The calling mesh component of an internal call, inserted into request extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerComponent(pub String);

#[derive(Clone)]
pub struct PolicyLayer {
    policies: Arc<MethodPolicies>,
    authorizer: Arc<dyn Authorizer>,
    trust: Arc<TrustPolicy>,
}

impl PolicyLayer {
    pub fn new(
        policies: Arc<MethodPolicies>,
        authorizer: Arc<dyn Authorizer>,
        trust: TrustPolicy,
    ) -> PolicyLayer {
        PolicyLayer {
            policies,
            authorizer,
            trust: Arc::new(trust),
        }
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = PolicyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PolicyService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct PolicyService<S> {
    inner: S,
    layer: PolicyLayer,
}

impl<S, B> Service<http::Request<B>> for PolicyService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(policy) = self.layer.policies.get(request.uri().path()).cloned() else {
            return Box::pin(inner.call(request));
        };
        let layer = self.layer.clone();
        Box::pin(async move {
            match layer.admit(&mut request, &policy).await {
                Ok(()) => {
                    request.extensions_mut().insert(policy);
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

impl PolicyLayer {
    async fn admit<B>(
        &self,
        request: &mut http::Request<B>,
        policy: &MethodPolicy,
    ) -> Result<(), Status> {
        if policy.public {
            return Ok(());
        }
        if policy.internal {
            let caller = self.internal_caller(request, policy)?;
            request.extensions_mut().insert(CallerComponent(caller));
            return Ok(());
        }
        let permission = policy
            .permission
            .as_deref()
            .expect("non-public methods have a permission");
        let context = request
            .extensions()
            .get::<TenantContext>()
            .filter(|context| context.principal.is_some())
            .ok_or_else(|| ApiError::Unauthenticated {
                reason: "UNAUTHENTICATED",
                message: "this method needs an authenticated principal".to_owned(),
            })?;
        if policy.platform_only && !context.is_platform_operator() {
            return Err(ApiError::PermissionDenied {
                reason: "PLATFORM_OPERATOR_ONLY",
                message: format!(
                    "{} is for platform operators of the system tenant only",
                    policy.path
                ),
            }
            .into());
        }
        let decision = self.authorizer.check(context, permission).await?;
        if decision.allowed {
            return Ok(());
        }
        // Only reasons the mesh defines pass on; anything else reads as a missing permission.
        let reason = match decision.refusal.as_deref() {
            // Not a missing right: the credential is dead, and the client must sign in again.
            Some("SESSION_REVOKED") => {
                return Err(ApiError::Unauthenticated {
                    reason: "SESSION_REVOKED",
                    message: "the sign-in session of this access token has ended; sign in again"
                        .to_owned(),
                }
                .into());
            }
            // The key was revoked or expired (or went with its tenant) after the gateway last
            // verified it; the gateway says the same once its cached answer lapses.
            Some("INVALID_API_KEY") => {
                return Err(ApiError::Unauthenticated {
                    reason: "INVALID_API_KEY",
                    message: format!(
                        "the api key is invalid, expired or revoked ({})",
                        decision.reason
                    ),
                }
                .into());
            }
            Some("TENANT_SUSPENDED") => "TENANT_SUSPENDED",
            Some("TENANT_NOT_ACTIVE") => "TENANT_NOT_ACTIVE",
            Some("PLATFORM_OPERATOR_ONLY") => "PLATFORM_OPERATOR_ONLY",
            _ => "PERMISSION_DENIED",
        };
        Err(ApiError::PermissionDenied {
            reason,
            message: format!("missing permission {permission}: {}", decision.reason),
        }
        .into())
    }

    fn internal_caller<B>(
        &self,
        request: &http::Request<B>,
        policy: &MethodPolicy,
    ) -> Result<String, Status> {
        let peer = request
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|peer| peer.spiffe_id.as_ref());
        let component = peer.and_then(|peer| self.trust.trusted_component(peer));
        match component {
            Some(name) if policy.callers.is_empty() || policy.callers.iter().any(|c| c == name) => {
                Ok(name.to_owned())
            }
            _ => Err(ApiError::PermissionDenied {
                reason: "INTERNAL_METHOD",
                message: format!(
                    "{} is internal to the mesh and not open to this caller",
                    policy.path
                ),
            }
            .into()),
        }
    }
}
