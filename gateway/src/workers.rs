//! Connection workers: threads with a single-threaded runtime each, one per core by default.
//! A public connection lives on one worker from accept to close, and so do the tasks of its
//! calls and the backend connections they are proxied over (each worker has its own), so a
//! call through the gateway is handled on one thread. On a shared multi-threaded runtime each
//! call woke other threads several times over (request task, channel buffer, backend
//! connection), which cost more CPU than the call itself at moderate load; see the
//! `gateway_overhead` bench. The acceptor hands each new connection to the worker with the
//! fewest open ones.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use palisade_grpc::BoxError;
use palisade_tls::CoalescedWrites;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, mpsc, oneshot, watch},
    task::JoinSet,
};

use crate::{
    address_caps::AddressSlot,
    edge::Edge,
    idle::{Activity, Tracked},
    public_tls::PublicTls,
};

const DRAIN_GRACE: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection (after its TLS handshake, if any) may go without making a call.
const FIRST_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's headers, at most, over either protocol (HTTP/1: the request line and headers;
/// HTTP/2: the header list as RFC 9113 counts it); more is `431`. A JWT is about 1 KiB.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The running workers, fed by the acceptor.
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    connections: mpsc::UnboundedSender<Accepted>,
    /// Connections handed to this worker and not yet closed.
    open: Arc<AtomicUsize>,
    /// Resolves (or fails) when the worker's thread has drained and ended.
    ended: oneshot::Receiver<()>,
}

/// A connection on its way to a worker, holding its place among the gateway's connections
/// (and the worker's count) until it closes.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    slot: OpenConnection,
}

struct OpenConnection {
    _places: (OwnedSemaphorePermit, Option<AddressSlot>),
    open: Arc<AtomicUsize>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `count` workers (0: one per available core). Each builds its edge with
    /// `make_edge` inside its own runtime, so that what the edge spawns (its backend channels'
    /// tasks) runs on that worker.
    pub fn start(
        count: usize,
        idle_timeout: Duration,
        make_edge: impl Fn() -> Result<Edge, BoxError>,
        tls: Option<PublicTls>,
    ) -> Result<Workers, BoxError> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            count => count,
        };
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let edge = {
                let _inside = runtime.enter();
                make_edge()?
            };
            let (connections, queue) = mpsc::unbounded_channel();
            let (done, ended) = oneshot::channel();
            let tls = tls.clone();
            std::thread::Builder::new()
                .name(format!("gateway-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(serve_connections(queue, edge, tls, idle_timeout));
                    let _ = done.send(());
                })?;
            workers.push(Worker {
                connections,
                open: Arc::new(AtomicUsize::new(0)),
                ended,
            });
        }
        Ok(Workers { workers })
    }

    /// Hands a new connection to the worker with the fewest open connections.
    /// `places` are the connection's among all the gateway's and its address's, held until
    /// it closes.
    pub fn dispatch(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        places: (OwnedSemaphorePermit, Option<AddressSlot>),
    ) {
        let worker = self
            .workers
            .iter()
            .min_by_key(|worker| worker.open.load(Ordering::Relaxed))
            .expect("at least one worker runs");
        worker.open.fetch_add(1, Ordering::Relaxed);
        let open = OpenConnection {
            _places: places,
            open: worker.open.clone(),
        };
        // Deregistered from the acceptor's runtime; the worker registers it with its own.
        match stream.into_std() {
            Ok(stream) => {
                let accepted = Accepted {
                    stream,
                    peer,
                    slot: open,
                };
                if worker.connections.send(accepted).is_err() {
                    tracing::warn!(%peer, "connection dropped: its worker has stopped");
                }
            }
            Err(error) => tracing::debug!(%peer, %error, "connection lost before serving"),
        }
    }

    /// Takes no more connections; each worker lets in-flight calls finish for a grace period,
    /// then cuts the rest. Returns once every worker has ended.
    pub async fn drain(self) {
        let mut ended = Vec::with_capacity(self.workers.len());
        for worker in self.workers {
            drop(worker.connections);
            ended.push(worker.ended);
        }
        for worker in ended {
            let _ = worker.await;
        }
    }
}

/// One worker's life: serves the connections it is handed until the acceptor stops, then
/// drains them.
async fn serve_connections(
    mut queue: mpsc::UnboundedReceiver<Accepted>,
    edge: Edge,
    tls: Option<PublicTls>,
    idle_timeout: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // The read buffer bounds what headers may take (hyper's default is ~400 KiB).
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    // Set when the worker drains: every connection then shuts down gracefully.
    let (drain, draining) = watch::channel(false);
    let mut connections = JoinSet::new();
    while let Some(Accepted { stream, peer, slot }) = queue.recv().await {
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%peer, %error, "connection could not be registered");
                continue;
            }
        };
        let service = edge.for_peer(peer);
        // The TLS config current now: a reloaded certificate applies from the next connection.
        let acceptor = tls.as_ref().map(PublicTls::acceptor);
        let (builder, draining) = (builder.clone(), draining.clone());
        connections.spawn(async move {
            let closing = Closing {
                draining,
                idle_timeout,
            };
            match acceptor {
                None => serve_connection(&builder, closing, stream, service, peer).await,
                // The handshake runs here, under a timeout, so a slow client holds up nothing
                // but its own connection.
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => {
                            serve_connection(&builder, closing, stream, service, peer).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "tls handshake failed"),
                        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
        // Reap finished connection tasks so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
    let _ = drain.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_GRACE, drained).await.is_err() {
        tracing::warn!(
            open = connections.len(),
            "cutting gateway connections still open after the grace period"
        );
    }
    connections.abort_all();
}

/// When a connection shuts down gracefully before its client closes it.
struct Closing {
    /// True once the worker drains.
    draining: watch::Receiver<bool>,
    /// How long the connection may stay without anything happening on it (`idle.rs`).
    idle_timeout: Duration,
}

async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    mut closing: Closing,
    io: I,
    service: Edge,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let service = TowerToHyperService::new(Tracked::new(service, activity.clone()));
    let io = CoalescedWrites::new(io);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    // Resolves, saying why, once the connection should close: no first call in time, or
    // nothing happening on it for the idle timeout.
    let idle = async {
        tokio::select! {
            () = activity.no_call_within(FIRST_CALL_TIMEOUT) => "closing a connection that made no call in time",
            () = activity.idle_for(closing.idle_timeout) => "closing an idle connection",
        }
    };
    let mut idle = std::pin::pin!(idle);
    // An idle connection shut down gracefully is cut if that does not end it in time (its
    // client does not read what is left to send, say). When the worker drains, the worker
    // keeps the time.
    let cut = tokio::time::sleep(Duration::MAX);
    let mut cut = std::pin::pin!(cut);
    let mut shutting_down = false;
    let ended = loop {
        tokio::select! {
            ended = connection.as_mut() => break ended,
            _ = closing.draining.wait_for(|draining| *draining), if !shutting_down => {
                connection.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            why = &mut idle, if !shutting_down => {
                tracing::debug!(%peer, "{why}");
                connection.as_mut().graceful_shutdown();
                shutting_down = true;
                cut.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
            }
            () = &mut cut => {
                tracing::debug!(%peer, "cutting an idle connection that did not close");
                break Ok(());
            }
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}
