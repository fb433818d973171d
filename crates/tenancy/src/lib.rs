//! Tenant context: who is calling, for which tenant, under which request id — carried in gRPC
//! metadata between components, accepted only from trusted mesh peers, and propagated on every
//! outgoing call made while handling a request.

mod context;
mod metadata;
mod propagate;
mod server;
mod trust;

pub use context::{
    ClientOrigin, Principal, PrincipalKind, RequestId, SYSTEM_TENANT, TenantContext, TenantId,
};
pub use metadata::{
    HEADER_CLIENT_IP, HEADER_CLIENT_USER_AGENT, HEADER_PRINCIPAL_ID, HEADER_PRINCIPAL_TYPE,
    HEADER_REQUEST_ID, HEADER_SESSION_ID, HEADER_TENANT_ID, strip_client_context, write_context,
    write_origin,
};
pub use propagate::{
    PropagateContext, PropagateContextLayer, current_call, current_context, current_origin,
    current_request_id, in_this_call, with_context,
};
pub use server::{TenantContextLayer, TenantContextService};
pub use trust::TrustPolicy;

/// Why context metadata could not be accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid tenant id {0:?}")]
    InvalidTenantId(String),
    #[error("invalid principal type {0:?}")]
    InvalidPrincipalType(String),
    #[error("metadata {0} is not valid ascii")]
    NotAscii(&'static str),
    #[error("{0} is required with {1}")]
    Incomplete(&'static str, &'static str),
    #[error("invalid session id {0:?}")]
    InvalidSessionId(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
