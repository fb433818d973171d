//! mTLS client channels between components, carrying the current tenant context and trace.

use palisade_telemetry::ComponentMetrics;
use palisade_tenancy::PropagateContext;
use palisade_tls::MeshTls;
use tonic::transport::Channel;
use tower_layer::Layer;

use crate::{ClientObserveLayer, Observe};

/// A channel to another component: observed (a `grpc.client` span, client metrics,
/// `traceparent`) and forwarding the tenant context of the request being handled.
pub type MeshChannel = Observe<PropagateContext<Channel>>;

/// A lazily connecting mTLS channel from `from` to `component` at `uri`, verifying that the
/// server holds that component's certificate.
pub fn mesh_channel(
    uri: &str,
    tls: &MeshTls,
    component: &str,
    from: &'static str,
    metrics: &ComponentMetrics,
) -> crate::Result<MeshChannel> {
    Ok(observed(
        palisade_tls::channel(uri, tls, component)?,
        from,
        metrics,
    ))
}

/// `channel` as a mesh channel: its calls made from `from` are observed in `metrics`.
pub fn observed(channel: Channel, from: &'static str, metrics: &ComponentMetrics) -> MeshChannel {
    ClientObserveLayer::new(from, metrics.rpc.client.clone()).layer(PropagateContext::new(channel))
}
