//! A component's rustls configs, built from its PEM files and re-read when they change.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::verify::ComponentVerifier;
use crate::{ALPN_H2, Error, Reloading, Result, SpiffeId, provider, spiffe};

/// How often the watcher polls file mtimes when no interval is given.
const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Where a component's mTLS material lives: the CA bundle it trusts, its own certificate chain
/// (leaf first) and its private key, all PEM.
#[derive(Clone, Debug)]
pub struct CertPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPaths {
    /// The [`crate::pki`] layout: `dir/ca.crt`, `dir/<name>.crt`, `dir/<name>.key`.
    pub fn in_dir(dir: &Path, name: &str) -> CertPaths {
        CertPaths {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

/// A component's mTLS material. Clones share it; a background task re-reads the files when they
/// change and swaps in new configs ([`Reloading`]), which new connections pick up (open ones
/// keep theirs).
#[derive(Clone)]
pub struct MeshTls {
    inner: Arc<Inner>,
}

struct Inner {
    paths: CertPaths,
    material: Reloading<Material>,
}

struct Material {
    identity: SpiffeId,
    not_after: SystemTime,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl MeshTls {
    /// Loads the material and starts watching the files every 2s. Requires a tokio runtime.
    pub async fn load(paths: CertPaths) -> Result<MeshTls> {
        MeshTls::load_with_interval(paths, DEFAULT_RELOAD_INTERVAL).await
    }

    /// Like [`MeshTls::load`], polling file metadata every `interval`.
    ///
    /// A reloaded certificate must name the SPIFFE ID the first one named: the trust policies
    /// and peers' expectations were set from it, so a mixed-up secret (another component's
    /// certificate) is refused and the previous material kept; a new identity needs a restart.
    ///
    /// The watcher holds only a weak reference, so it stops once every clone is dropped.
    pub async fn load_with_interval(paths: CertPaths, interval: Duration) -> Result<MeshTls> {
        let files = vec![paths.ca.clone(), paths.cert.clone(), paths.key.clone()];
        let watched = paths.clone();
        let started_as = std::sync::OnceLock::new();
        let material = Reloading::start("mesh", files, interval, move || {
            let material = Material::load(&watched)?;
            let identity = started_as.get_or_init(|| material.identity.clone());
            if material.identity != *identity {
                return Err(Error::Certificate {
                    path: watched.cert.clone(),
                    reason: format!(
                        "names {}, not {identity}, which this component started as (a new \
                         identity needs a restart)",
                        material.identity
                    ),
                });
            }
            Ok(material)
        })?;
        Ok(MeshTls {
            inner: Arc::new(Inner { paths, material }),
        })
    }

    /// This component's own SPIFFE ID, from its certificate's URI SAN.
    pub fn identity(&self) -> SpiffeId {
        self.inner.material.load().identity.clone()
    }

    /// The current server config: requires a client certificate chained to the mesh CA; ALPN h2.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.inner.material.load().server.clone()
    }

    /// The current client config: trusts only the mesh CA and presents this component's
    /// certificate; ALPN h2.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.inner.material.load().client.clone()
    }

    /// When this component's own certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.inner.material.load().not_after
    }
}

impl fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshTls")
            .field("identity", &self.inner.material.load().identity)
            .field("paths", &self.inner.paths)
            .finish_non_exhaustive()
    }
}

impl Material {
    fn load(paths: &CertPaths) -> Result<Material> {
        let provider = provider();

        let mut roots = RootCertStore::empty();
        for ca in read_certs(&paths.ca)? {
            roots.add(ca)?;
        }
        let roots = Arc::new(roots);
        let chain = read_certs(&paths.cert)?;
        let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(|e| pem_error(&paths.key, e))?;

        let leaf_error = |reason: String| Error::Certificate {
            path: paths.cert.clone(),
            reason,
        };
        let identity = spiffe::from_certificate(&chain[0]).map_err(leaf_error)?;
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
            .map_err(|e| leaf_error(e.to_string()))?;
        let expiry_secs = u64::try_from(leaf.validity().not_after.timestamp()).unwrap_or(0);
        let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(expiry_secs);

        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        // Material that could make no connection is refused, so a reload keeps what works: the
        // leaf must chain to the CA bundle read with it and be valid now. (A CA rotated before
        // the leaves were reissued, or an expired leaf, would fail every handshake both ways.)
        verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map_err(|e| leaf_error(format!("not usable with {}: {e}", paths.ca.display())))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = vec![ALPN_H2.to_vec()];

        // Servers are verified as the component dialled, in this component's trust domain.
        let server_verifier = ComponentVerifier::new(roots, identity.trust_domain())?;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(server_verifier))
            .with_client_auth_cert(chain, key)?;
        client.alpn_protocols = vec![ALPN_H2.to_vec()];

        Ok(Material {
            identity,
            not_after,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(Error::Pem {
            path: path.to_owned(),
            reason: "no certificates".to_owned(),
        });
    }
    Ok(certs)
}

fn pem_error(path: &Path, error: rustls::pki_types::pem::Error) -> Error {
    match error {
        rustls::pki_types::pem::Error::Io(source) => Error::Io {
            path: path.to_owned(),
            source,
        },
        other => Error::Pem {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}
