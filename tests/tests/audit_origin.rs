//! Audit events record where a call came from — the client's address and user agent, as the
//! gateway saw them — beside the hash chain: listed with the event, but not part of the
//! chained bytes, so erasing them later cannot break the chain. An operator's origin is not
//! shown to the tenant whose log records the operator's action.

mod common;

use common::audit_events_arrived;
use palisade_proto::palisade::{
    compliance::v1::{ListAuditEventsRequest, audit_service_client::AuditServiceClient},
    identity::v1::{CreateUserRequest, User, user_service_client::UserServiceClient},
};
use palisade_testkit::{Component, Mesh, http_request};

const PASSWORD: &str = "correct horse battery staple";

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

        // The tenant's own admin reads its log: its own sign-in with its origin, the
        // operator's creation of the tenant without the operator's.
        UserServiceClient::new(mesh.gateway())
            .create_user(mesh.as_operator(CreateUserRequest {
                parent: "tenants/acme".into(),
                user: Some(User {
                    email: "ada@example.com".into(),
                    display_name: "Ada".into(),
                    roles: vec!["admin".into()],
                    ..User::default()
                }),
                password: PASSWORD.into(),
            }))
            .await?;
        let body = serde_json::json!({
            "tenantId": "acme", "email": "ada@example.com", "password": PASSWORD,
        });
        let login = http_request(
            mesh.addr(Component::Gateway),
            "POST",
            "/v1/auth:login",
            &[
                ("content-type", "application/json"),
                ("user-agent", "acme-admin/2.0"),
            ],
            body.to_string().as_bytes(),
        )
        .await?;
        assert_eq!(login.status, 200, "{backend}: {}", login.text());
        let tokens: serde_json::Value = serde_json::from_slice(&login.body)?;
        let bearer = format!(
            "Bearer {}",
            tokens["accessToken"].as_str().unwrap_or_default()
        );
        let events = audit_events_arrived(&mesh, "acme").await?;
        let mut request = tonic::Request::new(ListAuditEventsRequest {
            parent: "tenants/acme".into(),
            page_size: 1000,
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", bearer.parse()?);
        let as_admin = AuditServiceClient::new(mesh.gateway())
            .list_audit_events(request)
            .await?
            .into_inner()
            .audit_events;
        assert_eq!(as_admin.len(), events.len(), "{backend}");
        let read_by_admin = |action: &str| {
            let event = as_admin.iter().find(|event| event.action == action);
            event.map(|event| event.origin.clone())
        };
        let signed_in = read_by_admin("identity.auth.login").expect("the login event");
        assert_eq!(
            signed_in.map(|origin| origin.user_agent).as_deref(),
            Some("acme-admin/2.0"),
            "{backend}"
        );
        assert_eq!(
            read_by_admin("identity.tenants.create"),
            Some(None),
            "{backend}"
        );
        // The operator sees both.
        let as_operator = audit_events_arrived(&mesh, "acme").await?;
        let login = as_operator
            .iter()
            .find(|e| e.action == "identity.auth.login");
        let origin = login.and_then(|event| event.origin.as_ref());
        assert_eq!(
            origin.map(|origin| origin.user_agent.as_str()),
            Some("acme-admin/2.0"),
            "{backend}"
        );
        mesh.stop().await?;
    }
    Ok(())
}
