//! Which peers may assert a tenant context: the gateway and the mesh components, by SPIFFE id.

use std::collections::BTreeSet;

use palisade_tls::SpiffeId;

/// The SPIFFE ids trusted to send `palisade-*` context metadata.
#[derive(Clone, Debug)]
pub struct TrustPolicy {
    trust_domain: String,
    components: BTreeSet<String>,
}

impl TrustPolicy {
    /// The mesh's own components in `trust_domain`.
    pub fn mesh(trust_domain: &str) -> TrustPolicy {
        TrustPolicy::new(
            trust_domain,
            ["gateway", "identity", "compliance", "observability"],
        )
    }

    pub fn new<'a>(
        trust_domain: &str,
        components: impl IntoIterator<Item = &'a str>,
    ) -> TrustPolicy {
        TrustPolicy {
            trust_domain: trust_domain.to_owned(),
            components: components.into_iter().map(str::to_owned).collect(),
        }
    }

    /// The component name of a trusted peer, or `None`.
    pub fn trusted_component<'a>(&self, peer: &'a SpiffeId) -> Option<&'a str> {
        let name = peer.component_name()?;
        (peer.trust_domain() == self.trust_domain && self.components.contains(name)).then_some(name)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mesh_components_of_our_domain() {
        let trust = TrustPolicy::mesh("palisade.local");
        let gateway = SpiffeId::component("palisade.local", "gateway");
        assert_eq!(trust.trusted_component(&gateway), Some("gateway"));
        assert_eq!(
            trust.trusted_component(&SpiffeId::component("palisade.local", "batch-job")),
            None
        );
        assert_eq!(
            trust.trusted_component(&SpiffeId::component("evil.example", "gateway")),
            None
        );
        assert_eq!(
            trust
                .trusted_component(&SpiffeId::parse("spiffe://palisade.local/workload/x").unwrap()),
            None
        );
    }
}
