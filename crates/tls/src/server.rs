//! The server side of the mesh: mTLS handshakes on accepted connections, and the peer identity
//! tonic hands to every request.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, Stream, StreamExt};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::{CoalescedWrites, MeshTls, SpiffeId, spiffe};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Beyond this many handshakes in flight, accepting pauses and the kernel backlog absorbs the rest.
const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Accepts per poll, so a flood of connections cannot starve the handshakes already running.
const ACCEPTS_PER_POLL: usize = 64;
/// Pause after an accept error (typically out of file descriptors) instead of spinning on it.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// What a server knows about the peer of one connection.
///
/// tonic inserts it into every request's extensions (it is [`MeshStream`]'s
/// [`Connected::ConnectInfo`]), so layers read `req.extensions().get::<PeerIdentity>()`.
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    pub remote_addr: Option<SocketAddr>,
    /// From the URI SAN of the peer's leaf certificate; `None` if it carries no valid SPIFFE ID.
    pub spiffe_id: Option<SpiffeId>,
}

/// An accepted connection whose mTLS handshake has completed.
pub struct MeshStream {
    /// Writes coalesced: a response's HEADERS, DATA and trailers leave in one TLS record.
    inner: CoalescedWrites<TlsStream<TcpStream>>,
    peer: PeerIdentity,
}

impl MeshStream {
    pub fn peer_identity(&self) -> &PeerIdentity {
        &self.peer
    }
}

impl Connected for MeshStream {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Accepts TCP connections on `listener` and yields them once their mTLS handshake completes.
///
/// Handshakes run concurrently, so one slow or failing client never holds up the others; each
/// uses the server config current when its connection was accepted, so reloads apply to new
/// connections. Failed or timed-out (10s) handshakes are logged at debug and skipped. Accept
/// errors are yielded (tonic logs and continues) after a short pause. The stream never ends;
/// dropping it closes the listener. Use it with tonic's `Server::serve_with_incoming_shutdown`.
pub fn incoming(
    listener: TcpListener,
    tls: MeshTls,
) -> impl Stream<Item = io::Result<MeshStream>> + Send + 'static {
    Incoming {
        listener,
        tls,
        handshakes: FuturesUnordered::new(),
        backoff: None,
    }
}

struct Incoming {
    listener: TcpListener,
    tls: MeshTls,
    handshakes: FuturesUnordered<BoxFuture<'static, Option<MeshStream>>>,
    backoff: Option<Pin<Box<Sleep>>>,
}

impl Stream for Incoming {
    type Item = io::Result<MeshStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(Poll::Ready(())) = this.backoff.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
            this.backoff = None;
        }
        let mut accepted = 0;
        while this.backoff.is_none() && this.handshakes.len() < MAX_PENDING_HANDSHAKES {
            if accepted == ACCEPTS_PER_POLL {
                // Come back for the rest after the handshakes had their turn.
                cx.waker().wake_by_ref();
                break;
            }
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, remote))) => {
                    accepted += 1;
                    let config = this.tls.server_config();
                    this.handshakes.push(handshake(tcp, remote, config).boxed());
                }
                Poll::Ready(Err(error)) => {
                    tracing::warn!(%error, "failed to accept connection");
                    let mut sleep = Box::pin(tokio::time::sleep(ACCEPT_ERROR_BACKOFF));
                    // Registers the waker that ends the pause.
                    let _ = sleep.as_mut().poll(cx);
                    this.backoff = Some(sleep);
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Pending => break,
            }
        }
        loop {
            match this.handshakes.poll_next_unpin(cx) {
                Poll::Ready(Some(Some(stream))) => return Poll::Ready(Some(Ok(stream))),
                Poll::Ready(Some(None)) => continue,
                // An empty set is not the end: the listener's waker brings the next connection.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    config: Arc<ServerConfig>,
) -> Option<MeshStream> {
    // gRPC sends small frames that must not wait for Nagle's algorithm.
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%remote, %error, "failed to set tcp_nodelay");
    }
    let accept = TlsAcceptor::from(config).accept(tcp);
    let inner = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(inner)) => inner,
        Ok(Err(error)) => {
            tracing::debug!(%remote, %error, "tls handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%remote, "tls handshake timed out");
            return None;
        }
    };
    let leaf = inner
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first());
    let spiffe_id = match leaf.map(|der| spiffe::from_certificate(der)) {
        Some(Ok(id)) => Some(id),
        Some(Err(reason)) => {
            tracing::debug!(%remote, %reason, "peer certificate has no usable spiffe id");
            None
        }
        None => None,
    };
    Some(MeshStream {
        inner: CoalescedWrites::new(inner),
        peer: PeerIdentity {
            remote_addr: Some(remote),
            spiffe_id,
        },
    })
}
