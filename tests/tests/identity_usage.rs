//! Usage against plan limits: the gateway reports calls over mTLS once per batch and
//! resolves tenants for enforcement, `GetUsage` counts what exists now, and creating beyond a
//! limit is RESOURCE_EXHAUSTED with a `QuotaFailure`.

mod common;
mod identity_kit;

use std::time::Duration;

use common::{audit_events_arrived, expect_code, new_tenant, reason, violated_fields};
use identity_kit::{A_DAY, calls, new_user, plant_api_key, report, update};
use palisade_grpc::time::{month_at, timestamp};
use palisade_proto::palisade::compliance::v1::Outcome;
use palisade_proto::palisade::identity::v1::{
    EdgeTenant, GetUsageRequest, Plan, ResolveTenantRequest, Tenant, TenantCalls, TenantState,
    Usage, edge_service_client::EdgeServiceClient, resolve_tenant_request::Key,
    tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
};
use palisade_testkit::{Component, Mesh, eventually, http_request};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

fn metrics(usage: &Usage) -> Vec<(String, i64, i64)> {
    usage
        .metrics
        .iter()
        .map(|m| (m.metric.clone(), m.used, m.limit))
        .collect()
}

fn metric(name: &str, used: i64, limit: i64) -> (String, i64, i64) {
    (name.to_owned(), used, limit)
}

async fn resolve(edge: &mut EdgeServiceClient<Channel>, key: Key) -> Result<EdgeTenant, Status> {
    edge.resolve_tenant(ResolveTenantRequest { key: Some(key) })
        .await
        .map(tonic::Response::into_inner)
}

/// A credential of a suspended tenant is refused: by the gateway (the key's verification) or
/// by the component's permission check, whichever comes first.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_against_the_plan_and_limits_hold() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        let mut users = UserServiceClient::new(mesh.gateway());
        tenants
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Free)))
            .await?;
        for n in 1..=5 {
            users
                .create_user(mesh.as_operator(new_user("acme", &format!("u{n}@acme.example"), &[])))
                .await?;
        }
        // The free plan's five users are all there is.
        let sixth = users
            .create_user(mesh.as_operator(new_user("acme", "u6@acme.example", &[])))
            .await;
        let sixth = expect_code(sixth, Code::ResourceExhausted);
        assert_eq!(reason(&sixth), "LIMIT_EXCEEDED");
        let details = sixth.get_error_details();
        let quota = details.quota_failure().expect("a QuotaFailure");
        assert_eq!(quota.violations[0].subject, "tenants/acme");
        assert_eq!(quota.violations[0].description, "users limit of 5 reached");
        // The refusal is audited, in the caller's tenant, as refused calls are.
        let refused = eventually(Duration::from_secs(10), || async {
            let events = audit_events_arrived(&mesh, "system").await?;
            Ok(events.into_iter().find(|event| {
                event.action == "identity.users.create"
                    && event.attributes.get("reason").map(String::as_str) == Some("LIMIT_EXCEEDED")
            }))
        })
        .await?;
        assert_eq!(refused.outcome(), Outcome::Denied);

        let db = mesh.service_db(Component::Identity).await?;
        plant_api_key(&db, "acme", A_DAY, false).await?;
        plant_api_key(&db, "acme", A_DAY, true).await?;
        plant_api_key(&db, "acme", Duration::ZERO, false).await?;
        db.close().await;
        let mut edge = EdgeServiceClient::new(mesh.direct(Component::Identity, "gateway").await?);
        edge.report_usage(report("batch-1", vec![calls("acme", 40)]))
            .await?;
        edge.report_usage(report("batch-1", vec![calls("acme", 40)]))
            .await?;
        edge.report_usage(report("batch-2", vec![calls("acme", 2)]))
            .await?;

        let usage = tenants
            .get_usage(mesh.as_operator(GetUsageRequest {
                name: "tenants/acme/usage".into(),
            }))
            .await?
            .into_inner();
        assert_eq!(usage.name, "tenants/acme/usage");
        assert_eq!(
            metrics(&usage),
            [
                metric("api_calls_per_month", 42, 10_000),
                metric("requests_per_second", 0, 10),
                metric("request_burst", 0, 20),
                metric("users", 5, 5),
                metric("api_keys", 1, 2),
                metric("custom_roles", 0, 0),
            ]
        );
        let (start, end) = (
            usage.period_start.expect("a start"),
            usage.period_end.expect("an end"),
        );
        let days = (end.seconds - start.seconds) / 86_400;
        assert!((28..=31).contains(&days), "a month, not {days} days");

        // The same through REST, as the proto's examples show.
        let rest = http_request(
            mesh.addr(Component::Gateway),
            "GET",
            "/v1/tenants/acme/usage",
            &[("x-api-key", mesh.operator_key())],
            b"",
        )
        .await?;
        assert_eq!(rest.status, 200, "{}", rest.text());
        let body: serde_json::Value = serde_json::from_slice(&rest.body)?;
        assert_eq!(body["metrics"][3]["metric"], "users");
        assert_eq!(body["metrics"][3]["used"], "5", "int64 is a JSON string");
        let feature = http_request(
            mesh.addr(Component::Gateway),
            "GET",
            "/v1/tenants/acme:checkFeature?feature=audit_export",
            &[("x-api-key", mesh.operator_key())],
            b"",
        )
        .await?;
        assert_eq!(feature.status, 200, "{}", feature.text());
        let body: serde_json::Value = serde_json::from_slice(&feature.body)?;
        // Every field, `false` too, as grpc-gateway sends it.
        assert_eq!(
            body,
            serde_json::json!({"enabled": false, "source": "plan free"})
        );

        // Raising the limit lets the sixth in.
        tenants
            .update_tenant(mesh.as_operator(update(
                Tenant {
                    name: "tenants/acme".into(),
                    limit_overrides: [("users".to_owned(), 6)].into(),
                    ..Tenant::default()
                },
                &["limit_overrides"],
            )))
            .await?;
        users
            .create_user(mesh.as_operator(new_user("acme", "u6@acme.example", &[])))
            .await?;
        let seventh = users
            .create_user(mesh.as_operator(new_user("acme", "u7@acme.example", &[])))
            .await;
        expect_code(seventh, Code::ResourceExhausted);

        let bad = tenants
            .get_usage(mesh.as_operator(GetUsageRequest {
                name: "tenants/acme".into(),
            }))
            .await;
        assert_eq!(
            violated_fields(&expect_code(bad, Code::InvalidArgument)),
            ["name"]
        );
        mesh.stop().await?;
    }
    Ok(())
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
        let period_end = by_id.period_end.expect("a period end");
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
        assert_eq!(first.period_end, Some(period_end));
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

        // Calls count in the month they were counted in: last month's (a gateway that could
        // not report before the month ended) leave this month's total alone; a count time
        // ahead of identity's clock counts as now.
        let month_start = this_month_start(&mesh, "acme").await?;
        let late = edge
            .report_usage(report(
                "batch-late",
                vec![
                    counted_at("acme", 100, month_start - 1_000_000),
                    counted_at("acme", 1, 4_102_444_800_000_000), // 2100-01-01
                ],
            ))
            .await?
            .into_inner();
        assert_eq!(late.totals, [calls("acme", 13), calls("acme", 13)]);
        assert_eq!(monthly_calls(&mesh).await?, [(100, true), (13, false)]);

        let mut out_of_range = counted_at("acme", 1, 0);
        out_of_range.count_time = Some(prost_types::Timestamp {
            seconds: 253_402_300_800, // 10000-01-01
            nanos: 0,
        });
        let bad = edge
            .report_usage(report(
                "",
                vec![
                    calls("Not Valid", 1),
                    calls("acme", -1),
                    out_of_range,
                    calls("acme", i64::MAX),
                ],
            ))
            .await;
        assert_eq!(
            violated_fields(&expect_code(bad, Code::InvalidArgument)),
            [
                "batch_id",
                "calls[0].tenant_id",
                "calls[1].api_calls",
                "calls[2].count_time",
                "calls[3].api_calls"
            ]
        );
        // A batch identity could not apply within the gateway's wait is refused whole.
        let oversized = edge
            .report_usage(report("batch-big", vec![calls("acme", 1); 1_001]))
            .await;
        assert_eq!(
            violated_fields(&expect_code(oversized, Code::InvalidArgument)),
            ["calls"]
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

/// `calls` counted at `micros` since the epoch.
fn counted_at(tenant_id: &str, api_calls: i64, micros: i64) -> TenantCalls {
    TenantCalls {
        count_time: Some(timestamp(micros)),
        ..calls(tenant_id, api_calls)
    }
}

/// When the current month began, as `GetUsage` of `tenant` says (micros).
async fn this_month_start(mesh: &Mesh, tenant: &str) -> anyhow::Result<i64> {
    let usage = TenantServiceClient::new(mesh.gateway())
        .get_usage(mesh.as_operator(GetUsageRequest {
            name: format!("tenants/{tenant}/usage"),
        }))
        .await?
        .into_inner();
    let start = usage.period_start.expect("a period start");
    Ok(start.seconds * 1_000_000)
}

/// acme's stored API calls per month, oldest first, read beneath the API: (calls, whether
/// the month ended before the current one).
async fn monthly_calls(mesh: &Mesh) -> anyhow::Result<Vec<(i64, bool)>> {
    let current = this_month_start(mesh, "acme").await?;
    let db = mesh.unrestricted_db(Component::Identity).await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT period, api_calls FROM tenant_usage WHERE tenant_id = 'acme' ORDER BY period",
    )
    .fetch_all(db.pool())
    .await?;
    db.close().await;
    let current_key = month_at(current).key;
    Ok(rows
        .into_iter()
        .map(|(period, api_calls)| (api_calls, period < current_key))
        .collect())
}

/// Many `GetUsage` calls at once, more than identity's database pool has connections, all
/// answer: each reads the usage on one connection. (Holding one while waiting for a second,
/// as many calls as the pool holds could wait on each other until the pool's timeout, with
/// every other query of identity waiting behind them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_usage_reads_at_once_all_answer() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        TenantServiceClient::new(mesh.gateway())
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
            .await?;
        let reads = (0..48).map(|_| {
            let mut tenants = TenantServiceClient::new(mesh.gateway());
            let request = mesh.as_operator(GetUsageRequest {
                name: "tenants/acme/usage".into(),
            });
            tokio::spawn(async move { tenants.get_usage(request).await })
        });
        for read in futures::future::join_all(reads).await {
            let usage = read?.map_err(|status| anyhow::anyhow!("{backend}: {status:?}"))?;
            assert!(!usage.into_inner().metrics.is_empty());
        }
        mesh.stop().await?;
    }
    Ok(())
}
