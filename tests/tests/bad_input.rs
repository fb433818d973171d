//! Bad input is refused with INVALID_ARGUMENT and field violations naming the culprit; nothing
//! is written and nothing panics.

mod common;

use common::{expect_code, new_tenant, violated_fields};
use palisade_proto::palisade::{
    compliance::v1::{ListAuditEventsRequest, audit_service_client::AuditServiceClient},
    identity::v1::{
        GetTenantRequest, ListTenantsRequest, Plan, tenant_service_client::TenantServiceClient,
    },
};
use palisade_testkit::Mesh;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_offending_field() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let mut tenants = TenantServiceClient::new(mesh.gateway());
    let mut audit = AuditServiceClient::new(mesh.gateway());

    let cases: Vec<(&str, Result<(), tonic::Status>, &[&str])> = vec![
        (
            "empty tenant name",
            tenants
                .create_tenant(mesh.as_operator(new_tenant("", " ", Plan::Free)))
                .await
                .map(drop),
            &["tenant.display_name"],
        ),
        (
            "malformed tenant id",
            tenants
                .create_tenant(mesh.as_operator(new_tenant("Not_OK", "x", Plan::Free)))
                .await
                .map(drop),
            &["tenant_id"],
        ),
        (
            "unknown plan",
            {
                let mut request = new_tenant("", "x", Plan::Free);
                request.tenant.as_mut().unwrap().plan = 42;
                tenants
                    .create_tenant(mesh.as_operator(request))
                    .await
                    .map(drop)
            },
            &["tenant.plan"],
        ),
        (
            "malformed tenant name",
            tenants
                .get_tenant(mesh.as_operator(GetTenantRequest {
                    name: "acme".into(),
                }))
                .await
                .map(drop),
            &["name"],
        ),
        (
            "malformed page token",
            tenants
                .list_tenants(mesh.as_operator(ListTenantsRequest {
                    page_token: "not-a-token".into(),
                    ..Default::default()
                }))
                .await
                .map(drop),
            &["page_token"],
        ),
        (
            "negative page size",
            tenants
                .list_tenants(mesh.as_operator(ListTenantsRequest {
                    page_size: -1,
                    ..Default::default()
                }))
                .await
                .map(drop),
            &["page_size"],
        ),
        (
            "unknown filter field",
            tenants
                .list_tenants(mesh.as_operator(ListTenantsRequest {
                    filter: r#"colour = "red""#.into(),
                    ..Default::default()
                }))
                .await
                .map(drop),
            &["filter"],
        ),
        (
            "unknown filter value",
            tenants
                .list_tenants(mesh.as_operator(ListTenantsRequest {
                    filter: "plan = PLAN_GOLD".into(),
                    ..Default::default()
                }))
                .await
                .map(drop),
            &["filter"],
        ),
        (
            "audit filter with a bad time",
            audit
                .list_audit_events(mesh.as_operator(ListAuditEventsRequest {
                    parent: "tenants/system".into(),
                    filter: r#"occur_time >= "yesterday""#.into(),
                    ..Default::default()
                }))
                .await
                .map(drop),
            &["filter"],
        ),
        (
            // Parses as RFC 3339 but overflows microseconds: refused, never a panic or a wrap.
            "audit filter beyond year 9999",
            audit
                .list_audit_events(mesh.as_operator(ListAuditEventsRequest {
                    parent: "tenants/system".into(),
                    filter: r#"occur_time >= "+300000-01-01T00:00:00.5Z""#.into(),
                    ..Default::default()
                }))
                .await
                .map(drop),
            &["filter"],
        ),
        (
            "audit parent",
            audit
                .list_audit_events(mesh.as_operator(ListAuditEventsRequest {
                    parent: "system".into(),
                    ..Default::default()
                }))
                .await
                .map(drop),
            &["parent"],
        ),
    ];
    for (case, result, fields) in cases {
        let status = expect_code(result, Code::InvalidArgument);
        assert_eq!(violated_fields(&status), fields, "{case}: {status:?}");
    }

    // Nothing was created by the refused requests.
    let listed = tenants
        .list_tenants(mesh.as_operator(ListTenantsRequest::default()))
        .await?
        .into_inner();
    assert_eq!(listed.tenants.len(), 1, "only the system tenant exists");
    mesh.stop().await
}
