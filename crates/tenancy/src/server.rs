//! The server layer: accepts context metadata only from trusted peers and puts the typed
//! context into request extensions (and the task-local scope that client calls read).

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use palisade_tls::PeerIdentity;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    RequestId, TrustPolicy,
    metadata::{asserts_context, read_context, read_origin, read_request_id},
    propagate::{CURRENT, CallScope},
};

/// Builds [`TenantContextService`]s sharing one trust policy.
#[derive(Clone, Debug)]
pub struct TenantContextLayer {
    trust: Arc<TrustPolicy>,
}

impl TenantContextLayer {
    pub fn new(trust: TrustPolicy) -> TenantContextLayer {
        TenantContextLayer {
            trust: Arc::new(trust),
        }
    }
}

impl<S> Layer<S> for TenantContextLayer {
    type Service = TenantContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantContextService {
            inner,
            trust: self.trust.clone(),
        }
    }
}

/// Rejects context from untrusted peers (`PERMISSION_DENIED`) and malformed context
/// (`INVALID_ARGUMENT`); otherwise inserts `TenantContext` (if asserted) and `RequestId`.
#[derive(Clone, Debug)]
pub struct TenantContextService<S> {
    inner: S,
    trust: Arc<TrustPolicy>,
}

impl<S, B> Service<http::Request<B>> for TenantContextService<S>
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
        let context = match self.accept_context(&request) {
            Ok(context) => context,
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
        };
        // Only a trusted peer got this far with `palisade-*` keys (accept_context refused the rest).
        let origin = read_origin(request.headers());
        let request_id = read_request_id(request.headers()).unwrap_or_else(RequestId::generate);
        // The observe layer's server span is current here: label it with who is asking.
        let span = tracing::Span::current();
        span.record("request_id", request_id.0.as_str());
        if let Some(context) = &context {
            span.record("palisade.tenant_id", context.tenant_id.as_str());
            request.extensions_mut().insert(context.clone());
        }
        request.extensions_mut().insert(request_id.clone());

        // The clone that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let scope = CallScope {
            context,
            request_id,
            origin,
        };
        Box::pin(CURRENT.scope(scope, async move { inner.call(request).await }))
    }
}

impl<S> TenantContextService<S> {
    fn accept_context<B>(
        &self,
        request: &http::Request<B>,
    ) -> Result<Option<crate::TenantContext>, tonic::Status> {
        if !asserts_context(request.headers()) {
            return Ok(None);
        }
        let peer = request
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|peer| peer.spiffe_id.as_ref());
        let trusted = peer.is_some_and(|peer| self.trust.trusted_component(peer).is_some());
        if !trusted {
            let who = peer.map_or_else(|| "an unidentified peer".to_owned(), ToString::to_string);
            tracing::warn!(peer = %who, "refused tenant context from untrusted peer");
            return Err(tonic::Status::with_error_details(
                Code::PermissionDenied,
                format!("{who} may not assert tenant context"),
                ErrorDetails::with_error_info("UNTRUSTED_CONTEXT_PEER", "palisade.dev", []),
            ));
        }
        read_context(request.headers()).map_err(|error| {
            tonic::Status::with_error_details(
                Code::InvalidArgument,
                format!("malformed tenant context: {error}"),
                ErrorDetails::with_error_info("MALFORMED_CONTEXT", "palisade.dev", []),
            )
        })
    }
}
