//! Where each method goes: the component owning its proto package, over one reused mTLS
//! channel per component (per connection worker: each has its own set). A component that is down fails calls fast (connection refused is
//! `UNAVAILABLE`) and the channel reconnects by itself when it returns.

use palisade_grpc::{MeshAddresses, MeshChannel, mesh_channel};
use palisade_telemetry::ComponentMetrics;
use palisade_tls::MeshTls;

use crate::COMPONENT;

pub struct Backends {
    identity: MeshChannel,
    compliance: MeshChannel,
    observability: MeshChannel,
}

impl Backends {
    /// Channels (connecting lazily, their tasks spawned on the current runtime) with the
    /// gateway's certificate, observed in `metrics`.
    pub fn connect(
        mesh: &MeshAddresses,
        tls: &MeshTls,
        metrics: &ComponentMetrics,
    ) -> palisade_grpc::Result<Backends> {
        let channel =
            |uri: &str, component: &str| mesh_channel(uri, tls, component, COMPONENT, metrics);
        Ok(Backends {
            identity: channel(&mesh.identity, "identity")?,
            compliance: channel(&mesh.compliance, "compliance")?,
            observability: channel(&mesh.observability, "observability")?,
        })
    }

    pub fn identity(&self) -> MeshChannel {
        self.identity.clone()
    }

    /// The channel for a gRPC path `/palisade.<area>.v1.Service/Method`.
    pub fn for_path(&self, path: &str) -> Option<MeshChannel> {
        let package = path.strip_prefix("/palisade.")?.split('.').next()?;
        match package {
            "identity" => Some(self.identity.clone()),
            "compliance" => Some(self.compliance.clone()),
            "observability" => Some(self.observability.clone()),
            _ => None,
        }
    }
}
