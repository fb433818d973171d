//! The walls between components: mTLS on every internal port, tenant context accepted only from
//! trusted SPIFFE ids, internal methods closed to outsiders and never routed by the gateway.

mod common;

use common::{expect_code, reason};
use palisade_proto::palisade::{
    compliance::v1::{AppendEventsRequest, audit_service_client::AuditServiceClient},
    identity::v1::{
        ListTenantsRequest, VerifyApiKeyRequest, api_key_service_client::ApiKeyServiceClient,
        tenant_service_client::TenantServiceClient,
    },
};
use palisade_testkit::{Component, Mesh};
use tonic::{Code, transport::Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_ports_refuse_clients_without_a_mesh_certificate() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    for component in [
        Component::Identity,
        Component::Compliance,
        Component::Observability,
    ] {
        // Plaintext h2c is not TLS at all.
        let plaintext =
            Endpoint::from_shared(format!("http://{}", mesh.addr(component)))?.connect_lazy();
        let result = HealthClient::new(plaintext)
            .check(HealthCheckRequest::default())
            .await;
        assert!(result.is_err(), "{} answered plaintext", component.name());

        // A genuine mesh certificate gets through.
        let direct = mesh.direct(component, "gateway").await?;
        let answer = HealthClient::new(direct)
            .check(HealthCheckRequest::default())
            .await?;
        assert_eq!(
            answer.into_inner().status,
            1,
            "{} is not serving",
            component.name()
        );
    }
    mesh.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_mesh_members_cannot_assert_tenant_context() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    mesh.issue_cert("batch-job", "workload/batch-job")?;
    let channel = mesh.direct(Component::Identity, "batch-job").await?;

    // A mesh certificate is enough for health ...
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await?;

    // ... but not to speak for a tenant.
    let mut request = tonic::Request::new(ListTenantsRequest::default());
    request
        .metadata_mut()
        .insert("palisade-tenant-id", "system".parse()?);
    request
        .metadata_mut()
        .insert("palisade-principal-id", "forged".parse()?);
    request
        .metadata_mut()
        .insert("palisade-principal-type", "api-key".parse()?);
    let denied = TenantServiceClient::new(channel.clone())
        .list_tenants(request)
        .await;
    assert_eq!(
        reason(&expect_code(denied, Code::PermissionDenied)),
        "UNTRUSTED_CONTEXT_PEER"
    );

    // Nor to call internal methods.
    let verify = ApiKeyServiceClient::new(channel)
        .verify_api_key(VerifyApiKeyRequest { key: "x".into() })
        .await;
    assert_eq!(
        reason(&expect_code(verify, Code::PermissionDenied)),
        "INTERNAL_METHOD"
    );

    // A trusted component that is not a listed caller is refused too (VerifyApiKey: gateway only).
    let as_compliance = mesh.direct(Component::Identity, "compliance").await?;
    let verify = ApiKeyServiceClient::new(as_compliance)
        .verify_api_key(VerifyApiKeyRequest { key: "x".into() })
        .await;
    assert_eq!(
        reason(&expect_code(verify, Code::PermissionDenied)),
        "INTERNAL_METHOD"
    );
    mesh.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_never_routes_internal_methods() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let mut audit = AuditServiceClient::new(mesh.gateway());
    let forged = audit
        .append_events(mesh.as_operator(AppendEventsRequest::default()))
        .await;
    assert_eq!(
        reason(&expect_code(forged, Code::PermissionDenied)),
        "INTERNAL_METHOD"
    );

    // Nor may a component other than identity, the producer of audit events, append any: the
    // gateway faces the internet, and a log anyone in the mesh can write proves nothing.
    for impostor in ["gateway", "observability"] {
        let channel = mesh.direct(Component::Compliance, impostor).await?;
        let forged = AuditServiceClient::new(channel)
            .append_events(AppendEventsRequest::default())
            .await;
        assert_eq!(
            reason(&expect_code(forged, Code::PermissionDenied)),
            "INTERNAL_METHOD",
            "{impostor}"
        );
    }
    mesh.stop().await
}
