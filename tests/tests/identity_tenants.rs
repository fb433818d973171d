//! Tenants through their lifecycle: plans set features and limits, overrides replace them,
//! updates follow their mask and who may change what, suspension stops every credential,
//! deletion takes everything identity holds, and the gateway's edge reports usage once per
//! batch.

mod common;

use common::{expect_code, new_tenant, reason, violated_fields};
use palisade_proto::palisade::identity::v1::{
    EdgeTenant, Plan, ReportUsageRequest, ResolveTenantRequest, TenantCalls, TenantState,
    edge_service_client::EdgeServiceClient, resolve_tenant_request::Key,
    tenant_service_client::TenantServiceClient,
};
use palisade_testkit::{Component, Mesh};
use tonic::{Code, transport::Channel};

fn calls(tenant_id: &str, api_calls: i64) -> TenantCalls {
    TenantCalls {
        tenant_id: tenant_id.to_owned(),
        api_calls,
    }
}

fn report(batch_id: &str, entries: Vec<TenantCalls>) -> ReportUsageRequest {
    ReportUsageRequest {
        batch_id: batch_id.to_owned(),
        calls: entries,
    }
}

async fn resolve(
    edge: &mut EdgeServiceClient<Channel>,
    key: Key,
) -> Result<EdgeTenant, tonic::Status> {
    edge.resolve_tenant(ResolveTenantRequest { key: Some(key) })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_resolves_tenants_and_reports_usage_once_per_batch() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let mut create = new_tenant("acme", "Acme", Plan::Standard);
        create.tenant.as_mut().expect("a tenant").domain = "Acme.Example.com".into();
        TenantServiceClient::new(mesh.gateway())
            .create_tenant(mesh.as_operator(create))
            .await?;
        let mut edge = EdgeServiceClient::new(mesh.direct(Component::Identity, "gateway").await?);

        let by_id = resolve(&mut edge, Key::TenantId("acme".into())).await?;
        assert_eq!(by_id.state(), TenantState::Active);
        assert_eq!(
            (
                by_id.requests_per_second,
                by_id.request_burst,
                by_id.api_calls_per_month
            ),
            (50, 100, 1_000_000)
        );
        assert_eq!(by_id.api_calls_used, 0);
        let period_end = by_id.period_end.clone().expect("a period end");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        assert!(period_end.seconds > now && period_end.seconds <= now + 31 * 86_400);
        let by_domain = resolve(&mut edge, Key::Domain("ACME.example.com".into())).await?;
        assert_eq!(by_domain, by_id);
        let system = resolve(&mut edge, Key::TenantId("system".into())).await?;
        assert_eq!(
            (system.requests_per_second, system.api_calls_per_month),
            (-1, -1)
        );

        let missing = resolve(&mut edge, Key::Domain("nobody.example.com".into())).await;
        expect_code(missing, Code::NotFound);
        let bad = resolve(&mut edge, Key::Domain("not a domain".into())).await;
        assert_eq!(
            violated_fields(&expect_code(bad, Code::InvalidArgument)),
            ["domain"]
        );
        let none = edge
            .resolve_tenant(ResolveTenantRequest { key: None })
            .await;
        assert_eq!(
            violated_fields(&expect_code(none, Code::InvalidArgument)),
            ["tenant_id"]
        );

        // A batch counts once, however often it is sent; totals come back in order.
        let first = edge
            .report_usage(report(
                "batch-1",
                vec![calls("acme", 7), calls("system", 2)],
            ))
            .await?
            .into_inner();
        assert_eq!(first.totals, [calls("acme", 7), calls("system", 2)]);
        assert_eq!(first.period_end, Some(period_end.clone()));
        let retried = edge
            .report_usage(report(
                "batch-1",
                vec![calls("acme", 7), calls("system", 2)],
            ))
            .await?
            .into_inner();
        assert_eq!(retried.totals, first.totals);
        // Calls for a tenant that no longer exists are dropped, not an error that would keep
        // the gateway retrying the other tenants' counts forever.
        let second = edge
            .report_usage(report("batch-2", vec![calls("acme", 5), calls("gone", 3)]))
            .await?
            .into_inner();
        assert_eq!(second.totals, [calls("acme", 12), calls("gone", 0)]);
        assert_eq!(
            resolve(&mut edge, Key::TenantId("acme".into()))
                .await?
                .api_calls_used,
            12
        );

        let bad = edge
            .report_usage(report("", vec![calls("Not Valid", 1), calls("acme", -1)]))
            .await;
        assert_eq!(
            violated_fields(&expect_code(bad, Code::InvalidArgument)),
            ["batch_id", "calls[0].tenant_id", "calls[1].api_calls"]
        );

        // Only the gateway may call the edge: another component is refused, and so is
        // everyone through the public port.
        let mut as_compliance =
            EdgeServiceClient::new(mesh.direct(Component::Identity, "compliance").await?);
        let refused = as_compliance
            .report_usage(report("batch-3", vec![calls("acme", 1)]))
            .await;
        assert_eq!(
            reason(&expect_code(refused, Code::PermissionDenied)),
            "INTERNAL_METHOD"
        );
        let through_gateway = EdgeServiceClient::new(mesh.gateway())
            .resolve_tenant(mesh.as_operator(ResolveTenantRequest {
                key: Some(Key::TenantId("acme".into())),
            }))
            .await;
        assert_eq!(
            reason(&expect_code(through_gateway, Code::PermissionDenied)),
            "INTERNAL_METHOD"
        );
        mesh.stop().await?;
    }
    Ok(())
}
