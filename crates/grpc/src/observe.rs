//! Traces and RED metrics for every RPC a component serves or makes.
//!
//! The server layer is the outermost layer of every component: it continues the caller's W3C
//! trace (a `grpc.server` span with the OpenTelemetry RPC attributes), counts the call, and
//! records latency and status when the status arrives — in the headers of a trailers-only
//! response, in the trailers, or as `Canceled` when the client goes away first. A handler that
//! panics answers `INTERNAL` (logged with the panic's message) instead of a reset stream, which
//! clients would read as `CANCELLED` and the gateway as `UNAVAILABLE`, a code to retry. The
//! client layer does the same for outgoing calls (`grpc.client` spans) and injects `traceparent`.

use std::{
    any::Any,
    collections::HashMap,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use futures::{FutureExt, future::BoxFuture};
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use palisade_telemetry::{GrpcLabels, SideMetrics, extract_context, inject_current, trace_id_of};
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Instrument, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Marks a response with the tenant it served, for the gateway's per-tenant counter.
#[derive(Clone, Debug)]
pub struct ServedTenant(pub String);

/// Counts finished requests per tenant (the gateway's metric).
pub trait TenantCounter: Send + Sync + 'static {
    fn count(&self, tenant: &str, code: &str);
}

impl TenantCounter for palisade_telemetry::ComponentMetrics {
    fn count(&self, tenant: &str, code: &str) {
        self.count_tenant_request(tenant, code);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

/// Observes served RPCs.
#[derive(Clone)]
pub struct ServerObserveLayer {
    component: &'static str,
    metrics: SideMetrics,
    tenants: Option<std::sync::Arc<dyn TenantCounter>>,
    access_log: bool,
}

impl ServerObserveLayer {
    pub fn new(component: &'static str, metrics: SideMetrics) -> ServerObserveLayer {
        ServerObserveLayer {
            component,
            metrics,
            tenants: None,
            access_log: false,
        }
    }

    /// Also logs one `palisade::access` line per finished call (method, tenant, code, latency,
    /// and the span's request id): the gateway's access log. Never a credential or a payload.
    pub fn logging_access(mut self) -> ServerObserveLayer {
        self.access_log = true;
        self
    }

    /// Also counts requests per tenant, from responses marked with [`ServedTenant`].
    pub fn counting_tenants(
        mut self,
        counter: std::sync::Arc<dyn TenantCounter>,
    ) -> ServerObserveLayer {
        self.tenants = Some(counter);
        self
    }
}

impl<S> Layer<S> for ServerObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            side: Side::Server,
            component: self.component,
            metrics: self.metrics.clone(),
            tenants: self.tenants.clone(),
            access_log: self.access_log,
        }
    }
}

/// Observes outgoing RPCs of a component.
#[derive(Clone)]
pub struct ClientObserveLayer {
    component: &'static str,
    metrics: SideMetrics,
}

impl ClientObserveLayer {
    pub fn new(component: &'static str, metrics: SideMetrics) -> ClientObserveLayer {
        ClientObserveLayer { component, metrics }
    }
}

impl<S> Layer<S> for ClientObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            side: Side::Client,
            component: self.component,
            metrics: self.metrics.clone(),
            tenants: None,
            access_log: false,
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    side: Side,
    component: &'static str,
    metrics: SideMetrics,
    tenants: Option<std::sync::Arc<dyn TenantCounter>>,
    access_log: bool,
}

impl<S, B> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // Anyone can send any path; only methods the mesh serves get labels of their own, so
        // made-up paths cannot grow the metric series (and memory) without bound.
        let known = KnownMethod::of(request.uri().path());
        let (labels, span_name) = (known.labels, &known.span_name);
        let (service, method) = (labels.grpc_service, labels.grpc_method);
        let span = match self.side {
            Side::Server => tracing::info_span!(
                "grpc.server",
                otel.name = span_name.as_str(),
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = service,
                rpc.method = method,
                rpc.grpc.status_code = Empty,
                palisade.component = self.component,
                palisade.tenant_id = Empty,
                request_id = Empty,
                trace_id = Empty,
                span_id = Empty,
            ),
            Side::Client => tracing::info_span!(
                "grpc.client",
                otel.name = span_name.as_str(),
                otel.kind = "client",
                rpc.system = "grpc",
                rpc.service = service,
                rpc.method = method,
                rpc.grpc.status_code = Empty,
                palisade.component = self.component,
            ),
        };
        match self.side {
            Side::Server => {
                // A malformed or absent traceparent simply starts a new trace.
                let _ = span.set_parent(extract_context(request.headers()));
                // Recorded as fields so every log line inside the call carries them.
                if let Some((trace_id, span_id)) = trace_id_of(&span) {
                    span.record("trace_id", trace_id);
                    span.record("span_id", span_id);
                }
            }
            Side::Client => {
                let _entered = span.enter();
                inject_current(request.headers_mut());
            }
        }
        self.metrics.start(&labels);
        let finish = Finish {
            span: span.clone(),
            metrics: self.metrics.clone(),
            labels,
            method: &known.span_name,
            started: Instant::now(),
            code: None,
            tenant: None,
            tenants: self.tenants.clone(),
            access_log: self.access_log,
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let side = self.side;
        let future = {
            let _entered = span.enter();
            inner.call(request)
        };
        Box::pin(
            async move {
                let mut finish = finish;
                let answered = match AssertUnwindSafe(future).catch_unwind().await {
                    Ok(answered) => answered,
                    Err(panic) if side == Side::Server => {
                        tracing::error!(panic = panic_message(&*panic), "the handler panicked");
                        Ok(tonic::Status::internal("internal error").into_http())
                    }
                    Err(panic) => std::panic::resume_unwind(panic),
                };
                match answered {
                    Ok(response) => {
                        finish.tenant = response
                            .extensions()
                            .get::<ServedTenant>()
                            .map(|t| t.0.clone());
                        if let Some(code) = status_code(response.headers()) {
                            finish.code = Some(code);
                        }
                        Ok(response.map(|body| {
                            Body::new(ObservedBody {
                                inner: body,
                                finish: Some(finish),
                            })
                        }))
                    }
                    Err(error) => {
                        finish.code = Some(tonic::Code::Unavailable as i32);
                        Err(error)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    (panic.downcast_ref::<&str>().copied())
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// Records the outcome once, when the status is known or the call is abandoned.
struct Finish {
    span: Span,
    metrics: SideMetrics,
    labels: GrpcLabels,
    /// `service/method`, for the access log.
    method: &'static str,
    started: Instant,
    code: Option<i32>,
    tenant: Option<String>,
    tenants: Option<std::sync::Arc<dyn TenantCounter>>,
    access_log: bool,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(tonic::Code::Cancelled as i32);
        let name = code_name(code);
        let elapsed = self.started.elapsed();
        self.span.record("rpc.grpc.status_code", code);
        self.metrics
            .finish(&self.labels, name, elapsed.as_secs_f64());
        if self.access_log {
            // Inside the call's span, so the line carries its request id and trace id too.
            self.span.in_scope(|| {
                tracing::info!(
                    target: "palisade::access",
                    method = %self.method,
                    tenant = self.tenant.as_deref().unwrap_or("anonymous"),
                    code = name,
                    latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                    "call finished"
                );
            });
        }
        if let (Some(counter), Some(tenant)) = (&self.tenants, &self.tenant) {
            counter.count(tenant, name);
        }
    }
}

pin_project_lite::pin_project! {
    struct ObservedBody {
        #[pin]
        inner: Body,
        finish: Option<Finish>,
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code)
                    && let Some(mut finish) = this.finish.take()
                {
                    finish.code = Some(code);
                }
            }
            Poll::Ready(None) => {
                if let Some(mut finish) = this.finish.take() {
                    // A stream that ends without trailers, after a trailers-only status or not.
                    finish.code.get_or_insert(tonic::Code::Unknown as i32);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut finish) = this.finish.take() {
                    finish.code.get_or_insert(tonic::Code::Unavailable as i32);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn status_code(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Status names as go-grpc-prometheus writes them (Go's `codes.Code.String()`).
pub fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("Unknown")
}

/// A method as metrics and spans name it, made once per method the mesh serves (and for all
/// other paths), so that observing a call allocates none of it.
struct KnownMethod {
    /// `grpc_type` is `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    labels: GrpcLabels,
    /// `service/method`, the span's name.
    span_name: String,
}

impl KnownMethod {
    /// The method a gRPC path names, from the descriptors, or `unknown` for a path no component
    /// serves.
    fn of(path: &str) -> &'static KnownMethod {
        static METHODS: LazyLock<HashMap<String, KnownMethod>> = LazyLock::new(|| {
            let mut methods = HashMap::new();
            let mut add = |service: &str, method: &str, kind: &'static str| {
                let path = format!("/{service}/{method}");
                // Leaked once at start, a few bytes per method: every call's labels borrow them.
                let service: &'static str = Box::leak(service.into());
                let method: &'static str = Box::leak(method.into());
                methods.insert(path, KnownMethod::new(service, method, kind));
            };
            for service in palisade_proto::descriptor_pool().services() {
                for method in service.methods() {
                    let kind = match (method.is_client_streaming(), method.is_server_streaming()) {
                        (false, false) => "unary",
                        (true, false) => "client_stream",
                        (false, true) => "server_stream",
                        (true, true) => "bidi_stream",
                    };
                    add(service.full_name(), method.name(), kind);
                }
            }
            for reflection in ["grpc.reflection.v1", "grpc.reflection.v1alpha"] {
                let service = format!("{reflection}.ServerReflection");
                add(&service, "ServerReflectionInfo", "bidi_stream");
            }
            add("grpc.health.v1.Health", "Watch", "server_stream");
            add("grpc.health.v1.Health", "Check", "unary");
            methods
        });
        static UNKNOWN: LazyLock<KnownMethod> =
            LazyLock::new(|| KnownMethod::new("unknown", "unknown", "unknown"));
        METHODS.get(path).unwrap_or(&UNKNOWN)
    }

    fn new(service: &'static str, method: &'static str, kind: &'static str) -> KnownMethod {
        KnownMethod {
            labels: GrpcLabels {
                grpc_type: kind,
                grpc_service: service,
                grpc_method: method,
            },
            span_name: format!("{service}/{method}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        fmt::Write,
        sync::{Arc, Mutex},
    };

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Collects every event as `target field=value ...`.
    struct Events(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Fields(String);
            impl tracing::field::Visit for Fields {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    let _ = write!(self.0, " {}={value:?}", field.name());
                }
            }
            let mut fields = Fields(event.metadata().target().to_owned());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }

    async fn served(path: &str, access_log: bool) -> Vec<String> {
        let events = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Events(events.clone()));
        let _default = tracing::subscriber::set_default(subscriber);
        let metrics = palisade_telemetry::ComponentMetrics::new("test");
        let mut layer = ServerObserveLayer::new("test", metrics.rpc.server.clone());
        if access_log {
            layer = layer.logging_access();
        }
        let mut observed = layer.layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(tonic::Status::not_found("no such user").into_http())
        }));
        let request = http::Request::builder().uri(path).body(()).unwrap();
        drop(observed.call(request).await.unwrap());
        events.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_handler_that_panics_answers_internal_and_is_counted_so() {
        let metrics = palisade_telemetry::ComponentMetrics::new("test");
        let layer = ServerObserveLayer::new("test", metrics.rpc.server.clone());
        let mut observed = layer.layer(tower::service_fn(|_: http::Request<()>| async {
            if true {
                panic!("a bug");
            }
            Ok::<_, Infallible>(http::Response::new(Body::default()))
        }));
        let request = (http::Request::builder())
            .uri("/palisade.identity.v1.UserService/GetUser")
            .body(())
            .unwrap();

        let response = observed.call(request).await.unwrap();
        assert_eq!(
            status_code(response.headers()),
            Some(tonic::Code::Internal as i32)
        );
        drop(response);
        let encoded = metrics.encode();
        assert!(
            encoded.contains("grpc_method=\"GetUser\",grpc_code=\"Internal\""),
            "{encoded}"
        );
    }

    #[tokio::test]
    async fn the_access_log_has_one_line_per_call_with_bounded_method_names() {
        let lines = served("/palisade.identity.v1.UserService/GetUser", true).await;
        let access: Vec<_> = lines
            .iter()
            .filter(|line| line.starts_with("palisade::access"))
            .collect();
        assert_eq!(access.len(), 1, "{lines:?}");
        for part in [
            "method=palisade.identity.v1.UserService/GetUser",
            "tenant=\"anonymous\"",
            "code=\"NotFound\"",
            "latency_us=",
        ] {
            assert!(access[0].contains(part), "{part} in {}", access[0]);
        }
        let made_up = served("/made.up.Service/Method", true).await;
        assert!(
            made_up
                .iter()
                .any(|line| line.contains("method=unknown/unknown")),
            "{made_up:?}"
        );
        assert!(
            served("/palisade.identity.v1.UserService/GetUser", false)
                .await
                .iter()
                .all(|line| !line.starts_with("palisade::access"))
        );
    }
}
