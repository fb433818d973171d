//! Telemetry for every component (DESIGN §4.7): logs through `tracing` (pretty in dev, JSON
//! lines in serve), OpenTelemetry traces exported over OTLP when configured, W3C trace-context
//! propagation helpers, Prometheus metrics, and the admin HTTP port (`/metrics`, `/healthz`,
//! `/readyz`).

mod admin;
mod logging;
mod metrics;
mod propagation;

pub use admin::{DRAINING, Readiness, serve_admin};
pub use logging::{LogFormat, Telemetry, TelemetryConfig, init, init_logging, init_test_logging};
pub use metrics::{
    ComponentMetrics, GrpcLabels, LabeledCounter, RpcMetrics, SideMetrics, TenantLabels,
};
pub use propagation::{extract_context, inject_context, inject_current, trace_id_of};
