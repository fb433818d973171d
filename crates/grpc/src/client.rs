//! mTLS client channels between components, carrying the current tenant context.

use palisade_tenancy::PropagateContext;
use palisade_tls::MeshTls;
use tonic::transport::Channel;

/// A channel to another component that forwards the tenant context of the request being
/// handled (see `palisade_tenancy::PropagateContext`).
pub type MeshChannel = PropagateContext<Channel>;

/// A lazily connecting mTLS channel to `component` at `uri`, verifying that the server holds
/// that component's certificate.
pub fn mesh_channel(uri: &str, tls: &MeshTls, component: &str) -> crate::Result<MeshChannel> {
    Ok(PropagateContext::new(palisade_tls::channel(
        uri, tls, component,
    )?))
}
