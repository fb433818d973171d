//! Dev PKI, rustls configs with certificate reload, SPIFFE peer identity and mTLS transports.
//!
//! Every internal listener of the mesh speaks mTLS with certificates from one mesh CA, and each
//! component is named by a SPIFFE URI SAN (`spiffe://<trust-domain>/component/<name>`):
//!
//! - [`pki`] makes the dev CA and component certificates on disk;
//! - [`MeshTls`] holds a component's rustls configs and re-reads its files when they change
//!   ([`Reloading`], which other certificates a component serves use too);
//! - [`incoming`] turns a TCP listener into mTLS streams for tonic, carrying a [`PeerIdentity`]
//!   into every request's extensions;
//! - [`MeshConnector`] and [`channel`] dial other components over mTLS, verifying the server
//!   as the component dialled by its SPIFFE ID (`verify.rs`).

mod client;
mod coalesce;
mod config;
mod error;
pub mod pki;
mod reload;
mod server;
mod spiffe;
mod verify;

pub use client::{MeshConnector, channel};
pub use coalesce::CoalescedWrites;
pub use config::{CertPaths, MeshTls};
pub use error::{Error, Result};
pub use reload::Reloading;
pub use server::{MeshStream, PeerIdentity, incoming};
pub use spiffe::SpiffeId;

/// Trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "palisade.local";

/// ALPN protocol both sides insist on: tonic speaks only HTTP/2.
pub(crate) const ALPN_H2: &[u8] = b"h2";

/// The one crypto provider of the crate, passed explicitly so that no process-wide default is needed.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
