//! Audit events record where a call came from — the client's address and user agent, as the
//! gateway saw them — beside the hash chain: listed with the event, but not part of the
//! chained bytes, so erasing them later cannot break the chain.

mod common;

use common::audit_events_arrived;
use palisade_testkit::{Component, Mesh, http_request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_the_callers_address_and_user_agent() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let authorization = format!("ApiKey {}", mesh.operator_key());
        let created = http_request(
            mesh.addr(Component::Gateway),
            "POST",
            "/v1/tenants?tenantId=acme",
            &[
                ("authorization", authorization.as_str()),
                ("content-type", "application/json"),
                ("user-agent", "origin-test/1.0 (audit)"),
                // A client cannot pass its own origin off as the gateway's.
                ("grpc-metadata-palisade-client-ip", "203.0.113.9"),
                ("palisade-client-user-agent", "forged"),
            ],
            br#"{"displayName": "Acme"}"#,
        )
        .await?;
        assert_eq!(
            created.status,
            200,
            "{backend}: {}",
            String::from_utf8_lossy(&created.body)
        );

        let events = audit_events_arrived(&mesh, "acme").await?;
        let created = events
            .iter()
            .find(|event| event.action == "identity.tenants.create")
            .expect("the create event");
        let origin = created.origin.as_ref().expect("an origin");
        assert_eq!(origin.ip_address, "127.0.0.1", "{backend}");
        assert_eq!(origin.user_agent, "origin-test/1.0 (audit)", "{backend}");
        mesh.stop().await?;
    }
    Ok(())
}
