//! Where each method goes: the component owning its proto package, over one reused mTLS
//! channel per component (per connection worker: each has its own set). A component that is
//! down fails calls fast (connection refused is `UNAVAILABLE`) and the channel reconnects by
//! itself when it returns.
//!
//! Proxied calls go over the bare channel: the gateway's `grpc.server` span and server metrics
//! already cover the hop (the proxy passes that span's trace context on itself), so a
//! `grpc.client` span and client metrics per proxied call would only say it twice, at a cost
//! the gateway's added latency shows. The gateway's own calls (API keys, tenants, usage) are
//! observed as any component's.

use palisade_grpc::{MeshAddresses, MeshChannel};
use palisade_telemetry::ComponentMetrics;
use palisade_tls::MeshTls;
use tonic::transport::Channel;

use crate::COMPONENT;

pub struct Backends {
    identity: Channel,
    compliance: Channel,
    observability: Channel,
    /// The identity channel observed, for the gateway's own calls.
    observed_identity: MeshChannel,
}

impl Backends {
    /// Channels (connecting lazily, their tasks spawned on the current runtime) with the
    /// gateway's certificate; the gateway's own calls are observed in `metrics`.
    pub fn connect(
        mesh: &MeshAddresses,
        tls: &MeshTls,
        metrics: &ComponentMetrics,
    ) -> palisade_grpc::Result<Backends> {
        let channel = |uri: &str, component: &str| palisade_tls::channel(uri, tls, component);
        let identity = channel(&mesh.identity, "identity")?;
        Ok(Backends {
            observed_identity: palisade_grpc::observed(identity.clone(), COMPONENT, metrics),
            identity,
            compliance: channel(&mesh.compliance, "compliance")?,
            observability: channel(&mesh.observability, "observability")?,
        })
    }

    /// Identity, for the gateway's own calls.
    pub fn identity(&self) -> MeshChannel {
        self.observed_identity.clone()
    }

    /// The channel proxied calls to a gRPC path `/palisade.<area>.v1.Service/Method` take.
    pub fn for_path(&self, path: &str) -> Option<Channel> {
        let package = path.strip_prefix("/palisade.")?.split('.').next()?;
        match package {
            "identity" => Some(self.identity.clone()),
            "compliance" => Some(self.compliance.clone()),
            "observability" => Some(self.observability.clone()),
            _ => None,
        }
    }
}
