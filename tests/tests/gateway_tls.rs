//! TLS on the gateway's public port: with a configured certificate the port speaks TLS, gRPC
//! over ALPN `h2` and REST over ALPN `http/1.1`, asks for no client certificate, and refuses
//! plaintext h2c; the status page probes it over TLS; a replaced certificate is served to new
//! connections without a restart.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use palisade_proto::palisade::observability::v1::{
    GetStatusRequest, ServingState, status_service_client::StatusServiceClient,
};
use palisade_testkit::{Component, Mesh, eventually};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A self-signed certificate for `localhost`, written as PEM into `dir`: (cert, key, DER).
fn public_certificate(dir: &Path) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let (cert, key) = (dir.join("public.crt"), dir.join("public.key"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    Ok((cert, key))
}

/// A client config trusting only `cert`, offering `alpn`, with no client certificate.
fn client_config(cert: &Path, alpn: &[u8]) -> anyhow::Result<Arc<ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(cert)?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("a valid name");
    TlsConnector::from(config).connect(name, tcp).await
}

/// A tonic channel to the gateway over TLS (ALPN `h2`).
async fn tls_channel(addr: std::net::SocketAddr, cert: &Path) -> anyhow::Result<Channel> {
    let config = client_config(cert, b"h2")?;
    let connector = tower::service_fn(move |_: http::Uri| {
        let config = config.clone();
        async move { connect(addr, config).await.map(TokioIo::new) }
    });
    Ok(Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await?)
}

#[tokio::test]
async fn the_public_port_speaks_tls_and_refuses_h2c() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = public_certificate(dir.path())?;
    let mesh = Mesh::builder().with_public_tls(&cert, &key).start().await?;
    let addr = mesh.addr(Component::Gateway);

    // gRPC over TLS: health, and a call through the proxy with an API key.
    let channel = tls_channel(addr, &cert).await?;
    let answer = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await?;
    assert_eq!(answer.get_ref().status, ServingStatus::Serving as i32);
    let mut tenants =
        palisade_proto::palisade::identity::v1::tenant_service_client::TenantServiceClient::new(
            channel,
        );
    let tenant = tenants
        .get_tenant(
            mesh.as_operator(palisade_proto::palisade::identity::v1::GetTenantRequest {
                name: "tenants/system".into(),
            }),
        )
        .await?;
    assert_eq!(tenant.get_ref().name, "tenants/system");

    // REST over TLS with HTTP/1.1.
    let stream = connect(addr, client_config(&cert, b"http/1.1")?).await?;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get("/openapi.json")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await?.to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(doc["openapi"], "3.0.3");

    // Plaintext h2c, as before TLS was configured, gets nowhere.
    let plaintext = async {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await?;
        anyhow::Ok(())
    };
    let refused = tokio::time::timeout(std::time::Duration::from_secs(15), plaintext).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "h2c was not refused: {refused:?}"
    );

    mesh.stop().await
}

/// The certificate the gateway presents to a new TLS connection from a client that trusts
/// `trusted`.
async fn presented(
    addr: std::net::SocketAddr,
    trusted: &[CertificateDer<'static>],
) -> anyhow::Result<CertificateDer<'static>> {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let stream = connect(addr, Arc::new(config)).await?;
    let certs = stream.get_ref().1.peer_certificates().unwrap_or_default();
    Ok(certs
        .first()
        .context("no certificate presented")?
        .clone()
        .into_owned())
}

#[tokio::test]
async fn a_replaced_public_certificate_reaches_new_connections() -> anyhow::Result<()> {
    use rustls::pki_types::pem::PemObject;
    let (dir, renewed_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (cert, key) = public_certificate(dir.path())?;
    let (renewed_cert, renewed_key) = public_certificate(renewed_dir.path())?;
    let (old, new) = (
        CertificateDer::from_pem_file(&cert)?,
        CertificateDer::from_pem_file(&renewed_cert)?,
    );
    let mesh = Mesh::builder().with_public_tls(&cert, &key).start().await?;
    let addr = mesh.addr(Component::Gateway);
    let both = [old.clone(), new.clone()];
    assert_eq!(presented(addr, &both).await?, old);
    // An open connection keeps its certificate; it is only new ones that change.
    let open = tls_channel(addr, &cert).await?;

    // Renewal in place, key first (a watcher can see the pair mid-change; it retries).
    std::fs::copy(&renewed_key, &key)?;
    std::fs::copy(&renewed_cert, &cert)?;
    let seen = eventually(Duration::from_secs(10), || async {
        let seen = presented(addr, &both).await?;
        Ok((seen != old).then_some(seen))
    })
    .await?;
    assert_eq!(seen, new);
    let answer = HealthClient::new(open)
        .check(HealthCheckRequest::default())
        .await?;
    assert_eq!(answer.get_ref().status, ServingStatus::Serving as i32);

    // A broken file keeps the certificate served last.
    std::fs::write(&cert, "not a certificate")?;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(presented(addr, &both).await?, new);
    mesh.stop().await
}

/// The gateway's state on the status page, asked over `channel`.
async fn gateway_state(channel: Channel) -> anyhow::Result<ServingState> {
    let status = StatusServiceClient::new(channel)
        .get_status(GetStatusRequest {})
        .await?
        .into_inner();
    let gateway = status
        .components
        .iter()
        .find(|c| c.component == "gateway")
        .ok_or_else(|| anyhow::anyhow!("no gateway on the status page: {status:?}"))?;
    Ok(gateway.state())
}

#[tokio::test]
async fn the_status_page_probes_a_tls_gateway_over_tls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = public_certificate(dir.path())?;
    let mut mesh = Mesh::builder().with_public_tls(&cert, &key).start().await?;
    let addr = mesh.addr(Component::Gateway);

    // The certificate is for `localhost`; the probe dials 127.0.0.1 and still gets through.
    let state = gateway_state(tls_channel(addr, &cert).await?).await?;
    assert_eq!(state, ServingState::Serving);

    // And it is a real probe: with the gateway gone, the page (asked directly) says so.
    mesh.stop_component(Component::Gateway).await?;
    let observability = mesh.direct(Component::Observability, "gateway").await?;
    let state = eventually(Duration::from_secs(10), || async {
        let state = gateway_state(observability.clone()).await?;
        Ok((state != ServingState::Serving).then_some(state))
    })
    .await?;
    assert_eq!(state, ServingState::Unreachable);
    mesh.stop().await
}

#[tokio::test]
async fn a_gateway_with_an_unreadable_certificate_does_not_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("missing.crt");
    let started = Mesh::builder()
        .with_public_tls(&missing, dir.path().join("missing.key"))
        .start()
        .await;
    let error = format!("{:#}", started.err().expect("the mesh must not start"));
    assert!(error.contains("missing.crt"), "{error}");
    Ok(())
}
