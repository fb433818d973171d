//! Every component's admin port: Prometheus metrics that count real traffic with the
//! go-grpc-prometheus names, `/healthz`, and a `/readyz` (and gRPC health) that follows the
//! component's database and says so when the component drains.

mod common;

use std::time::Duration;

use common::{DynamicCodec, dynamic_request, new_tenant};
use palisade_proto::palisade::{
    identity::v1::{ListTenantsRequest, Plan, tenant_service_client::TenantServiceClient},
    observability::v1::{GetStatusRequest, status_service_client::StatusServiceClient},
};
use palisade_testkit::{Component, Mesh, eventually, http_get, http_request};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const ALL: [Component; 4] = [
    Component::Gateway,
    Component::Identity,
    Component::Compliance,
    Component::Observability,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_component_serves_metrics_health_and_readiness() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let mut tenants = TenantServiceClient::new(mesh.gateway());
    tenants
        .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Free)))
        .await?;
    tenants
        .list_tenants(mesh.as_operator(ListTenantsRequest::default()))
        .await?;
    let _ = tenants.list_tenants(ListTenantsRequest::default()).await; // UNAUTHENTICATED
    StatusServiceClient::new(mesh.gateway())
        .get_status(GetStatusRequest {})
        .await?;

    for component in ALL {
        let name = component.name();
        assert_eq!(
            mesh.admin_get(component, "/healthz").await?.0,
            200,
            "{name} /healthz"
        );
        assert_eq!(
            mesh.admin_get(component, "/readyz").await?.0,
            200,
            "{name} /readyz"
        );
        let (status, metrics) = mesh.admin_get(component, "/metrics").await?;
        assert_eq!(status, 200, "{name} /metrics");
        for family in [
            "grpc_server_started_total",
            "grpc_server_handled_total",
            "grpc_server_handling_seconds_bucket",
            "palisade_certificate_expiry_timestamp_seconds",
        ] {
            assert!(
                metrics.contains(family),
                "{name} lacks {family}:\n{metrics}"
            );
        }
    }

    let identity = mesh.admin_get(Component::Identity, "/metrics").await?.1;
    let created = r#"grpc_server_handled_total{component="identity",grpc_type="unary",grpc_service="palisade.identity.v1.TenantService",grpc_method="CreateTenant",grpc_code="OK"} 1"#;
    assert!(identity.contains(created), "{identity}");
    assert!(identity.contains("palisade_outbox_depth"), "{identity}");
    assert!(
        identity.contains("palisade_db_pool_connections"),
        "{identity}"
    );

    // Made-up methods are counted under one label, whatever the client sends.
    for made_up in ["/made.up.Service/One", "/made.up.Service/Two"] {
        let refused = http_request(
            mesh.addr(Component::Gateway),
            "POST",
            made_up,
            &[("content-type", "application/grpc-web+proto")],
            &[0, 0, 0, 0, 0],
        )
        .await?;
        assert_eq!(refused.status, 200, "{}", refused.text());
    }
    let gateway = mesh.admin_get(Component::Gateway, "/metrics").await?.1;
    assert!(!gateway.contains("made.up"), "{gateway}");
    assert!(gateway.contains(r#"grpc_server_handled_total{component="gateway",grpc_type="unknown",grpc_service="unknown",grpc_method="unknown",grpc_code="Unimplemented"} 2"#), "{gateway}");
    assert!(
        gateway.contains(r#"grpc_code="Unauthenticated""#),
        "{gateway}"
    );
    assert!(gateway.contains(r#"palisade_gateway_tenant_requests_total{component="gateway",tenant="system",grpc_code="OK"}"#), "{gateway}");
    // The gateway's calls into the mesh are client metrics.
    assert!(gateway.contains(r#"grpc_client_handled_total{component="gateway",grpc_type="unary",grpc_service="palisade.identity.v1.ApiKeyService",grpc_method="VerifyApiKey",grpc_code="OK"}"#), "{gateway}");
    mesh.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let file = mesh.data_dir().join("compliance.db");
    let moved = mesh.data_dir().join("compliance.db.away");
    let health = HealthClient::new(mesh.direct(Component::Compliance, "gateway").await?);

    std::fs::rename(&file, &moved)?;
    // On a loaded machine a check may first time out (also a 503, saying so); the one that
    // names the database is awaited.
    let (status, body) = eventually(Duration::from_secs(15), || async {
        let answer = mesh.admin_get(Component::Compliance, "/readyz").await?;
        Ok((answer.0 == 503 && answer.1.contains("compliance.db")).then_some(answer))
    })
    .await?;
    assert_eq!(status, 503);
    assert!(body.contains("compliance.db"), "{body}");
    let answer = health
        .clone()
        .check(HealthCheckRequest::default())
        .await?
        .into_inner();
    assert_eq!(answer.status, 2, "gRPC health is NOT_SERVING too");

    std::fs::rename(&moved, &file)?;
    eventually(Duration::from_secs(15), || async {
        Ok((mesh.admin_get(Component::Compliance, "/readyz").await?.0 == 200).then_some(()))
    })
    .await?;
    let answer = health
        .clone()
        .check(HealthCheckRequest::default())
        .await?
        .into_inner();
    assert_eq!(answer.status, 1, "SERVING again");
    mesh.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_component_is_not_ready() -> anyhow::Result<()> {
    let mut mesh = Mesh::builder().start().await?;
    for component in [Component::Identity, Component::Gateway] {
        // A login whose request stream stays open: the call is in flight at the gateway and
        // at identity (which waits for the stream's end) until the sender is dropped.
        let (method, login) = dynamic_request(
            "palisade.identity.v1.AuthService/Login",
            r#"{"tenantId": "acme", "email": "ada@example.com", "password": "not this one"}"#,
        );
        let (sender, requests) = tokio::sync::mpsc::channel(1);
        sender.send(login).await?;
        let mut grpc = tonic::client::Grpc::new(mesh.gateway());
        let call = tokio::spawn(async move {
            grpc.ready()
                .await
                .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
            let path =
                http::uri::PathAndQuery::from_static("/palisade.identity.v1.AuthService/Login");
            let requests = tokio_stream::wrappers::ReceiverStream::new(requests);
            grpc.client_streaming(
                tonic::Request::new(requests),
                path,
                DynamicCodec(method.output()),
            )
            .await
        });
        eventually(Duration::from_secs(10), || async {
            let started = mesh
                .unary_calls_started(
                    Component::Identity,
                    "palisade.identity.v1.AuthService",
                    "Login",
                )
                .await?;
            Ok((started > 0).then_some(()))
        })
        .await?;
        // Ready first (the gateway may still be seeing identity's restart).
        let admin = mesh.admin_addr(component);
        eventually(Duration::from_secs(10), || async {
            Ok((http_get(admin, "/readyz").await?.0 == 200).then_some(()))
        })
        .await?;

        let (stopped, seen) = tokio::join!(mesh.stop_component(component), async move {
            let seen = eventually(Duration::from_secs(10), || async {
                let answer = http_get(admin, "/readyz").await?;
                Ok((answer.0 != 200).then_some(answer))
            })
            .await;
            // The call may end now, and the drain with it.
            drop(sender);
            seen
        });
        stopped?;
        let (status, body) = seen?;
        let name = component.name();
        assert_eq!(status, 503, "{name}: {body}");
        assert!(
            body.contains(palisade_telemetry::DRAINING),
            "{name}: {body}"
        );
        let _ = call.await?;
        mesh.restart(component).await?;
    }
    mesh.stop().await
}
