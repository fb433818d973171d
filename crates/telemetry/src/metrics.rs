//! Prometheus metrics, one registry per component (several components share a process in
//! `palisade dev`). RPC metric names and labels follow go-grpc-prometheus, so the common gRPC
//! dashboards work unchanged: `grpc_server_started_total`, `grpc_server_handled_total`,
//! `grpc_server_handling_seconds` (and `grpc_client_*`) by `grpc_type`, `grpc_service`,
//! `grpc_method` (and `grpc_code`).

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, RwLock},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

/// Latency buckets in seconds: sub-millisecond for in-mesh hops up to Prometheus' defaults.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// At most this many distinct tenants get their own gateway label; the rest count as `other`.
const MAX_TENANT_LABELS: usize = 500;

/// A method's labels. Static strings: the methods are known at start (see `palisade-grpc`'s
/// observe layer), so counting a call allocates nothing.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub grpc_type: &'static str,
    pub grpc_service: &'static str,
    pub grpc_method: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcCodeLabels {
    pub grpc_type: &'static str,
    pub grpc_service: &'static str,
    pub grpc_method: &'static str,
    pub grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
    pub grpc_code: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Started/handled/latency/in-flight for one side (server or client).
#[derive(Clone)]
pub struct SideMetrics {
    started: Family<GrpcLabels, Counter>,
    handled: Family<GrpcCodeLabels, Counter>,
    handling_seconds: HistogramFamily<GrpcLabels>,
    in_flight: Family<GrpcLabels, Gauge>,
}

impl SideMetrics {
    fn register(registry: &mut Registry, side: &str) -> SideMetrics {
        let metrics = SideMetrics {
            started: Family::default(),
            handled: Family::default(),
            handling_seconds: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
        };
        registry.register(
            format!("grpc_{side}_started"),
            format!("RPCs started on the {side}"),
            metrics.started.clone(),
        );
        registry.register(
            format!("grpc_{side}_handled"),
            format!("RPCs completed on the {side}, by status code"),
            metrics.handled.clone(),
        );
        registry.register_with_unit(
            format!("grpc_{side}_handling"),
            format!("Time from start to status on the {side}"),
            Unit::Seconds,
            metrics.handling_seconds.clone(),
        );
        registry.register(
            format!("palisade_grpc_{side}_in_flight"),
            format!("RPCs in progress on the {side}"),
            metrics.in_flight.clone(),
        );
        metrics
    }

    pub fn start(&self, labels: &GrpcLabels) {
        self.started.get_or_create(labels).inc();
        self.in_flight.get_or_create(labels).inc();
    }

    pub fn finish(&self, labels: &GrpcLabels, code: &'static str, seconds: f64) {
        self.in_flight.get_or_create(labels).dec();
        self.handling_seconds.get_or_create(labels).observe(seconds);
        let with_code = GrpcCodeLabels {
            grpc_type: labels.grpc_type,
            grpc_service: labels.grpc_service,
            grpc_method: labels.grpc_method,
            grpc_code: code,
        };
        self.handled.get_or_create(&with_code).inc();
    }
}

/// Server and client RPC metrics of a component.
#[derive(Clone)]
pub struct RpcMetrics {
    pub server: SideMetrics,
    pub client: SideMetrics,
}

/// One component's registry and the metrics every component has.
#[derive(Clone)]
pub struct ComponentMetrics {
    registry: Arc<RwLock<Registry>>,
    pub rpc: RpcMetrics,
    tenant_requests: Family<TenantLabels, Counter>,
    known_tenants: Arc<Mutex<HashSet<String>>>,
}

impl ComponentMetrics {
    pub fn new(component: &str) -> ComponentMetrics {
        let mut registry =
            Registry::with_labels([("component".into(), component.to_owned().into())].into_iter());
        let rpc = RpcMetrics {
            server: SideMetrics::register(&mut registry, "server"),
            client: SideMetrics::register(&mut registry, "client"),
        };
        let tenant_requests = Family::default();
        registry.register(
            "palisade_gateway_tenant_requests",
            "Requests through the gateway per tenant and status code (at most 500 tenants; then `other`)",
            tenant_requests.clone(),
        );
        ComponentMetrics {
            registry: Arc::new(RwLock::new(registry)),
            rpc,
            tenant_requests,
            known_tenants: Arc::default(),
        }
    }

    /// Registers a gauge the component updates itself (outbox depth, pool size, ...).
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let gauge = Gauge::default();
        self.registry
            .write()
            .expect("registry lock")
            .register(name, help, gauge.clone());
        gauge
    }

    /// Registers a float gauge (timestamps, ages in seconds).
    pub fn float_gauge(&self, name: &str, help: &str) -> Gauge<f64, std::sync::atomic::AtomicU64> {
        let gauge = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        self.registry
            .write()
            .expect("registry lock")
            .register(name, help, gauge.clone());
        gauge
    }

    /// Registers a counter with one label whose values are fixed strings in the code (reasons,
    /// outcomes), so its series stay bounded by construction.
    pub fn labeled_counter(&self, name: &str, help: &str, label: &'static str) -> LabeledCounter {
        let family = Family::default();
        self.registry
            .write()
            .expect("registry lock")
            .register(name, help, family.clone());
        LabeledCounter { family, label }
    }

    /// Counts one gateway request for `tenant` (`anonymous` for public calls).
    pub fn count_tenant_request(&self, tenant: &str, code: &str) {
        let tenant = {
            let mut known = self.known_tenants.lock().expect("tenant label lock");
            if known.contains(tenant)
                || (known.len() < MAX_TENANT_LABELS && known.insert(tenant.to_owned()))
            {
                tenant.to_owned()
            } else {
                "other".to_owned()
            }
        };
        self.tenant_requests
            .get_or_create(&TenantLabels {
                tenant,
                grpc_code: code.to_owned(),
            })
            .inc();
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.read().expect("registry lock");
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

/// A counter by one label with a fixed set of values (see [`ComponentMetrics::labeled_counter`]).
#[derive(Clone, Debug)]
pub struct LabeledCounter {
    family: Family<[(&'static str, &'static str); 1], Counter>,
    label: &'static str,
}

impl LabeledCounter {
    pub fn inc(&self, value: &'static str) {
        self.family.get_or_create(&[(self.label, value)]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_go_grpc_prometheus() {
        let metrics = ComponentMetrics::new("identity");
        let labels = GrpcLabels {
            grpc_type: "unary",
            grpc_service: "palisade.identity.v1.TenantService",
            grpc_method: "GetTenant",
        };
        metrics.rpc.server.start(&labels);
        metrics.rpc.server.finish(&labels, "OK", 0.002);
        let text = metrics.encode();
        assert!(text.contains(r#"grpc_server_handled_total{component="identity",grpc_type="unary",grpc_service="palisade.identity.v1.TenantService",grpc_method="GetTenant",grpc_code="OK"} 1"#), "{text}");
        assert!(
            text.contains("grpc_server_handling_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("grpc_server_started_total"), "{text}");
    }

    #[test]
    fn labeled_counters_count_by_value() {
        let metrics = ComponentMetrics::new("gateway");
        let throttled = metrics.labeled_counter("palisade_throttled", "Refused calls", "reason");
        throttled.inc("rate_limited");
        throttled.inc("rate_limited");
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"palisade_throttled_total{component="gateway",reason="rate_limited"} 2"#
            ),
            "{text}"
        );
    }

    #[test]
    fn tenant_labels_are_bounded() {
        let metrics = ComponentMetrics::new("gateway");
        for i in 0..(MAX_TENANT_LABELS + 10) {
            metrics.count_tenant_request(&format!("t{i}"), "OK");
        }
        let text = metrics.encode();
        assert!(text.contains(r#"tenant="other""#));
        assert_eq!(
            text.matches("palisade_gateway_tenant_requests_total{")
                .count(),
            MAX_TENANT_LABELS + 1
        );
    }
}
