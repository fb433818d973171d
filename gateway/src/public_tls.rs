//! TLS for the public port, from a PEM certificate chain and key (e.g. a public CA's): ALPN
//! `h2` and `http/1.1` (gRPC and REST/gRPC-Web), no client certificates — callers
//! authenticate with credentials, not with the mesh PKI. Read once at start.

use std::{path::Path, sync::Arc};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use palisade_grpc::BoxError;

/// The rustls server config of the public port.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, BoxError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificates", cert.display()).into());
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("reading {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
