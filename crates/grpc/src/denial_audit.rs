//! Refused attempts at audited calls are audited too. A principal that tries a mutation it may
//! not make (a missing permission, another tenant's resource, a role above its own) is a
//! security event its tenant's auditors should see, not only a status its client got. This
//! layer sits outside the policy layer and the handlers, so it sees every refusal either
//! makes: when a call to a method with an audit level, by a principal, ends `PERMISSION_DENIED`
//! or `UNAUTHENTICATED`, or `RESOURCE_EXHAUSTED` (a plan's limit reached: capacity and abuse
//! show there too), the component's [`DenialSink`] records it (outcome `DENIED`). The
//! sink decides what it records, and how: a handler that audits its own refusals (a wrong
//! current password) is skipped there by reason, and identity's writes in the background so
//! a refusal never waits for its record. A handler names the resource the call acts on with
//! [`note_target`] (identity does as it parses a user, role or key name), so that a refusal
//! says whom it protected, not only which tenant.

use std::{
    cell::RefCell,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use palisade_tenancy::{RequestId, TenantContext};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use tower::{Layer, Service};

use crate::{MethodPolicies, MethodPolicy, policy::AuditLevel};

tokio::task_local! {
    /// The resource an audited call acts on, once its handler has named it.
    static TARGET: RefCell<Option<String>>;
}

/// Names the resource the current call acts on (e.g. `tenants/acme/users/…`), for the record
/// of its refusal. Does nothing outside an audited call.
pub fn note_target(resource: &str) {
    let _ = TARGET.try_with(|target| *target.borrow_mut() = Some(resource.to_owned()));
}

/// A refused call to an audited method.
#[derive(Clone, Debug)]
pub struct DeniedCall {
    /// The caller's tenant and principal.
    pub context: TenantContext,
    pub policy: MethodPolicy,
    pub request_id: Option<RequestId>,
    /// The refusal's `ErrorInfo.reason`, e.g. `PERMISSION_DENIED` or `ROLE_ESCALATION`.
    pub reason: String,
    pub message: String,
    /// The resource the call acted on, if its handler named one ([`note_target`]).
    pub target: Option<String>,
}

/// Where a component records refused calls (its audit outbox). Called on the refusal's way
/// out, so it must not wait: a sink that writes does so on a task of its own.
pub trait DenialSink: Send + Sync + 'static {
    fn record(&self, denied: DeniedCall);
}

#[derive(Clone)]
pub struct DenialAuditLayer {
    policies: Arc<MethodPolicies>,
    sink: Arc<dyn DenialSink>,
}

impl DenialAuditLayer {
    pub fn new(policies: Arc<MethodPolicies>, sink: Arc<dyn DenialSink>) -> DenialAuditLayer {
        DenialAuditLayer { policies, sink }
    }
}

impl<S> Layer<S> for DenialAuditLayer {
    type Service = DenialAuditService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DenialAuditService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct DenialAuditService<S> {
    inner: S,
    layer: DenialAuditLayer,
}

impl<S, B> Service<http::Request<B>> for DenialAuditService<S>
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

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let audited = (self.layer.policies.get(request.uri().path()))
            .filter(|policy| !policy.public && !policy.internal)
            .filter(|policy| matches!(policy.audit, AuditLevel::Metadata | AuditLevel::Payload));
        let context = request
            .extensions()
            .get::<TenantContext>()
            .filter(|context| context.principal.is_some());
        let (Some(policy), Some(context)) = (audited, context) else {
            return Box::pin(inner.call(request));
        };
        let (policy, context) = (policy.clone(), context.clone());
        let request_id = request.extensions().get::<RequestId>().cloned();
        let sink = self.layer.sink.clone();
        Box::pin(TARGET.scope(RefCell::new(None), async move {
            let response = inner.call(request).await?;
            // A refusal is a trailers-only response: its status is in the headers.
            let refused = Status::from_header_map(response.headers()).filter(|status| {
                matches!(
                    status.code(),
                    Code::PermissionDenied | Code::Unauthenticated | Code::ResourceExhausted
                )
            });
            if let Some(status) = refused {
                let reason = (status.get_error_details().error_info())
                    .map(|info| info.reason.clone())
                    .unwrap_or_default();
                let denied = DeniedCall {
                    context,
                    policy,
                    request_id,
                    reason,
                    message: status.message().to_owned(),
                    target: TARGET.with(|target| target.borrow_mut().take()),
                };
                sink.record(denied);
            }
            Ok(response)
        }))
    }
}
