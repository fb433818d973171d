//! The client side: calls made while handling a request carry the same context.
//!
//! The server layer runs each request inside a task-local scope; this layer reads it when a
//! client sends, so handlers never thread context through by hand. Work spawned onto other
//! tasks leaves the scope on purpose: it must say explicitly whom it acts for.

use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::{
    ClientOrigin, HEADER_TENANT_ID, RequestId, TenantContext,
    metadata::{write_context, write_origin},
};

#[derive(Clone, Debug)]
pub(crate) struct CallScope {
    pub(crate) context: Option<TenantContext>,
    pub(crate) request_id: RequestId,
    pub(crate) origin: ClientOrigin,
}

tokio::task_local! {
    pub(crate) static CURRENT: CallScope;
}

/// The tenant context of the request being handled on this task, if any.
pub fn current_context() -> Option<TenantContext> {
    CURRENT
        .try_with(|scope| scope.context.clone())
        .ok()
        .flatten()
}

/// Where the external call being handled on this task came from, when the gateway said.
pub fn current_origin() -> Option<ClientOrigin> {
    CURRENT
        .try_with(|scope| scope.origin.clone())
        .ok()
        .filter(|origin| !origin.is_empty())
}

/// The request id of the request being handled on this task, if any.
pub fn current_request_id() -> Option<RequestId> {
    CURRENT.try_with(|scope| scope.request_id.clone()).ok()
}

/// Wraps a client transport so outgoing calls carry the current context.
#[derive(Clone, Copy, Debug, Default)]
pub struct PropagateContextLayer;

impl<S> Layer<S> for PropagateContextLayer {
    type Service = PropagateContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateContext { inner }
    }
}

/// A client transport that writes the current context into outgoing metadata, unless the
/// caller set a tenant explicitly.
#[derive(Clone, Debug)]
pub struct PropagateContext<S> {
    inner: S,
}

impl<S> PropagateContext<S> {
    pub fn new(inner: S) -> PropagateContext<S> {
        PropagateContext { inner }
    }
}

impl<S, B> Service<http::Request<B>> for PropagateContext<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if !request.headers().contains_key(HEADER_TENANT_ID) {
            let _ = CURRENT.try_with(|scope| {
                write_context(
                    request.headers_mut(),
                    scope.context.as_ref(),
                    Some(&scope.request_id),
                );
                write_origin(request.headers_mut(), &scope.origin);
            });
        }
        self.inner.call(request)
    }
}
