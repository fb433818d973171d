//! The `palisade` binary's library half: running the whole mesh in one process
//! ([`LocalMesh`], used by `palisade dev` and by the test sandbox) and the component table.

mod mesh;
pub mod operator_key;

pub use mesh::{
    COMPONENTS, Component, ComponentSettings, DatabaseChoice, LocalMesh, MeshOptions, Ports,
    start_component,
};

pub use palisade_gateway::{IpBlock, PublicCallRate};
/// Re-exported so tests and embedders configure lockout without depending on identity.
pub use palisade_identity::LockoutPolicy;
