//! The floors the gateway's added latency is read against: what any separate proxy process
//! pays on this machine (a bare TCP relay hop), and what an HTTP/2 proxy pays before it does
//! anything of its own (a minimal one: hyper's HTTP/2 server and a tonic channel over mTLS,
//! each request passed on as it came). Each runs on a thread of its own with a runtime of its
//! own, as a proxy process would (and as each gateway connection worker does), so its CPU
//! time and write system calls can be read apart from the bench's.

use hyper::{body::Incoming, server::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_tls::{CoalescedWrites, MeshConnector, MeshTls};
use tower::ServiceExt;

/// A proxy running on a thread of the bench.
pub struct Floor {
    pub port: u16,
    /// The thread's `/proc` directory (`/proc/<pid>/task/<tid>`).
    pub proc_dir: String,
}

/// A TCP relay to `127.0.0.1:target`: one more hop, no proxy code (the mTLS session passes
/// through it).
pub fn tcp_relay(target: u16) -> anyhow::Result<Floor> {
    on_own_thread("relay-floor", move |listener| relay(listener, target))
}

/// A minimal HTTP/2 proxy: h2c in (writes coalesced as the gateway's are), each request passed
/// as it is, headers and all, to `target` over one mTLS channel, and the response passed back.
pub fn h2_proxy(target: String, tls: MeshTls) -> anyhow::Result<Floor> {
    on_own_thread("h2-proxy-floor", move |listener| {
        proxy(listener, target, tls)
    })
}

/// The same minimal proxy, passing requests to hyper's HTTP/2 client on one mTLS connection
/// directly, without the tonic channel (whose buffer is a task of its own between a request
/// and the connection).
pub fn h2_proxy_bare_client(target: String, tls: MeshTls) -> anyhow::Result<Floor> {
    on_own_thread("h2-bare-floor", move |listener| {
        bare_client_proxy(listener, target, tls)
    })
}

fn on_own_thread<F>(
    name: &str,
    serve: impl FnOnce(tokio::net::TcpListener) -> F + Send + 'static,
) -> anyhow::Result<Floor>
where
    F: Future<Output = anyhow::Result<()>>,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (started, thread_dir) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            // `/proc/thread-self` links to `<pid>/task/<tid>`.
            let dir = std::fs::read_link("/proc/thread-self")
                .map(|dir| format!("/proc/{}", dir.display()));
            let _ = started.send(dir);
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                serve(listener).await
            })
        })?;
    Ok(Floor {
        port,
        proc_dir: thread_dir.recv()??,
    })
}

/// Accepts connections on `listener` and copies each, both ways, to `127.0.0.1:target`.
async fn relay(listener: tokio::net::TcpListener, target: u16) -> anyhow::Result<()> {
    loop {
        let (mut inbound, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut outbound = tokio::net::TcpStream::connect(("127.0.0.1", target)).await?;
            let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
            tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await?;
            anyhow::Ok(())
        });
    }
}

async fn proxy(
    listener: tokio::net::TcpListener,
    target: String,
    tls: MeshTls,
) -> anyhow::Result<()> {
    let channel = palisade_tls::channel(&target, &tls, "identity")?;
    serve_h2(listener, move |request| {
        channel.clone().oneshot(request.map(tonic::body::Body::new))
    })
    .await
}

async fn bare_client_proxy(
    listener: tokio::net::TcpListener,
    target: String,
    tls: MeshTls,
) -> anyhow::Result<()> {
    let uri: http::Uri = target.parse()?;
    let io = MeshConnector::new(tls, "identity")?.oneshot(uri).await?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
    tokio::spawn(connection);
    serve_h2(listener, move |request| {
        let mut sender = sender.clone();
        async move {
            let response = sender.send_request(request).await?;
            anyhow::Ok(response.map(tonic::body::Body::new))
        }
    })
    .await
}

/// Serves h2c on `listener` (writes coalesced as the gateway's are), each request answered by
/// `forward`.
async fn serve_h2<F, Fut, E>(listener: tokio::net::TcpListener, forward: F) -> anyhow::Result<()>
where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let (inbound, _) = listener.accept().await?;
        inbound.set_nodelay(true)?;
        let forward = forward.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(CoalescedWrites::new(inbound));
            http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, hyper::service::service_fn(forward))
                .await
        });
    }
}
