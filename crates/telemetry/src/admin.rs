//! The admin HTTP port of a component: `/metrics` (OpenMetrics text), `/healthz` (the process
//! answers) and `/readyz` (its dependencies are reachable). Plain HTTP/1.1, for Prometheus and
//! Kubernetes probes; it carries no tenant data.

use std::{
    convert::Infallible,
    future::Future,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::ComponentMetrics;

/// Whether the component can serve, and if not, why. Shared by `/readyz` and gRPC health.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<Mutex<Option<String>>>);

impl Readiness {
    /// `None` means ready; `Some(reason)` not ready.
    pub fn set(&self, problem: Option<String>) {
        *self.0.lock().expect("readiness lock") = problem;
    }

    pub fn problem(&self) -> Option<String> {
        self.0.lock().expect("readiness lock").clone()
    }
}

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: ComponentMetrics,
    readiness: Readiness,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "admin accept failed");
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
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
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
