//! Where each method goes: the component owning its proto package, over one reused mTLS
//! channel per component. A component that is down fails calls fast (connection refused is
//! `UNAVAILABLE`) and the channel reconnects by itself when it returns.

use palisade_grpc::MeshAddresses;
use palisade_tls::MeshTls;
use tonic::transport::Channel;

pub struct Backends {
    identity: Channel,
    compliance: Channel,
    observability: Channel,
}

impl Backends {
    pub fn connect(mesh: &MeshAddresses, tls: &MeshTls) -> Result<Backends, palisade_tls::Error> {
        Ok(Backends {
            identity: palisade_tls::channel(&mesh.identity, tls, "identity")?,
            compliance: palisade_tls::channel(&mesh.compliance, tls, "compliance")?,
            observability: palisade_tls::channel(&mesh.observability, tls, "observability")?,
        })
    }

    pub fn identity(&self) -> Channel {
        self.identity.clone()
    }

    /// The channel for a gRPC path `/palisade.<area>.v1.Service/Method`.
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
