//! The gRPC plumbing every component shares: the server builder (health, reflection, the
//! tower layers in request order), mTLS client channels, the policy layer that enforces each
//! method's proto option, AIP helpers for paging and filtering, and the one mapping from
//! errors to `tonic::Status` with `google.rpc` details.

pub mod aip;
mod authorizer;
mod caller;
mod client;
mod denial_audit;
mod error;
mod kit;
mod observe;
mod policy;
mod policy_layer;
mod readiness;
mod running;
mod server;
pub mod time;

pub use authorizer::{Authorizer, Decision, RemoteAuthorizer, principal_type};
pub use caller::Caller;
pub use client::{MeshChannel, mesh_channel, observed};
pub use denial_audit::{DenialAuditLayer, DenialAuditService, DenialSink, DeniedCall, note_target};
pub use error::{ApiError, ERROR_DOMAIN, FieldViolation, echoed};
pub use kit::{ComponentKit, Listeners};
pub use observe::{
    ClientObserveLayer, Observe, ServedTenant, ServerObserveLayer, TenantCounter, code_name,
};
pub use policy::{MethodPolicies, MethodPolicy};
pub use policy_layer::{CallerComponent, PolicyLayer, PolicyService};
pub use readiness::watch_readiness;
pub use running::{BoxError, MeshAddresses, Running, ShutdownSignal};
pub use server::{MeshServer, ServingHandle, add_public_reflection, add_reflection};

/// Failures of the plumbing itself (not of a call).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("descriptor set: {0}")]
    Descriptors(String),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("tls: {0}")]
    Tls(#[from] palisade_tls::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
