//! The hash chain under concurrency: batches that touch the same tenants in opposite orders,
//! and the same batch delivered twice at once (a relay retry racing its first attempt), all
//! succeed; every event is stored once, and each tenant's chain is contiguous and verifies.

use std::time::SystemTime;

use palisade_compliance::{GENESIS_HASH, canonical_bytes, chain_hash};
use palisade_proto::palisade::compliance::v1::{
    AppendEventsRequest, AuditEvent, ListAuditEventsRequest,
    audit_service_client::AuditServiceClient,
};
use palisade_testkit::{Component, Mesh};

fn event(tenant: &str, action: &str) -> AuditEvent {
    AuditEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        tenant_id: tenant.to_owned(),
        action: action.to_owned(),
        resource: format!("tenants/{tenant}"),
        occur_time: Some(prost_types::Timestamp::from(SystemTime::now())),
        source: "identity".to_owned(),
        ..AuditEvent::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_keep_every_chain_whole() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        // Appends are internal: a mesh component's certificate, as the relays use.
        let channel = mesh.direct(Component::Compliance, "identity").await?;
        let mut calls = Vec::new();
        for round in 0..10 {
            let forward = vec![
                event("alpha", &format!("a{round}")),
                event("bravo", &format!("b{round}")),
            ];
            let backward = vec![
                event("bravo", &format!("B{round}")),
                event("alpha", &format!("A{round}")),
            ];
            for batch in [forward.clone(), backward, forward] {
                let mut client = AuditServiceClient::new(channel.clone());
                calls.push(tokio::spawn(async move {
                    client
                        .append_events(AppendEventsRequest { events: batch })
                        .await
                }));
            }
        }
        let (mut appended, mut duplicates) = (0, 0);
        for call in calls {
            let response = call
                .await?
                .map_err(|status| anyhow::anyhow!("append failed: {status:?}"))?
                .into_inner();
            appended += response.appended_count;
            duplicates += response.duplicate_count;
        }
        assert_eq!(
            (appended, duplicates),
            (40, 20),
            "each event once; each redelivery counted as a duplicate"
        );

        let channel = mesh.gateway();
        for tenant in ["alpha", "bravo"] {
            let mut audit = AuditServiceClient::new(channel.clone());
            let request = ListAuditEventsRequest {
                parent: format!("tenants/{tenant}"),
                page_size: 1000,
                ..Default::default()
            };
            let events = audit
                .list_audit_events(mesh.as_operator(request))
                .await?
                .into_inner()
                .audit_events;
            assert_eq!(events.len(), 20, "{tenant}");
            let mut previous = GENESIS_HASH.to_vec();
            for (index, stored) in events.iter().enumerate() {
                assert_eq!(
                    stored.sequence,
                    index as i64 + 1,
                    "{tenant}: contiguous sequences"
                );
                assert_eq!(
                    stored.previous_hash, previous,
                    "{tenant}: linked to the previous hash"
                );
                assert_eq!(
                    stored.hash,
                    chain_hash(&previous, &canonical_bytes(stored)),
                    "{tenant}: hash verifies"
                );
                previous = stored.hash.clone();
            }
        }
        mesh.stop().await?;
    }
    Ok(())
}
