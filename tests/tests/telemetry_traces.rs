//! One external call is one trace: an OTLP receiver inside the test collects the spans that
//! a call through gateway → compliance → identity produces, and the outbox relay's delivery is
//! linked back to the call that wrote the audit event.
//!
//! Its own test binary: it installs the process-wide subscriber with an OTLP exporter.

mod common;

use std::{collections::HashMap, sync::Arc, time::Duration};

use common::new_tenant;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use palisade_proto::palisade::{
    compliance::v1::{ListAuditEventsRequest, audit_service_client::AuditServiceClient},
    identity::v1::{Plan, tenant_service_client::TenantServiceClient},
};
use palisade_telemetry::{LogFormat, TelemetryConfig};
use palisade_testkit::{
    Mesh, eventually,
    otlp::{OtlpReceiver, attribute},
};

fn request_in_trace<T>(
    message: T,
    mesh: &Mesh,
    trace_id: &str,
    parent_span: &str,
) -> tonic::Request<T> {
    let mut request = mesh.as_operator(message);
    let traceparent = format!("00-{trace_id}-{parent_span}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_is_one_trace_across_the_mesh() -> anyhow::Result<()> {
    let (receiver, endpoint) = OtlpReceiver::start().await?;
    let config = TelemetryConfig {
        otlp_endpoint: Some(endpoint),
        ..TelemetryConfig::new(LogFormat::Pretty, "palisade-test")
    };
    let telemetry = Arc::new(palisade_telemetry::init(config));
    let flush = || {
        let telemetry = telemetry.clone();
        // Flushing blocks until the exporter is done; keep it off the async workers.
        tokio::task::spawn_blocking(move || telemetry.flush())
    };

    let mesh = Mesh::builder().start().await?;
    let create_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut tenants = TenantServiceClient::new(mesh.gateway());
    let create = new_tenant("acme", "Acme", Plan::Free);
    tenants
        .create_tenant(request_in_trace(
            create,
            &mesh,
            create_trace,
            "00f067aa0ba902b7",
        ))
        .await?;

    // gateway → compliance → identity (Check): one trace, parented hop by hop.
    let list_trace = "0af7651916cd43dd8448eb211c80319c";
    let client_span = "b7ad6b7169203331";
    let mut audit = AuditServiceClient::new(mesh.gateway());
    let list = ListAuditEventsRequest {
        parent: "tenants/acme".into(),
        ..Default::default()
    };
    audit
        .list_audit_events(request_in_trace(list, &mesh, list_trace, client_span))
        .await?;

    let list_trace_bytes = hex::decode(list_trace)?;
    let spans = eventually(Duration::from_secs(15), || async {
        flush().await?;
        let spans = receiver.trace(&list_trace_bytes);
        let identity_seen = spans
            .iter()
            .any(|s| s.name == "palisade.identity.v1.AuthorizationService/Check");
        Ok((identity_seen && spans.len() >= 4).then_some(spans))
    })
    .await?;
    let by_id: HashMap<Vec<u8>, &Span> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    let find = |name: &str, kind: SpanKind, component: &str| {
        spans
            .iter()
            .find(|s| {
                s.name == name
                    && s.kind == kind as i32
                    && attribute(s, "palisade.component").as_deref() == Some(component)
            })
            .unwrap_or_else(|| panic!("no {kind:?} span {name} from {component} in {spans:#?}"))
    };
    let list_name = "palisade.compliance.v1.AuditService/ListAuditEvents";
    let check_name = "palisade.identity.v1.AuthorizationService/Check";
    let gateway_server = find(list_name, SpanKind::Server, "gateway");
    let compliance_server = find(list_name, SpanKind::Server, "compliance");
    let compliance_client = find(check_name, SpanKind::Client, "compliance");
    let identity_server = find(check_name, SpanKind::Server, "identity");

    assert_eq!(
        hex::encode(&gateway_server.parent_span_id),
        client_span,
        "the gateway continues the caller's trace"
    );
    // One span per hop through the gateway, as Envoy makes: the backend's continues it.
    assert_eq!(compliance_server.parent_span_id, gateway_server.span_id);
    assert!(
        // (The gateway's own calls, an API key it had to ask identity about, still have one.)
        !spans.iter().any(|s| s.kind == SpanKind::Client as i32
            && s.name == list_name
            && attribute(s, "palisade.component").as_deref() == Some("gateway")),
        "a proxied call has no client span of its own: {spans:#?}"
    );
    assert_eq!(identity_server.parent_span_id, compliance_client.span_id);
    // The Check happens inside the compliance server span (perhaps under handler spans).
    let mut ancestor = compliance_client.parent_span_id.clone();
    while ancestor != compliance_server.span_id {
        ancestor = by_id
            .get(&ancestor)
            .map(|s| s.parent_span_id.clone())
            .expect("Check runs within ListAuditEvents");
    }
    for span in [gateway_server, compliance_server, identity_server] {
        assert_eq!(attribute(span, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(
            attribute(span, "rpc.grpc.status_code").as_deref(),
            Some("0"),
            "{span:#?}"
        );
    }
    assert_eq!(
        attribute(compliance_server, "rpc.service").as_deref(),
        Some("palisade.compliance.v1.AuditService")
    );
    assert_eq!(
        attribute(compliance_server, "rpc.method").as_deref(),
        Some("ListAuditEvents")
    );
    assert_eq!(
        attribute(compliance_server, "palisade.tenant_id").as_deref(),
        Some("system")
    );
    assert_eq!(
        attribute(gateway_server, "palisade.tenant_id").as_deref(),
        Some("system")
    );

    // The relay's delivery of the CreateTenant audit event links back to that call's trace.
    let create_trace_bytes = hex::decode(create_trace)?;
    let relay = eventually(Duration::from_secs(15), || async {
        flush().await?;
        Ok(receiver.spans().into_iter().find(|s| {
            s.name == "outbox.relay" && s.links.iter().any(|l| l.trace_id == create_trace_bytes)
        }))
    })
    .await?;
    let append = receiver.trace(&relay.trace_id).into_iter().find(|s| {
        s.name == "palisade.compliance.v1.AuditService/AppendEvents"
            && s.kind == SpanKind::Server as i32
    });
    assert!(
        append.is_some(),
        "the append is traced under the relay span"
    );

    mesh.stop().await
}
