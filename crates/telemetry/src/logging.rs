//! The process-wide `tracing` subscriber: an `EnvFilter`, a log formatter, and the
//! OpenTelemetry layer that turns spans into OTLP traces.
//!
//! The OpenTelemetry layer is installed even without an exporter so that trace context always
//! flows (every hop continues the caller's trace id and logs it); spans are exported only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or an explicit endpoint) is set. Sampling follows the standard
//! `OTEL_TRACES_SAMPLER`/`_ARG`; resource attributes `OTEL_SERVICE_NAME`/`OTEL_RESOURCE_ATTRIBUTES`.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::{Level, Metadata};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{self, FilterFn},
    fmt,
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// What to set up.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// The default `service.name` when `OTEL_SERVICE_NAME` is not set.
    pub service_name: String,
    /// Where to send spans (OTLP/gRPC); `None` reads `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// Tracing off entirely: no OpenTelemetry layer (the baseline of the tracing benchmark).
    pub tracing_enabled: bool,
}

impl TelemetryConfig {
    pub fn new(log_format: LogFormat, service_name: &str) -> TelemetryConfig {
        TelemetryConfig {
            log_format,
            service_name: service_name.to_owned(),
            otlp_endpoint: std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .ok()
                .filter(|v| !v.is_empty()),
            tracing_enabled: tracing_wanted(std::env::var("PALISADE_TRACING").ok().as_deref()),
        }
    }
}

/// Whether `PALISADE_TRACING` leaves tracing on: only `off` (any case) switches it off.
fn tracing_wanted(setting: Option<&str>) -> bool {
    !setting.is_some_and(|value| value.trim().eq_ignore_ascii_case("off"))
}

/// Keeps the tracer provider alive; flushes spans on [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports every finished span now (tests and graceful shutdown).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(error) = provider.force_flush()
        {
            eprintln!("flushing spans failed: {error}");
        }
    }

    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
        }
    }
}

/// Installs the global subscriber. A second call in one process (tests) keeps the first.
pub fn init(config: TelemetryConfig) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,hyper=warn"));
    let provider = config.tracing_enabled.then(|| tracer_provider(&config));
    // Spans have their own filter: `RUST_LOG=warn` quietens logs, it must not switch tracing
    // off. Palisade's RPC spans are at INFO; dependencies' internal spans stay out.
    //
    // Each span costs every call (and every poll of an instrumented future enters and exits
    // it), so spans carry what the RPC conventions ask for and no more: no busy/idle timings,
    // no source location, thread or target attributes, and no OpenTelemetry context attached
    // on every enter (nothing here reads `opentelemetry::Context::current()`; trace context
    // goes out through `propagation.rs`, which asks the span itself).
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("palisade"))
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_context_activation(false)
            .with_filter(span_filter())
    });
    let format = match config.log_format {
        LogFormat::Pretty => fmt::layer().with_writer(std::io::stderr).compact().boxed(),
        LogFormat::Json => fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(format.with_filter(filter))
        .with(otel)
        .try_init()
        .is_ok();
    if installed && let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    Telemetry {
        provider: installed.then_some(provider).flatten(),
    }
}

/// What the OpenTelemetry layer sees ([`exported`]). The hint keeps DEBUG and TRACE callsites
/// (h2's and hyper's, on every frame) off before any filter is asked, as a level filter would.
fn span_filter() -> FilterFn<fn(&Metadata<'_>) -> bool> {
    filter::filter_fn(exported as fn(&Metadata<'_>) -> bool).with_max_level_hint(Level::INFO)
}

/// Palisade's own spans at INFO and above, and its events at WARN and above (span events; an
/// error sets the span's status). INFO events, the gateway's access log line of every call
/// among them, are logs: as span events they would repeat the span's own attributes, at a
/// cost per call.
fn exported(metadata: &Metadata<'_>) -> bool {
    let most_verbose = if metadata.is_span() {
        Level::INFO
    } else {
        Level::WARN
    };
    metadata.target().starts_with("palisade") && *metadata.level() <= most_verbose
}

fn tracer_provider(config: &TelemetryConfig) -> SdkTracerProvider {
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &config.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(5))
            .build();
        match exporter {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(error) => eprintln!("otlp exporter for {endpoint} is disabled: {error}"),
        }
    }
    builder.build()
}

/// Logging only (the CLI's short-lived commands).
pub fn init_logging(format: LogFormat) {
    let config = TelemetryConfig {
        tracing_enabled: false,
        ..TelemetryConfig::new(format, "palisade")
    };
    let _ = init(config);
}

/// Logging for tests: written through the harness's capture, `warn` unless `RUST_LOG` says
/// otherwise, and trace context on (so propagation is exercised). Safe to call from every test.
pub fn init_test_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let provider = SdkTracerProvider::builder().build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("palisade-test"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_test_writer().compact())
        .with(otel)
        .try_init();
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::{filter::LevelFilter, layer::Context};

    use super::*;

    /// Names of the spans and messages of the events a layer is shown.
    #[derive(Clone, Default)]
    struct Shown(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> Layer<S> for Shown {
        fn on_new_span(
            &self,
            attributes: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: Context<'_, S>,
        ) {
            let name = attributes.metadata().name();
            self.0.lock().unwrap().push(format!("span {name}"));
        }

        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let level = event.metadata().level();
            let target = event.metadata().target();
            self.0
                .lock()
                .unwrap()
                .push(format!("{level} event from {target}"));
        }
    }

    #[test]
    fn spans_and_warnings_are_exported_not_info_logs() {
        let shown = Shown::default();
        let subscriber =
            tracing_subscriber::registry().with(shown.clone().with_filter(span_filter()));
        assert_eq!(
            tracing::Subscriber::max_level_hint(&subscriber),
            Some(LevelFilter::INFO),
            "DEBUG and TRACE callsites stay off"
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("grpc.server");
            let _inside = span.enter();
            tracing::debug_span!("detail").in_scope(|| {});
            tracing::info!(target: "palisade::access", "call finished");
            tracing::warn!("backend call failed");
            tracing::error!(target: "h2", "not ours");
        });
        assert_eq!(
            *shown.0.lock().unwrap(),
            [
                "span grpc.server",
                "WARN event from palisade_telemetry::logging::tests"
            ]
        );
    }

    #[test]
    fn palisade_tracing_off_switches_tracing_off() {
        assert!(!tracing_wanted(Some("off")));
        assert!(!tracing_wanted(Some("OFF")));
        assert!(tracing_wanted(None));
        assert!(tracing_wanted(Some("on")));
        assert!(tracing_wanted(Some("")));
    }
}
