//! mTLS on the wire: a tonic health server behind `incoming`, clients via `channel`.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use palisade_tls::{
    CertPaths, DEFAULT_TRUST_DOMAIN, MeshConnector, MeshTls, PeerIdentity, SpiffeId, channel,
    incoming, pki,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower_service::Service;

/// A running health server and what its interceptor saw.
struct TestServer {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<Option<PeerIdentity>>>>,
    _shutdown: oneshot::Sender<()>,
}

impl TestServer {
    async fn start(tls: MeshTls) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        let record = move |req: tonic::Request<()>| {
            seen.lock()
                .unwrap()
                .push(req.extensions().get::<PeerIdentity>().cloned());
            Ok(req)
        };
        let (reporter, health) = tonic_health::server::health_reporter();
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _reporter = reporter;
            Server::builder()
                .layer(tonic::service::InterceptorLayer::new(record))
                .add_service(health)
                .serve_with_incoming_shutdown(incoming(listener, tls), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        TestServer {
            addr,
            peers,
            _shutdown: shutdown,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn last_peer(&self) -> Option<SpiffeId> {
        self.peers
            .lock()
            .unwrap()
            .last()
            .cloned()
            .flatten()?
            .spiffe_id
    }
}

async fn check(channel: Channel) -> Result<ServingStatus, tonic::Status> {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let response = HealthClient::new(channel).check(request).await?;
    Ok(response.into_inner().status())
}

fn mesh_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    pki::init(dir.path(), DEFAULT_TRUST_DOMAIN, names, &[]).unwrap();
    dir
}

async fn load(dir: &Path, name: &str) -> MeshTls {
    MeshTls::load_with_interval(CertPaths::in_dir(dir, name), Duration::from_millis(100))
        .await
        .unwrap()
}

/// A channel whose TLS is whatever `config` says, to play clients the mesh should refuse.
async fn check_with(
    config: rustls::ClientConfig,
    addr: SocketAddr,
) -> Result<ServingStatus, String> {
    let config = Arc::new(config);
    let connector = tower::service_fn(move |_: http::Uri| {
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("identity").unwrap();
            Ok::<_, io::Error>(TokioIo::new(connector.connect(name, tcp).await?))
        }
    });
    let channel = Endpoint::from_static("http://identity")
        .connect_with_connector(connector)
        .await
        .map_err(|e| e.to_string())?;
    check(channel).await.map_err(|e| e.to_string())
}

fn client_config(
    roots_pem: &Path,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(roots_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
}

#[tokio::test]
async fn mtls_round_trip_carries_the_client_spiffe_id() {
    let dir = mesh_dir(&["identity", "gateway"]);
    let server = TestServer::start(load(dir.path(), "identity").await).await;
    let gateway = load(dir.path(), "gateway").await;

    // A client that connects and never speaks must not hold up the others.
    let _silent = TcpStream::connect(server.addr).await.unwrap();

    let status = check(channel(&server.url(), &gateway, "identity").unwrap()).await;
    assert_eq!(status.unwrap(), ServingStatus::Serving);
    let peer = server.peers.lock().unwrap()[0]
        .clone()
        .expect("peer identity in extensions");
    assert_eq!(
        peer.spiffe_id.unwrap().to_string(),
        "spiffe://palisade.local/component/gateway"
    );
    assert_eq!(peer.remote_addr.unwrap().ip(), server.addr.ip());
}

#[tokio::test]
async fn refuses_clients_without_a_mesh_certificate() {
    let dir = mesh_dir(&["identity"]);
    let server = TestServer::start(load(dir.path(), "identity").await).await;
    let ca = dir.path().join("ca.crt");

    // Trusts the mesh CA but presents no certificate.
    let mut anonymous = client_config(&ca).with_no_client_auth();
    anonymous.alpn_protocols = vec![b"h2".to_vec()];
    let err = check_with(anonymous, server.addr).await.unwrap_err();
    assert!(err.contains("CertificateRequired"), "{err}");

    // Trusts the mesh CA but presents a certificate from another CA. (`MeshTls` refuses to
    // load such material, so the client is put together by hand.)
    let other = mesh_dir(&["gateway"]);
    let foreign = CertPaths::in_dir(other.path(), "gateway");
    let chain = CertificateDer::pem_file_iter(&foreign.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&foreign.key).unwrap();
    let mut foreign = client_config(&ca)
        .with_client_auth_cert(chain, key)
        .unwrap();
    foreign.alpn_protocols = vec![b"h2".to_vec()];
    let status = check_with(foreign, server.addr).await;
    assert!(status.is_err(), "{status:?}");

    // Plaintext HTTP/2.
    let plaintext = Endpoint::from_shared(server.url()).unwrap().connect_lazy();
    let status = check(plaintext).await;
    assert!(status.is_err(), "{status:?}");

    assert!(
        server.peers.lock().unwrap().is_empty(),
        "no call got through"
    );
}

#[tokio::test]
async fn client_refuses_a_server_with_the_wrong_name() {
    let dir = mesh_dir(&["identity", "gateway"]);
    let server = TestServer::start(load(dir.path(), "identity").await).await;
    let gateway = load(dir.path(), "gateway").await;
    let status = check(channel(&server.url(), &gateway, "compliance").unwrap()).await;
    assert!(status.is_err(), "{status:?}");
}

/// A certificate of the mesh CA that carries the dialled name but another SPIFFE ID (a
/// workload that is not a component, or a component whose leaf has the name as an extra DNS
/// name) does not pass for the component.
#[tokio::test]
async fn client_refuses_a_server_that_is_another_workload_by_its_spiffe_id() {
    let dir = mesh_dir(&["identity", "gateway"]);
    let workload = SpiffeId::parse("spiffe://palisade.local/workload/batch-job").unwrap();
    pki::issue(dir.path(), "identity", &workload, &[]).unwrap();
    let impostor = TestServer::start(load(dir.path(), "identity").await).await;
    let gateway = load(dir.path(), "gateway").await;
    let status = check(channel(&impostor.url(), &gateway, "identity").unwrap()).await;
    assert!(status.is_err(), "{status:?}");
    assert!(
        impostor.peers.lock().unwrap().is_empty(),
        "no call got through"
    );

    // compliance's own certificate, with `identity` as an extra DNS name.
    let dir = tempfile::tempdir().unwrap();
    let extra = ["identity".to_owned()];
    pki::init(
        dir.path(),
        DEFAULT_TRUST_DOMAIN,
        &["compliance", "gateway"],
        &extra,
    )
    .unwrap();
    let compliance = TestServer::start(load(dir.path(), "compliance").await).await;
    let gateway = load(dir.path(), "gateway").await;
    let status = check(channel(&compliance.url(), &gateway, "identity").unwrap()).await;
    assert!(status.is_err(), "{status:?}");
    let status = check(channel(&compliance.url(), &gateway, "compliance").unwrap()).await;
    assert_eq!(status.unwrap(), ServingStatus::Serving);
}

#[tokio::test]
async fn reloads_changed_certificates() {
    let dir = mesh_dir(&["identity", "gateway"]);
    let identity = load(dir.path(), "identity").await;
    let gateway = load(dir.path(), "gateway").await;
    let server = TestServer::start(identity.clone()).await;
    let on_disk =
        |name: &str| CertificateDer::from_pem_file(dir.path().join(format!("{name}.crt"))).unwrap();
    let first_gateway_cert = on_disk("gateway");

    // Both get new certificates of their own.
    let identity_id = SpiffeId::component(DEFAULT_TRUST_DOMAIN, "identity");
    let gateway_id = SpiffeId::component(DEFAULT_TRUST_DOMAIN, "gateway");
    pki::issue(dir.path(), "identity", &identity_id, &[]).unwrap();
    pki::issue(dir.path(), "gateway", &gateway_id, &[]).unwrap();
    let (new_identity_cert, new_gateway_cert) = (on_disk("identity"), on_disk("gateway"));
    assert_ne!(new_gateway_cert, first_gateway_cert);

    // A new connection presents the new server certificate (once identity has re-read it) ...
    let mut connector = MeshConnector::new(gateway.clone(), "identity").unwrap();
    let uri: http::Uri = server.url().parse().unwrap();
    let mut presented = None;
    for _ in 0..100 {
        let io = connector.call(uri.clone()).await.unwrap();
        let (_, session) = io.inner().get_ref().get_ref();
        presented = Some(session.peer_certificates().unwrap()[0].clone());
        if presented.as_ref() == Some(&new_identity_cert) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(presented, Some(new_identity_cert));

    // ... and the client presents its new one.
    let mut presented = None;
    for _ in 0..100 {
        presented = Some(client_certificate(&gateway, &identity).await);
        if presented.as_ref() == Some(&new_gateway_cert) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(presented, Some(new_gateway_cert.clone()));
    let status = check(channel(&server.url(), &gateway, "identity").unwrap()).await;
    assert_eq!(status.unwrap(), ServingStatus::Serving);
    assert_eq!(server.last_peer(), Some(gateway_id.clone()));

    // A certificate naming another workload (a mixed-up secret) is refused: the gateway stays
    // what it started as, on its previous certificate.
    let untrusted = SpiffeId::parse("spiffe://palisade.local/workload/untrusted").unwrap();
    pki::issue(dir.path(), "gateway", &untrusted, &[]).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(gateway.identity(), gateway_id);
    assert_eq!(
        client_certificate(&gateway, &identity).await,
        new_gateway_cert
    );

    // A broken file keeps the previous material, and so does a certificate that does not
    // chain to the CA bundle (here one of another CA: a CA rotated before its leaves).
    let elsewhere = tempfile::tempdir().unwrap();
    pki::init(elsewhere.path(), DEFAULT_TRUST_DOMAIN, &[], &[]).unwrap();
    pki::issue(elsewhere.path(), "identity", &identity_id, &[]).unwrap();
    for file in ["identity.key", "identity.crt"] {
        std::fs::copy(elsewhere.path().join(file), dir.path().join(file)).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(identity.identity(), identity_id);
    let status = check(channel(&server.url(), &gateway, "identity").unwrap()).await;
    assert_eq!(status.unwrap(), ServingStatus::Serving);
    std::fs::write(dir.path().join("identity.crt"), "garbage").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(identity.identity(), identity_id);
    let status = check(channel(&server.url(), &gateway, "identity").unwrap()).await;
    assert_eq!(status.unwrap(), ServingStatus::Serving);
}

/// The leaf certificate `client` presents when it connects to a server of `server`'s
/// material (named `identity`).
async fn client_certificate(client: &MeshTls, server: &MeshTls) -> CertificateDer<'static> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri: http::Uri = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config());
    let accepted = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    });
    let mut connector = MeshConnector::new(client.clone(), "identity").unwrap();
    let _connected = connector.call(uri).await.unwrap();
    accepted.await.unwrap()
}
