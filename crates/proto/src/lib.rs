//! The Palisade API as Rust types: prost messages and tonic stubs for every package under
//! `proto/`, plus the encoded descriptor set used for reflection, policy lookup and transcoding.

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

#[allow(clippy::all, missing_docs, rust_2018_idioms)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/palisade_includes.rs"));
}

pub use generated::{google, palisade};

/// The encoded `FileDescriptorSet` of the whole API, imports and source info included, with
/// custom options (method policy, HTTP rules) preserved.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/palisade_descriptor.bin"));

/// The API's descriptors, decoded once.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
        DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("descriptor set built by build.rs decodes")
    });
    &POOL
}

/// The fully-qualified names of the mesh's own gRPC services (`palisade.*`).
pub fn palisade_services() -> impl Iterator<Item = prost_reflect::ServiceDescriptor> {
    descriptor_pool()
        .services()
        .filter(|service| service.full_name().starts_with("palisade."))
}
