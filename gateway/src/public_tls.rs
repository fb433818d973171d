//! TLS for the public port, from a PEM certificate chain and key (e.g. a public CA's): ALPN
//! `h2` and `http/1.1` (gRPC and REST/gRPC-Web), no client certificates — callers
//! authenticate with credentials, not with the mesh PKI. Re-read when the files change, like
//! the mesh certificates ([`Reloading`]), so a renewed certificate (cert-manager, certbot)
//! reaches new connections without a restart; open connections keep theirs.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio_rustls::TlsAcceptor;

use palisade_grpc::BoxError;
use palisade_tls::Reloading;

/// How often the certificate files are checked for changes (as for the mesh's).
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The public port's TLS config, current as of the last change of its files.
#[derive(Clone)]
pub struct PublicTls {
    config: Reloading<ServerConfig>,
}

impl PublicTls {
    /// Reads `cert` and `key` now (an unreadable pair stops the start) and watches them.
    /// Requires a tokio runtime.
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<PublicTls, BoxError> {
        let files = vec![cert.clone(), key.clone()];
        let config = Reloading::start("public", files, RELOAD_INTERVAL, move || {
            server_config(&cert, &key)
        })?;
        Ok(PublicTls { config })
    }

    /// An acceptor with the current config, for one new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }
}

/// The rustls server config of the public port.
fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, BoxError> {
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
    Ok(config)
}
