//! Where each method goes: the component owning its proto package, over one reused mTLS
//! channel per component. A component that is down fails calls fast (connection refused is
//! `UNAVAILABLE`) and the channel reconnects by itself when it returns.

use palisade_grpc::{ComponentKit, MeshAddresses, MeshChannel};

pub struct Backends {
    identity: MeshChannel,
    compliance: MeshChannel,
    observability: MeshChannel,
}

impl Backends {
    pub fn connect(mesh: &MeshAddresses, kit: &ComponentKit) -> palisade_grpc::Result<Backends> {
        Ok(Backends {
            identity: kit.channel(&mesh.identity, "identity")?,
            compliance: kit.channel(&mesh.compliance, "compliance")?,
            observability: kit.channel(&mesh.observability, "observability")?,
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
