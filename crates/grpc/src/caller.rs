//! What a handler knows about the call it serves, gathered from request extensions that the
//! layers put there: the tenant context, the request id and the method's policy.

use palisade_tenancy::{Principal, RequestId, TenantContext};

use crate::{ApiError, MethodPolicy};

/// The authenticated caller of a permission-checked method.
#[derive(Clone, Debug)]
pub struct Caller {
    pub context: TenantContext,
    pub request_id: Option<RequestId>,
    pub policy: Option<MethodPolicy>,
}

impl Caller {
    /// The caller of `request`; `UNAUTHENTICATED` when no principal asserted a context (the
    /// policy layer has already refused such calls to non-public methods).
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Caller, ApiError> {
        let extensions = request.extensions();
        let context = extensions
            .get::<TenantContext>()
            .filter(|context| context.principal.is_some())
            .cloned()
            .ok_or_else(|| ApiError::Unauthenticated {
                reason: "UNAUTHENTICATED",
                message: "this method needs an authenticated principal".to_owned(),
            })?;
        Ok(Caller {
            context,
            request_id: extensions.get::<RequestId>().cloned(),
            policy: extensions.get::<MethodPolicy>().cloned(),
        })
    }

    pub fn principal(&self) -> &Principal {
        self.context
            .principal
            .as_ref()
            .expect("callers have a principal")
    }

    /// The action an audit event records for this call.
    pub fn action<'a>(&'a self, fallback: &'a str) -> &'a str {
        self.policy.as_ref().map_or(fallback, MethodPolicy::action)
    }
}
