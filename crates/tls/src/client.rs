//! The client side of the mesh: a tonic connector that dials components over mTLS.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};
use tower_service::Service;

use crate::{CoalescedWrites, Error, MeshTls, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(30);
/// How long a keep-alive ping may go unanswered before the connection is given up.
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connector for `tonic::transport::Endpoint::connect_with_connector(_lazy)`: TCP to the uri's
/// host and port, then mTLS with the client config current at that moment (so reloads apply to
/// new connections), verifying the server as the component `server_name`.
///
/// The uri's scheme only picks a default port; use `http://` so that tonic does not try its own
/// TLS on top.
#[derive(Clone)]
pub struct MeshConnector {
    tls: MeshTls,
    server_name: ServerName<'static>,
}

impl MeshConnector {
    /// `server_name` is the component dialled (e.g. `identity`): the server's certificate must
    /// carry it as a DNS name and be that component's by its SPIFFE ID.
    pub fn new(tls: MeshTls, server_name: &str) -> Result<MeshConnector> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| Error::InvalidServerName(server_name.to_owned()))?;
        Ok(MeshConnector { tls, server_name })
    }
}

impl fmt::Debug for MeshConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Service<Uri> for MeshConnector {
    type Response = TokioIo<CoalescedWrites<TlsStream<TcpStream>>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = TlsConnector::from(self.tls.client_config());
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let (host, port) = host_port(&uri)?;
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok(TokioIo::new(CoalescedWrites::new(tls)))
        })
    }
}

fn host_port(uri: &Uri) -> io::Result<(&str, u16)> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
    // IPv6 literals keep their brackets in a uri, but not in a socket address.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    Ok((host, port))
}

/// A lazily connecting tonic channel to `uri` (`http://127.0.0.1:7901`, `identity:7901`) over
/// mTLS, verifying the server as `server_name`. Connect timeout 3s, TCP_NODELAY, HTTP/2
/// keep-alive pings every 30s, idle or not, given up after 10s unanswered: a connection whose
/// peer vanished without a reset (a replaced pod) is found and replaced before calls are put
/// on it, rather than failing each call (a status probe every few seconds, say) until the OS
/// gives up on the socket. Requires a tokio runtime.
pub fn channel(uri: &str, tls: &MeshTls, server_name: &str) -> Result<Channel> {
    let invalid = |reason: String| Error::InvalidUri {
        uri: uri.to_owned(),
        reason,
    };
    // TLS is ours, so the scheme says nothing; `https` would make tonic attempt TLS itself.
    let normalized = match uri.split_once("://") {
        Some((_, rest)) => format!("http://{rest}"),
        None => format!("http://{uri}"),
    };
    let parsed: Uri = normalized
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
    if parsed.host().is_none_or(str::is_empty) {
        return Err(invalid("no host".to_owned()));
    }
    let connector = MeshConnector::new(tls.clone(), server_name)?;
    let endpoint = Endpoint::from(parsed)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(HTTP2_KEEPALIVE)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_with_connector_lazy(connector))
}
