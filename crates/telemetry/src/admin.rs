//! The admin HTTP port of a component: `/metrics` (OpenMetrics text), `/healthz` (the process
//! answers) and `/readyz` (its dependencies are reachable). Plain HTTP/1.1, for Prometheus and
//! Kubernetes probes. It carries no secrets, but the gateway's `/metrics` names tenants (its
//! per-tenant request counts), so the port belongs on the cluster network, never the public
//! one (it has no authentication). Each connection answers one request within
//! [`CONNECTION_DEADLINE`], and at most [`MAX_CONNECTIONS`] are open at once, so a client that
//! connects and says nothing holds a task and a file descriptor for seconds, not forever.

use std::{
    convert::Infallible,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::ComponentMetrics;

/// What `/readyz` says of a component that is shutting down.
pub const DRAINING: &str = "shutting down: finishing the calls in flight";

/// Whether the component can serve, and if not, why. Shared by `/readyz` and gRPC health.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<Mutex<ReadinessState>>);

#[derive(Debug, Default)]
struct ReadinessState {
    problem: Option<String>,
    draining: bool,
}

impl Readiness {
    /// `None` means ready; `Some(reason)` not ready. A draining component stays not ready
    /// whatever its dependencies say.
    pub fn set(&self, problem: Option<String>) {
        self.state().problem = problem;
    }

    /// The component is shutting down: from now on it is not ready, for good, so probes
    /// tell the truth while its last calls finish (it takes no new connections meanwhile).
    pub fn drain(&self) {
        self.state().draining = true;
    }

    pub fn problem(&self) -> Option<String> {
        let state = self.state();
        if state.draining {
            return Some(DRAINING.to_owned());
        }
        state.problem.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ReadinessState> {
        self.0.lock().expect("readiness lock")
    }
}

/// Scrapes and probes open a connection or two at a time. The cap is far above that, so a
/// few silent connections cannot keep a kubelet's probe waiting: each costs a descriptor and
/// a small task for at most [`HEADER_DEADLINE`].
const MAX_CONNECTIONS: usize = 1024;

/// How long a client has to send a request's headers: probes and scrapes send them at once.
const HEADER_DEADLINE: Duration = Duration::from_secs(2);

/// How long a connection lives, request and response included: a scrape of a component's
/// metrics takes milliseconds.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: ComponentMetrics,
    readiness: Readiness,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => return,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        let service = service_fn(move |request| {
            let response = respond(&request, &metrics, &readiness);
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_DEADLINE)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
            drop(permit);
        });
    }
}

fn respond(
    request: &Request<Incoming>,
    metrics: &ComponentMetrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => match readiness.problem() {
            None => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            Some(problem) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {problem}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
        time::Instant,
    };

    use super::*;

    async fn admin_port() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let metrics = ComponentMetrics::new("identity");
        tokio::spawn(serve_admin(
            listener,
            metrics,
            Readiness::default(),
            std::future::pending(),
        ));
        address
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_says_nothing_is_disconnected() {
        let mut silent = TcpStream::connect(admin_port().await).await.unwrap();
        let connected = Instant::now();

        let mut buffer = [0; 64];
        let read = tokio::time::timeout(Duration::from_secs(3600), silent.read(&mut buffer))
            .await
            .expect("the admin port closes a silent connection");
        assert!(matches!(read, Ok(0) | Err(_)));
        assert!(connected.elapsed() >= HEADER_DEADLINE);
        assert!(connected.elapsed() <= HEADER_DEADLINE + Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_probe_is_answered_and_the_connection_closed() {
        let mut probe = TcpStream::connect(admin_port().await).await.unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        probe.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok\n"), "{answer}");
    }

    #[test]
    fn a_draining_component_stays_not_ready() {
        let readiness = Readiness::default();
        readiness.set(Some("database unreachable".to_owned()));
        readiness.drain();
        assert_eq!(readiness.problem().as_deref(), Some(DRAINING));
        readiness.set(None);
        assert_eq!(readiness.problem().as_deref(), Some(DRAINING));
    }
}
