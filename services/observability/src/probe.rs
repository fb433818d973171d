//! Health probes: one long-lived channel per component, `grpc.health.v1.Health/Check` with a
//! deadline, all components probed concurrently.
//!
//! The gateway is probed on its public port, the path clients take: h2c for an `http://`
//! address, TLS for `https://` (when the port serves a public certificate). Like a kubelet's
//! HTTPS probe, that TLS probe does not judge the certificate: it is issued for the public host
//! name, not for the address the probe dials, often by a CA the mesh does not know, and the
//! probe sends no secret worth protecting. It does prove the port completes a TLS handshake
//! (with a valid signature from the certificate's key) and answers gRPC behind it.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use http::Uri;
use hyper_util::rt::TokioIo;
use palisade_grpc::MeshAddresses;
use palisade_proto::palisade::observability::v1::ServingState;
use palisade_tls::MeshTls;
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle connection to the gateway is pinged.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// One round of probes: every component's result, and when the round ran.
#[derive(Clone, Debug)]
pub struct Round {
    ended: Instant,
    /// When the round began.
    pub ran_at: SystemTime,
    pub results: Vec<ProbeResult>,
}

/// One component's probe result.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    pub component: &'static str,
    pub endpoint: String,
    pub state: ServingState,
    pub latency: Duration,
    pub detail: String,
}

struct Target {
    component: &'static str,
    endpoint: String,
    channel: Channel,
}

pub struct Prober {
    targets: Arc<Vec<Target>>,
    /// The last round of probes: a public endpoint must not turn every call into a fan-out.
    recent: Arc<tokio::sync::Mutex<Option<Round>>>,
}

/// How long one round of probes answers every `GetStatus`.
const REUSE_FOR: Duration = Duration::from_secs(1);

impl Prober {
    pub fn for_mesh(mesh: &MeshAddresses, tls: &MeshTls) -> Result<Prober, palisade_tls::Error> {
        let mut targets = Vec::new();
        for (component, endpoint) in [
            ("identity", &mesh.identity),
            ("compliance", &mesh.compliance),
            ("observability", &mesh.observability),
        ] {
            let channel = palisade_tls::channel(endpoint, tls, component)?;
            targets.push(Target {
                component,
                endpoint: endpoint.clone(),
                channel,
            });
        }
        // The gateway's public port speaks h2c or TLS with a public certificate, not mesh mTLS.
        targets.push(Target {
            component: "gateway",
            endpoint: mesh.gateway.clone(),
            channel: public_channel(&mesh.gateway)?,
        });
        Ok(Prober {
            targets: Arc::new(targets),
            recent: Arc::default(),
        })
    }

    /// Every component's state, in a fixed order: probed now, or by a round that ended at
    /// most a second ago. Concurrent callers wait for one round instead of starting their own.
    pub async fn probe_all(&self) -> Round {
        let mut recent = self.recent.clone().lock_owned().await;
        if let Some(round) = recent.as_ref()
            && round.ended.elapsed() < REUSE_FOR
        {
            return round.clone();
        }
        let targets = self.targets.clone();
        // In a task of its own, which holds the lock until the round ends: a caller that goes
        // away (its deadline, shorter than a probe's) does not abandon the round that the
        // callers queued behind it will take.
        let round = tokio::spawn(async move {
            let ran_at = SystemTime::now();
            let results = futures::future::join_all(targets.iter().map(probe)).await;
            // Counted from the end: a round slowed by a probe timing out (2 s) still answers
            // the callers queued behind it.
            let round = Round {
                ended: Instant::now(),
                ran_at,
                results,
            };
            *recent = Some(round.clone());
            round
        });
        match round.await {
            Ok(round) => round,
            // A probe that panicked (a malformed answer, say): its panic, not a second one.
            Err(failed) => std::panic::resume_unwind(failed.into_panic()),
        }
    }
}

/// A lazy channel to a public endpoint: h2c for `http://` (or any other scheme, or none, as
/// mesh addresses may be written), TLS (ALPN `h2`, the certificate not verified, see the module docs) for
/// `https://`. HTTP/2 keep-alive pings find a connection whose peer vanished without a reset
/// (a replaced pod), which would otherwise fail every probe until the OS gave up on it.
fn public_channel(url: &str) -> Result<Channel, palisade_tls::Error> {
    let invalid = |reason: &str| palisade_tls::Error::InvalidUri {
        uri: url.to_owned(),
        reason: reason.to_owned(),
    };
    // Schemes are case-insensitive (RFC 3986 §3.1): `HTTPS://` is TLS too.
    let url = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => format!("https://{rest}"),
        Some((_, rest)) => format!("http://{rest}"),
        None => format!("http://{url}"),
    };
    let uri: Uri = url.parse().map_err(|_| invalid("not a uri"))?;
    let host = (uri.host().filter(|host| !host.is_empty()))
        .ok_or_else(|| invalid("no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let keep_alive = |endpoint: Endpoint| {
        endpoint
            .connect_timeout(PROBE_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(PROBE_TIMEOUT)
            .keep_alive_while_idle(true)
    };
    if uri.scheme_str() != Some("https") {
        return Ok(keep_alive(Endpoint::from(uri)).connect_lazy());
    }
    let port = uri.port_u16().unwrap_or(443);
    // TLS is ours: an `https` endpoint would make tonic attempt its own on top.
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
    let endpoint =
        Endpoint::from_shared(format!("http://{authority}")).map_err(|_| invalid("not a uri"))?;
    let endpoint = keep_alive(endpoint);
    // SNI: the host name it was given (an IP address sends none).
    let server_name = ServerName::try_from(host.clone()).map_err(|_| invalid("bad host"))?;
    let connector = TlsConnector::from(unverified_client_config());
    let connect = tower::service_fn(move |_: Uri| {
        let (connector, server_name, host) = (connector.clone(), server_name.clone(), host.clone());
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}

fn unverified_client_config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate(provider.clone()));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Accepts any server certificate, but still checks that the server signed the handshake
/// with the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn probe(target: &Target) -> ProbeResult {
    let started = Instant::now();
    let mut client = HealthClient::new(target.channel.clone());
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(PROBE_TIMEOUT);
    let call = tokio::time::timeout(PROBE_TIMEOUT, client.check(request)).await;
    let (state, detail) = match call {
        Ok(Ok(response)) => match response.into_inner().status() {
            ServingStatus::Serving => (ServingState::Serving, String::new()),
            other => (
                ServingState::NotServing,
                format!("health service answered {}", other.as_str_name()),
            ),
        },
        // The server answered, with an error (no health service, say): up, not serving.
        Ok(Err(status)) if answered(&status) => (
            ServingState::NotServing,
            format!(
                "health check answered {:?}: {}",
                status.code(),
                status.message()
            ),
        ),
        Ok(Err(status)) => (
            ServingState::Unreachable,
            format!("{:?}: {}", status.code(), status.message()),
        ),
        Err(_) => (
            ServingState::Unreachable,
            format!("no answer within {PROBE_TIMEOUT:?}"),
        ),
    };
    ProbeResult {
        component: target.component,
        endpoint: target.endpoint.clone(),
        state,
        latency: started.elapsed(),
        detail,
    }
}

/// Whether an error status is the component's answer rather than a failure to reach it (no
/// connection, TLS, a protocol error, no answer in time): tonic keeps the transport error it
/// made a status from as its source, and a status the server sent has none. `UNAVAILABLE` is
/// never an answer: a proxy in front of the component (a load balancer before the gateway)
/// sends it, or an HTTP 502/503/504 that tonic reads as it, when the component is gone.
fn answered(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_none()
        && !matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unavailable
        )
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::health_server::HealthServer;

    use super::*;

    /// `health` served over plaintext HTTP/2 on port 0, and its address.
    async fn serve<S: tonic_health::pb::health_server::Health>(
        health: tonic_health::pb::health_server::HealthServer<S>,
    ) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        address.to_string()
    }

    /// The gateway, probed at `url`.
    fn target(url: &str) -> Target {
        Target {
            component: "gateway",
            endpoint: url.to_owned(),
            channel: public_channel(url).unwrap(),
        }
    }

    #[tokio::test]
    async fn a_gateway_address_without_a_scheme_is_probed_over_h2c() {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let address = serve(health).await;
        for url in [
            address.clone(),
            format!("http://{address}"),
            format!("grpc://{address}"),
        ] {
            let probed = probe(&target(&url)).await;
            assert_eq!(
                probed.state,
                ServingState::Serving,
                "{url}: {}",
                probed.detail
            );
        }
    }

    /// Unreachable is for a server that could not be reached; one that answers, even with an
    /// error, is up and not serving.
    #[tokio::test]
    async fn an_error_answer_is_not_serving_and_no_answer_is_unreachable() {
        // A health service that knows no overall status answers NOT_FOUND.
        let (mut reporter, health) = tonic_health::server::health_reporter();
        reporter.clear_service_status("").await;
        let answered = probe(&target(&serve(health).await)).await;
        assert_eq!(
            answered.state,
            ServingState::NotServing,
            "{}",
            answered.detail
        );
        assert!(answered.detail.contains("NotFound"), "{}", answered.detail);

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap();
        drop(closed);
        let refused = probe(&target(&address.to_string())).await;
        assert_eq!(
            refused.state,
            ServingState::Unreachable,
            "{}",
            refused.detail
        );
    }

    /// A health service answering after `delay`: SERVING, or the error `refusal` names. It
    /// counts the checks it was asked.
    struct FakeHealth {
        checks: Arc<std::sync::atomic::AtomicUsize>,
        delay: Duration,
        refusal: Option<tonic::Code>,
    }

    const DELAY: Duration = Duration::from_millis(300);

    #[tonic::async_trait]
    impl tonic_health::pb::health_server::Health for FakeHealth {
        async fn check(
            &self,
            _: tonic::Request<HealthCheckRequest>,
        ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
            self.checks
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if let Some(code) = self.refusal {
                return Err(tonic::Status::new(code, "refused"));
            }
            Ok(tonic::Response::new(
                tonic_health::pb::HealthCheckResponse {
                    status: ServingStatus::Serving as i32,
                },
            ))
        }

        type WatchStream =
            futures::stream::Empty<Result<tonic_health::pb::HealthCheckResponse, tonic::Status>>;

        async fn watch(
            &self,
            _: tonic::Request<HealthCheckRequest>,
        ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("not here"))
        }
    }

    /// UNAVAILABLE is what a proxy in front of a component says when the component is gone:
    /// unreachable, not an answer; any other error is the component's answer.
    #[tokio::test]
    async fn unavailable_is_unreachable_and_other_errors_are_answers() {
        for (refusal, state) in [
            (tonic::Code::Unavailable, ServingState::Unreachable),
            (tonic::Code::Unimplemented, ServingState::NotServing),
        ] {
            let url = serve(HealthServer::new(FakeHealth {
                checks: Arc::default(),
                delay: Duration::ZERO,
                refusal: Some(refusal),
            }))
            .await;
            assert_eq!(probe(&target(&url)).await.state, state, "{refusal:?}");
        }
    }

    /// A caller whose deadline ends before its round does (a status page asked with a short
    /// timeout) does not throw the round away: the next caller takes it.
    #[tokio::test]
    async fn a_round_whose_caller_went_away_answers_the_next_caller() {
        let checks = Arc::default();
        let url = serve(HealthServer::new(FakeHealth {
            checks: Arc::clone(&checks),
            delay: DELAY,
            refusal: None,
        }))
        .await;
        let prober = Prober {
            targets: Arc::new(vec![target(&url)]),
            recent: Arc::default(),
        };
        // The first caller goes away once its round has asked.
        let asked = async {
            while checks.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            _ = prober.probe_all() => panic!("the round outlasts the first caller"),
            () = asked => {}
        }
        let round = prober.probe_all().await;
        assert_eq!(round.results[0].state, ServingState::Serving);
        assert_eq!(
            checks.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one round, the first caller's"
        );
    }

    /// The first byte a probe of `url` sends to a listener that answers nothing.
    async fn first_byte_sent(url: impl Fn(std::net::SocketAddr) -> String) -> u8 {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = url(listener.local_addr().unwrap());
        let probing = tokio::spawn(async move { probe(&target(&url)).await });
        let (mut connection, _) = listener.accept().await.unwrap();
        let first = connection.read_u8().await.unwrap();
        drop(connection);
        probing.abort();
        first
    }

    /// Schemes are case-insensitive: `HTTPS://` is TLS (a handshake record, 0x16), not h2c
    /// (the preface, `PRI * HTTP/2.0`).
    #[tokio::test]
    async fn an_https_address_is_probed_over_tls_whatever_its_case() {
        for scheme in ["https", "HTTPS", "Https"] {
            let first = first_byte_sent(|address| format!("{scheme}://{address}")).await;
            assert_eq!(first, 0x16, "{scheme}");
        }
        assert_eq!(
            first_byte_sent(|address| format!("http://{address}")).await,
            b'P'
        );
    }

    #[test]
    fn a_gateway_address_that_is_no_uri_is_refused() {
        for url in ["", "http://", "http://exa mple:7900"] {
            assert!(public_channel(url).is_err(), "{url:?}");
        }
    }
}
