//! The hash chain under concurrency: batches that touch the same tenants in opposite orders,
//! and the same batch delivered twice at once (a relay retry racing its first attempt), all
//! succeed; every event is stored once, and each tenant's chain is contiguous and verifies. A
//! large batch chains each tenant's events in the batch's order, each id once. The database
//! refuses to change or delete stored events.

use std::time::SystemTime;

use palisade_compliance::{GENESIS_HASH, canonical_bytes, chain_hash};
use palisade_proto::palisade::compliance::v1::{
    AppendEventsRequest, AuditEvent, ListAuditEventsRequest, Outcome, RequestOrigin,
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
        outcome: Outcome::Success.into(),
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

        for tenant in ["alpha", "bravo"] {
            let events = stored_chain(&mesh, tenant).await?;
            assert_eq!(events.len(), 20, "{tenant}");
            assert_chain_verifies(tenant, &events);
        }
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_chains_each_tenant_in_order_and_each_id_once() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let channel = mesh.direct(Component::Compliance, "identity").await?;
        let mut client = AuditServiceClient::new(channel);
        // An empty attribute (a user created with no roles) is dropped as the event is
        // appended: other languages' encoders would write it otherwise than prost.
        let mut earlier = event("alpha", "earlier");
        earlier.attributes = [("roles", ""), ("kept", "yes")]
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .into();
        client
            .append_events(AppendEventsRequest {
                events: vec![earlier.clone()],
            })
            .await?;
        // Two tenants interleaved, more of alpha's events than one insert statement takes,
        // an id twice, and one that is stored already.
        let mut batch = Vec::new();
        for index in 0..300 {
            let tenant = if index % 3 == 2 { "bravo" } else { "alpha" };
            batch.push(event(tenant, &format!("e{index}")));
        }
        batch.insert(7, batch[3].clone());
        batch.insert(150, earlier);
        let response = client
            .append_events(AppendEventsRequest { events: batch })
            .await?
            .into_inner();
        assert_eq!(
            (response.appended_count, response.duplicate_count),
            (300, 2)
        );

        let alpha = stored_chain(&mesh, "alpha").await?;
        let bravo = stored_chain(&mesh, "bravo").await?;
        assert_chain_verifies("alpha", &alpha);
        assert_chain_verifies("bravo", &bravo);
        let kept = [("kept".to_owned(), "yes".to_owned())].into();
        assert_eq!(alpha[0].attributes, kept, "alpha's first event");
        let actions = |events: &[AuditEvent]| -> Vec<String> {
            events.iter().map(|event| event.action.clone()).collect()
        };
        let expected = |tenant_of: fn(usize) -> bool| -> Vec<String> {
            (0..300)
                .filter(|&index| tenant_of(index))
                .map(|index| format!("e{index}"))
                .collect()
        };
        let mut alpha_expected = vec!["earlier".to_owned()];
        alpha_expected.extend(expected(|index| index % 3 != 2));
        assert_eq!(actions(&alpha), alpha_expected, "alpha, in batch order");
        assert_eq!(
            actions(&bravo),
            expected(|index| index % 3 == 2),
            "bravo, in batch order"
        );
        mesh.stop().await?;
    }
    Ok(())
}

/// Stored events are never changed or deleted: the database refuses it, even from the
/// service's own role, and the chain is as it was. Only an event's origin (personal data kept
/// beside the chain) may be erased, and the chain still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_to_change_or_delete_stored_events() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let channel = mesh.direct(Component::Compliance, "identity").await?;
        AuditServiceClient::new(channel)
            .append_events(AppendEventsRequest {
                events: vec![
                    AuditEvent {
                        origin: Some(RequestOrigin {
                            ip_address: "203.0.113.7".into(),
                            user_agent: "curl/8.5.0".into(),
                        }),
                        ..event("alpha", "a1")
                    },
                    event("alpha", "a2"),
                ],
            })
            .await?;
        let before = stored_chain(&mesh, "alpha").await?;
        assert!(before[0].origin.is_some(), "{backend}");
        let db = mesh.service_db(Component::Compliance).await?;
        let mut statements = vec![
            "UPDATE audit_events SET action = 'forged'",
            "UPDATE audit_events SET origin = NULL, recorded_at = 0",
            "UPDATE audit_events SET origin = canonical",
            "DELETE FROM audit_events",
        ];
        match backend {
            "postgres" => statements.push("TRUNCATE audit_events"),
            _ => statements
                .push("INSERT OR REPLACE INTO audit_events SELECT * FROM audit_events LIMIT 1"),
        }
        for statement in statements {
            let mut tx = db.begin_in(palisade_db::Scope::AllTenants).await?;
            let refused = sqlx::query(statement).execute(&mut *tx).await;
            let error = refused.expect_err(statement).to_string();
            assert!(
                error.contains("append-only"),
                "{backend}: {statement}: {error}"
            );
        }
        let after = stored_chain(&mesh, "alpha").await?;
        assert_eq!(after, before, "{backend}");
        assert_eq!(after.len(), 2, "{backend}");
        let mut tx = db.begin_in(palisade_db::Scope::AllTenants).await?;
        let erased = sqlx::query("UPDATE audit_events SET origin = NULL")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        assert!(erased.rows_affected() >= 2, "{backend}");
        let erased = stored_chain(&mesh, "alpha").await?;
        assert_eq!(erased[0].origin, None, "{backend}");
        assert_chain_verifies("alpha", &erased);
        mesh.stop().await?;
    }
    Ok(())
}

/// A tenant's whole audit log, read through the gateway as the operator.
async fn stored_chain(mesh: &Mesh, tenant: &str) -> anyhow::Result<Vec<AuditEvent>> {
    let mut audit = AuditServiceClient::new(mesh.gateway());
    let request = ListAuditEventsRequest {
        parent: format!("tenants/{tenant}"),
        page_size: 1000,
        ..Default::default()
    };
    Ok(audit
        .list_audit_events(mesh.as_operator(request))
        .await?
        .into_inner()
        .audit_events)
}

/// Sequences from 1 without a gap, each event linked to the one before and its hash right.
fn assert_chain_verifies(tenant: &str, events: &[AuditEvent]) {
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
