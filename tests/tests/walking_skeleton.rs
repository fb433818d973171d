//! The walking skeleton, end to end through the gateway's public port: reflection, health,
//! tenants created and listed with the operator key, the audit event that follows through the
//! outbox, and the status page built from real health probes (the mesh's addresses on it only
//! for operators).

mod common;
mod identity_kit;

use common::{audit_events_arrived, expect_code, new_tenant, reason, tenant_with_admin};
use palisade_proto::palisade::{
    compliance::v1::{ListAuditEventsRequest, audit_service_client::AuditServiceClient},
    identity::v1::{
        GetTenantRequest, ListTenantsRequest, Plan, tenant_service_client::TenantServiceClient,
    },
    observability::v1::{
        GetStatusRequest, MeshStatus, ServingState, status_service_client::StatusServiceClient,
    },
};
use palisade_testkit::{Mesh, with_api_key};
use tonic::Code;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_created_listed_and_audited_through_the_gateway() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let mut tenants = TenantServiceClient::new(mesh.gateway());

        let created = tenants
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
            .await?
            .into_inner();
        assert_eq!(created.name, "tenants/acme");
        assert_eq!(created.plan(), Plan::Professional);

        let fetched = tenants
            .get_tenant(mesh.as_operator(GetTenantRequest {
                name: "tenants/acme".into(),
            }))
            .await?;
        assert_eq!(fetched.into_inner(), created);

        let duplicate = tenants
            .create_tenant(mesh.as_operator(new_tenant("acme", "Again", Plan::Free)))
            .await;
        expect_code(duplicate, Code::AlreadyExists);

        // The audit event travels identity → outbox → relay → compliance.
        let events = audit_events_arrived(&mesh, "acme").await?;
        let mut audit = AuditServiceClient::new(mesh.gateway());
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].action, "identity.tenants.create");
        assert_eq!(events[0].resource, "tenants/acme");
        assert_eq!(events[0].sequence, 1);
        assert_eq!(
            events[0].actor.as_ref().map(|a| a.tenant_id.as_str()),
            Some("system")
        );
        assert!(!events[0].request_id.is_empty());

        let filtered = audit
            .list_audit_events(mesh.as_operator(ListAuditEventsRequest {
                parent: "tenants/acme".into(),
                filter: r#"action = "identity.tenants.delete""#.into(),
                ..Default::default()
            }))
            .await?;
        assert!(filtered.into_inner().audit_events.is_empty());
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_lists_are_paginated() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        for id in ["alpha", "bravo", "charlie"] {
            tenants
                .create_tenant(mesh.as_operator(new_tenant(id, id, Plan::Standard)))
                .await?;
        }
        let filter = r#"plan = "PLAN_STANDARD""#.to_owned();
        let mut names = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListTenantsRequest {
                page_size: 2,
                page_token,
                filter: filter.clone(),
            };
            let page = tenants
                .list_tenants(mesh.as_operator(request))
                .await?
                .into_inner();
            assert!(page.tenants.len() <= 2);
            names.extend(page.tenants.into_iter().map(|t| t.name));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        assert_eq!(names, ["tenants/alpha", "tenants/bravo", "tenants/charlie"]);

        // Unfiltered, the operator also sees the system tenant.
        let all = tenants
            .list_tenants(mesh.as_operator(ListTenantsRequest::default()))
            .await?
            .into_inner();
        assert_eq!(all.tenants.len(), 4);
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_required_and_checked() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let mut tenants = TenantServiceClient::new(mesh.gateway());

    let anonymous = tenants.list_tenants(ListTenantsRequest::default()).await;
    assert_eq!(
        reason(&expect_code(anonymous, Code::Unauthenticated)),
        "UNAUTHENTICATED"
    );

    let forged = format!("pal_{}_{}", "0".repeat(32), "1".repeat(64));
    let bad_key = tenants
        .list_tenants(with_api_key(ListTenantsRequest::default(), &forged))
        .await;
    assert_eq!(
        reason(&expect_code(bad_key, Code::Unauthenticated)),
        "INVALID_API_KEY"
    );

    // Claiming a tenant in metadata is no credential: without a key it is refused ...
    let mut claimed = tonic::Request::new(ListTenantsRequest::default());
    claimed
        .metadata_mut()
        .insert("palisade-tenant-id", "system".parse()?);
    claimed
        .metadata_mut()
        .insert("palisade-principal-id", "someone".parse()?);
    claimed
        .metadata_mut()
        .insert("palisade-principal-type", "api-key".parse()?);
    expect_code(tenants.list_tenants(claimed).await, Code::Unauthenticated);

    // ... and with a key, the verified context wins over any forged one, in either spelling.
    let mut forged = mesh.as_operator(new_tenant("forged", "Forged", Plan::Free));
    forged
        .metadata_mut()
        .insert("palisade-tenant-id", "victim".parse()?);
    forged
        .metadata_mut()
        .insert("palisade-principal-id", "mallory".parse()?);
    forged
        .metadata_mut()
        .insert("palisade-principal-type", "user".parse()?);
    forged
        .metadata_mut()
        .insert("grpc-metadata-palisade-tenant-id", "victim".parse()?);
    tenants.create_tenant(forged).await?;
    let events = audit_events_arrived(&mesh, "forged").await?;
    let actor = events[0].actor.clone().expect("the event names its actor");
    assert_eq!(actor.tenant_id, "system");
    assert_eq!(
        actor.r#type(),
        palisade_proto::palisade::common::v1::PrincipalType::ApiKey
    );
    assert!(
        mesh.operator_key().contains(&actor.id),
        "the operator's key id, not the forged principal"
    );
    mesh.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reflects_the_whole_mesh_and_reports_status() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;

    let mut reflection = ServerReflectionClient::new(mesh.gateway());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let response = responses.message().await?.expect("one reflection response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let services: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    // Services of internal methods only are for mesh components, not routed here.
    for internal in [
        "palisade.identity.v1.AuthorizationService",
        "palisade.identity.v1.EdgeService",
        "palisade.identity.v1.TenantDataService",
    ] {
        assert!(
            !services.iter().any(|s| s == internal),
            "{internal} listed in {services:?}"
        );
    }
    for expected in [
        "palisade.identity.v1.TenantService",
        "palisade.identity.v1.UserService",
        "palisade.identity.v1.AuthService",
        "palisade.identity.v1.ApiKeyService",
        "palisade.identity.v1.RoleService",
        "palisade.compliance.v1.AuditService",
        "palisade.observability.v1.StatusService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} missing from {services:?}"
        );
    }

    // Nor are their files described (tonic's reflection ends the stream with NOT_FOUND).
    for symbol in [
        "palisade.identity.v1.EdgeService",
        "palisade.identity.v1.ReportUsageRequest",
        "palisade.identity.v1.UserService",
    ] {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())),
        };
        let mut responses = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await?
            .into_inner();
        match responses.message().await {
            Err(status) => {
                assert_eq!(status.code(), Code::NotFound, "{symbol}");
                assert!(!symbol.ends_with("UserService"), "{symbol}: {status:?}");
            }
            Ok(response) => {
                let response = response.and_then(|response| response.message_response);
                assert!(
                    matches!(response, Some(MessageResponse::FileDescriptorResponse(_))),
                    "{symbol}: {response:?}"
                );
                assert!(symbol.ends_with("UserService"), "{symbol} described");
            }
        }
    }

    let mut health = tonic_health::pb::health_client::HealthClient::new(mesh.gateway());
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?
        .into_inner();
    assert_eq!(
        answer.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    // Public: no credential needed.
    let mut status = StatusServiceClient::new(mesh.gateway());
    let report = status.get_status(GetStatusRequest {}).await?.into_inner();
    assert_eq!(report.overall(), ServingState::Serving, "{report:?}");
    // A round of probes answers for a second, with the time it ran.
    let again = status.get_status(GetStatusRequest {}).await?.into_inner();
    assert_eq!(again.check_time, report.check_time);
    let components: Vec<_> = report
        .components
        .iter()
        .map(|c| c.component.as_str())
        .collect();
    assert_eq!(
        components,
        ["identity", "compliance", "observability", "gateway"]
    );
    // The mesh's addresses are for the platform's operators only, not for strangers nor for
    // a tenant's users.
    let endpoints = |report: MeshStatus| -> Vec<String> {
        report.components.into_iter().map(|c| c.endpoint).collect()
    };
    assert_eq!(endpoints(report), ["", "", "", ""]);
    tenant_with_admin(&mesh, "acme", "ada@example.com", identity_kit::PASSWORD).await?;
    let (token, _) = identity_kit::login(&mesh, "acme", "ada@example.com").await?;
    let as_user = status
        .get_status(identity_kit::with_bearer(GetStatusRequest {}, &token))
        .await?;
    assert_eq!(endpoints(as_user.into_inner()), ["", "", "", ""]);
    let as_operator = status
        .get_status(mesh.as_operator(GetStatusRequest {}))
        .await?;
    assert!(
        endpoints(as_operator.into_inner())
            .iter()
            .all(|endpoint| !endpoint.is_empty())
    );
    mesh.stop().await
}
