//! No audit event is lost and none is stored twice: with compliance down, events wait in
//! identity's outbox; when it returns, every one arrives exactly once, in one unbroken chain.

mod common;

use std::{collections::HashSet, time::Duration};

use common::new_tenant;
use palisade_audit::TOPIC;
use palisade_db::outbox;
use palisade_proto::palisade::{
    compliance::v1::{
        AuditEvent, ListAuditEventsRequest, audit_service_client::AuditServiceClient,
    },
    identity::v1::{Plan, tenant_service_client::TenantServiceClient},
};
use palisade_testkit::{Component, Mesh, eventually};
use prost::Message;

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

/// Events compliance will never take (a row that is no audit event, an event it finds
/// malformed) are set aside in identity's `outbox_dead_letters`, and the events behind them
/// still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_compliance_rejects_are_set_aside_and_the_rest_arrive() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        // Planted beneath the API, ahead of a real event: an undecodable row, and an event
        // whose id is no UUID (compliance answers INVALID_ARGUMENT for the whole batch).
        let db = mesh.unrestricted_db(Component::Identity).await?;
        let garbage = uuid::Uuid::now_v7();
        let mut tx = db.begin().await?;
        outbox::enqueue(&mut tx, TOPIC, garbage, b"\xff\xff not protobuf", None).await?;
        let malformed = uuid::Uuid::now_v7();
        let event = AuditEvent {
            event_id: "not-a-uuid".into(),
            tenant_id: "before".into(),
            source: "identity".into(),
            action: "tenant.create".into(),
            ..AuditEvent::default()
        };
        outbox::enqueue(&mut tx, TOPIC, malformed, &event.encode_to_vec(), None).await?;
        tx.commit().await?;

        TenantServiceClient::new(mesh.gateway())
            .create_tenant(mesh.as_operator(new_tenant("before", "Before", Plan::Free)))
            .await?;
        eventually(Duration::from_secs(15), || async {
            Ok((!list_events(&mesh, &["before"]).await?.is_empty()).then_some(()))
        })
        .await?;
        let dead = outbox::dead_letters(&db, Some(TOPIC)).await?;
        let dead_ids: Vec<_> = dead.iter().map(|letter| letter.message.id).collect();
        assert_eq!(dead_ids, [garbage, malformed], "{dead:#?}");
        assert!(dead[0].reason.contains("not an audit event"), "{dead:#?}");
        assert!(dead[1].reason.contains("InvalidArgument"), "{dead:#?}");
        // Deleted once compliance's acknowledgement is back, a moment after it lists the event.
        eventually(Duration::from_secs(5), || async {
            Ok((outbox::depth(&db).await? == 0).then_some(()))
        })
        .await?;
        db.close().await;
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
