//! No audit event is lost and none is stored twice: with compliance down, events wait in
//! identity's outbox; when it returns, every one arrives exactly once, in one unbroken chain.

mod common;

use std::{collections::HashSet, time::Duration};

use common::new_tenant;
use palisade_proto::palisade::{
    compliance::v1::{
        AuditEvent, ListAuditEventsRequest, audit_service_client::AuditServiceClient,
    },
    identity::v1::{Plan, tenant_service_client::TenantServiceClient},
};
use palisade_testkit::{Component, Mesh, eventually};

const TENANTS: &[&str] = &["before", "during-1", "during-2", "during-3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_while_compliance_is_down_arrive_exactly_once() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mut mesh = builder.start().await?;
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        tenants
            .create_tenant(mesh.as_operator(new_tenant("before", "Before", Plan::Free)))
            .await?;
        eventually(Duration::from_secs(10), || async {
            Ok((!list_events(&mesh, &["before"]).await?.is_empty()).then_some(()))
        })
        .await?;

        mesh.stop_component(Component::Compliance).await?;
        for id in ["during-1", "during-2", "during-3"] {
            tenants
                .create_tenant(mesh.as_operator(new_tenant(id, id, Plan::Free)))
                .await?;
        }
        // Let the relay fail and retry a few times while compliance is away.
        tokio::time::sleep(Duration::from_millis(800)).await;
        mesh.restart(Component::Compliance).await?;

        eventually(Duration::from_secs(15), || async {
            Ok((list_events(&mesh, TENANTS).await?.len() >= 4).then_some(()))
        })
        .await?;
        // Give a duplicate delivery time to show up if there were one.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let events = list_events(&mesh, TENANTS).await?;
        assert_eq!(events.len(), 4, "{events:#?}");
        let ids: HashSet<_> = events.iter().map(|e| e.event_id.clone()).collect();
        assert_eq!(ids.len(), 4, "an event was stored twice");
        for event in &events {
            assert_eq!(
                event.sequence, 1,
                "each tenant's chain starts at 1: {event:?}"
            );
            assert_eq!(event.previous_hash, vec![0; 32]);
        }
        mesh.stop().await?;
    }
    Ok(())
}

/// Tenant-creation events of the given tenants, as compliance lists them.
async fn list_events(mesh: &Mesh, tenant_ids: &[&str]) -> anyhow::Result<Vec<AuditEvent>> {
    let mut audit = AuditServiceClient::new(mesh.gateway());
    let mut events = Vec::new();
    for id in tenant_ids {
        let request = ListAuditEventsRequest {
            parent: format!("tenants/{id}"),
            ..Default::default()
        };
        match audit.list_audit_events(mesh.as_operator(request)).await {
            Ok(response) => events.extend(response.into_inner().audit_events),
            // While compliance restarts, the gateway answers UNAVAILABLE: not yet.
            Err(status) if status.code() == tonic::Code::Unavailable => return Ok(Vec::new()),
            Err(status) => return Err(status.into()),
        }
    }
    Ok(events)
}
