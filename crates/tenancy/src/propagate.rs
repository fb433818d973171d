//! The client side: calls made while handling a request carry the same context.
//!
//! The server layer runs each request inside a task-local scope; this layer reads it when a
//! client sends, so handlers never thread context through by hand. Work spawned onto other
//! tasks leaves the scope on purpose: it must say explicitly whom it acts for.

use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::{
    ClientOrigin, HEADER_CLIENT_IP, HEADER_CLIENT_USER_AGENT, HEADER_REQUEST_ID, HEADER_TENANT_ID,
    RequestId, TenantContext,
    metadata::{write_context, write_origin, write_request_id},
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

/// `None` when this task is not handling a request; `Some(context)` when it is, with the
/// request's tenant context if it asserted one (public and mesh-internal calls may not).
pub fn current_call() -> Option<Option<TenantContext>> {
    CURRENT.try_with(|scope| scope.context.clone()).ok()
}

/// Runs `work` as part of handling a call for `context`: what it stores is scoped to that
/// tenant, and calls it makes carry the context. For work spawned off a request (a stream's
/// producer task) or done on a tenant's behalf later, which would otherwise act for no one.
/// (A row-level scope declared around it with `palisade_db::in_scope` holds for all of it.)
pub async fn with_context<F: std::future::Future>(
    context: Option<TenantContext>,
    request_id: RequestId,
    work: F,
) -> F::Output {
    let scope = CallScope {
        context,
        request_id,
        origin: current_origin().unwrap_or_default(),
    };
    CURRENT.scope(scope, work).await
}

/// `work`, to run on another task as part of the call being handled on this one: it keeps
/// the call's context, request id and origin (taken now, as `with_context` cannot: it reads
/// the origin on the task that runs it). As it is when no call is being handled. A row-level
/// scope declared with `palisade_db::in_scope` is not carried: the other task states its own.
pub fn in_this_call<F: std::future::Future>(
    work: F,
) -> impl std::future::Future<Output = F::Output> {
    let scope = CURRENT.try_with(CallScope::clone).ok();
    async move {
        match scope {
            Some(scope) => CURRENT.scope(scope, work).await,
            None => work.await,
        }
    }
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

/// A client transport that writes the current context into outgoing metadata. A caller that
/// set a tenant explicitly keeps its context; the request id and client origin still follow.
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
        let headers = request.headers_mut();
        let _ = CURRENT.try_with(|scope| {
            if !headers.contains_key(HEADER_TENANT_ID) {
                write_context(headers, scope.context.as_ref(), Some(&scope.request_id));
                write_origin(headers, &scope.origin);
                return;
            }
            // The caller stated the tenant context itself; the call it makes is still part of
            // this request (its id ties the logs together, its origin goes into audit
            // events), unless the caller set those too.
            if !headers.contains_key(HEADER_REQUEST_ID) {
                write_request_id(headers, &scope.request_id);
            }
            if !headers.contains_key(HEADER_CLIENT_IP)
                && !headers.contains_key(HEADER_CLIENT_USER_AGENT)
            {
                write_origin(headers, &scope.origin);
            }
        });
        self.inner.call(request)
    }
}
