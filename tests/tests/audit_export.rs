//! `ExportAuditEvents`, a server stream through the gateway: every event of a tenant in chain
//! order, across the store's read batches; the same filters as listing; bad input refused with
//! field violations before the stream starts.

mod common;

use common::{expect_code, reason, violated_fields};
use palisade_proto::palisade::compliance::v1::{
    AppendEventsRequest, AuditEvent, ExportAuditEventsRequest, Outcome,
    audit_service_client::AuditServiceClient,
};
use palisade_testkit::{Component, Mesh};
use tonic::{Code, transport::Channel};

/// More than two of the export's store batches (500), and not a multiple of one.
const EVENTS: usize = 1203;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_streams_in_chain_order() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        // Events arrive as a producing component delivers them: `AppendEvents` over mTLS.
        let mut producer =
            AuditServiceClient::new(mesh.direct(Component::Compliance, "identity").await?);
        let events: Vec<_> = (0..EVENTS).map(|i| event("acme", i)).collect();
        for batch in events.chunks(1000) {
            let request = AppendEventsRequest {
                events: batch.to_vec(),
            };
            producer.append_events(request).await?;
        }
        producer
            .append_events(AppendEventsRequest {
                events: vec![event("globex", EVENTS)],
            })
            .await?;

        let exported = export(&mesh, "tenants/acme", "").await?;
        assert_eq!(exported.len(), EVENTS, "{backend}");
        let mut previous_hash = vec![0; 32];
        for (index, event) in exported.iter().enumerate() {
            assert_eq!(event.sequence, index as i64 + 1);
            assert_eq!(event.event_id, events[index].event_id);
            assert_eq!(
                event.previous_hash, previous_hash,
                "chain broken at {index}"
            );
            assert_eq!(event.hash.len(), 32);
            assert_eq!(
                event.name,
                format!("tenants/acme/auditEvents/{}", event.event_id)
            );
            previous_hash = event.hash.clone();
        }

        // The filter applies before batching: every match, still in chain order.
        let deletes = export(&mesh, "tenants/acme", r#"action = "demo.things.delete""#).await?;
        assert_eq!(deletes.len(), EVENTS / 2);
        assert!(deletes.iter().all(|e| e.action == "demo.things.delete"));
        assert!(deletes.windows(2).all(|w| w[0].sequence < w[1].sequence));

        let other = export(&mesh, "tenants/globex", "").await?;
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].sequence, 1);
        assert!(export(&mesh, "tenants/nobody", "").await?.is_empty());
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_exports_fail_before_the_stream_starts() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let mut audit = AuditServiceClient::new(mesh.gateway());

    let cases = [
        ("acme", "", "parent"),
        ("tenants/Not_OK", "", "parent"),
        ("tenants/acme", r#"colour = "red""#, "filter"),
        ("tenants/acme", r#"occur_time >= "yesterday""#, "filter"),
    ];
    for (parent, filter, field) in cases {
        let result = audit
            .export_audit_events(mesh.as_operator(request(parent, filter)))
            .await;
        let status = expect_code(result.map(drop), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), [field], "{parent} {filter}");
    }

    let anonymous = audit.export_audit_events(request("tenants/acme", "")).await;
    let status = expect_code(anonymous.map(drop), Code::Unauthenticated);
    assert_eq!(reason(&status), "UNAUTHENTICATED");
    mesh.stop().await
}

/// The whole export of `parent` through the gateway, as the operator.
async fn export(mesh: &Mesh, parent: &str, filter: &str) -> anyhow::Result<Vec<AuditEvent>> {
    let mut audit: AuditServiceClient<Channel> = AuditServiceClient::new(mesh.gateway());
    let mut stream = audit
        .export_audit_events(mesh.as_operator(request(parent, filter)))
        .await?
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await? {
        events.push(event);
    }
    Ok(events)
}

fn request(parent: &str, filter: &str) -> ExportAuditEventsRequest {
    ExportAuditEventsRequest {
        parent: parent.to_owned(),
        filter: filter.to_owned(),
    }
}

/// The `index`th event of a demo producer: creates and deletes, alternating.
fn event(tenant_id: &str, index: usize) -> AuditEvent {
    let verb = if index.is_multiple_of(2) {
        "create"
    } else {
        "delete"
    };
    AuditEvent {
        event_id: format!("00000000-0000-7000-8000-{index:012x}"),
        tenant_id: tenant_id.to_owned(),
        action: format!("demo.things.{verb}"),
        resource: format!("tenants/{tenant_id}/things/{index}"),
        occur_time: Some(Default::default()),
        source: "identity".to_owned(),
        outcome: Outcome::Success.into(),
        ..AuditEvent::default()
    }
}
