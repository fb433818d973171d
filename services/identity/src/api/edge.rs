//! `EdgeService`: what the gateway enforces per tenant (state, rate limits, monthly quota)
//! and where it reports the calls it counted. Internal: the policy layer admits only the
//! gateway, over mTLS.

use palisade_db::{Scope, in_scope};
use palisade_grpc::{
    ApiError, FieldViolation,
    time::{micros_in_range, month_at, now_micros, timestamp},
};
use palisade_proto::palisade::identity::v1::{
    EdgeTenant, ReportUsageRequest, ReportUsageResponse, ResolveTenantRequest, TenantCalls,
    edge_service_server::EdgeService, resolve_tenant_request::Key,
};
use palisade_tenancy::TenantId;
use tonic::{Request, Response, Status};

use crate::{
    store::{CountedCalls, IdentityStore},
    tenants,
};

/// Longer batch ids are refused: a UUID is 36 characters.
const MAX_BATCH_ID_CHARS: usize = 128;
/// Tenants one usage batch may count, so that it is applied (one transaction, two statements
/// per tenant) well within the gateway's wait; the gateway sends at most 500.
const MAX_REPORT_TENANTS: usize = 1_000;
/// Calls one entry may count: a gateway counts one per call, so far more than any gateway
/// forwards between two reports, and low enough that no run of reports overflows a total.
const MAX_REPORTED_CALLS: i64 = 1_000_000_000_000;

pub struct EdgeApi {
    store: IdentityStore,
}

impl EdgeApi {
    pub fn new(store: IdentityStore) -> EdgeApi {
        EdgeApi { store }
    }
}

#[tonic::async_trait]
impl EdgeService for EdgeApi {
    /// Across tenants: the gateway asks before it knows the tenant (by domain) or for any
    /// tenant it serves.
    async fn resolve_tenant(
        &self,
        request: Request<ResolveTenantRequest>,
    ) -> Result<Response<EdgeTenant>, Status> {
        in_scope(Scope::AllTenants, self.resolve(request.get_ref())).await
    }

    /// Across tenants: one batch counts the calls of every tenant the gateway served.
    async fn report_usage(
        &self,
        request: Request<ReportUsageRequest>,
    ) -> Result<Response<ReportUsageResponse>, Status> {
        in_scope(Scope::AllTenants, self.record(request.into_inner())).await
    }
}

impl EdgeApi {
    async fn resolve(
        &self,
        request: &ResolveTenantRequest,
    ) -> Result<Response<EdgeTenant>, Status> {
        let (record, resource) = match &request.key {
            Some(Key::TenantId(id)) => {
                let id = TenantId::parse(id)
                    .map_err(|_| ApiError::invalid("tenant_id", "must be a tenant id"))?;
                (self.store.get_tenant(&id).await?, format!("tenants/{id}"))
            }
            Some(Key::Domain(domain)) => {
                let domain = tenants::parse_domain(domain).ok_or_else(|| {
                    ApiError::InvalidArgument(vec![tenants::domain_violation("domain")])
                })?;
                let resource = format!("a tenant with domain {domain}");
                (self.store.tenant_by_domain(&domain).await?, resource)
            }
            None => {
                return Err(
                    ApiError::invalid("tenant_id", "tenant_id or domain is required").into(),
                );
            }
        };
        let record = record.ok_or(ApiError::NotFound { resource })?;
        let month = month_at(now_micros());
        let api_calls_used = self.store.api_calls(&record.id, &month.key).await?;
        let entitlements = record.entitlements();
        let limit = |name| entitlements.limit(name).expect("a known limit");
        Ok(Response::new(EdgeTenant {
            tenant_id: record.id.to_string(),
            state: record.state as i32,
            requests_per_second: limit("requests_per_second"),
            request_burst: limit("request_burst"),
            api_calls_per_month: limit("api_calls_per_month"),
            api_calls_used,
            period_end: Some(timestamp(month.end)),
        }))
    }

    async fn record(
        &self,
        request: ReportUsageRequest,
    ) -> Result<Response<ReportUsageResponse>, Status> {
        let now = now_micros();
        let calls = validate_report(&request, now)?;
        let month = month_at(now);
        let report = self
            .store
            .record_usage(&request.batch_id, &calls, &month.key, now)
            .await?;
        if report.applied {
            tracing::debug!(batch = %request.batch_id, tenants = calls.len(), "usage recorded");
        } else {
            tracing::info!(batch = %request.batch_id, "usage batch repeated; counted once");
        }
        Ok(Response::new(ReportUsageResponse {
            totals: calls
                .iter()
                .zip(report.totals)
                .map(|(counted, api_calls)| TenantCalls {
                    tenant_id: counted.tenant.to_string(),
                    api_calls,
                    count_time: None,
                })
                .collect(),
            period_end: Some(timestamp(month.end)),
        }))
    }
}

/// The report's entries, each with the month its calls count in (a count time ahead of `now`
/// is a gateway's clock running fast, and counts as now).
fn validate_report(request: &ReportUsageRequest, now: i64) -> Result<Vec<CountedCalls>, ApiError> {
    let mut violations = Vec::new();
    if request.batch_id.is_empty() {
        violations.push(FieldViolation::new("batch_id", "is required"));
    } else if request.batch_id.chars().count() > MAX_BATCH_ID_CHARS {
        violations.push(FieldViolation::new(
            "batch_id",
            format!("must be at most {MAX_BATCH_ID_CHARS} characters"),
        ));
    }
    if request.calls.len() > MAX_REPORT_TENANTS {
        violations.push(FieldViolation::new(
            "calls",
            format!("must have at most {MAX_REPORT_TENANTS} entries"),
        ));
        return Err(ApiError::InvalidArgument(violations));
    }
    let mut calls = Vec::with_capacity(request.calls.len());
    for (index, entry) in request.calls.iter().enumerate() {
        let tenant = TenantId::parse(&entry.tenant_id).map_err(|_| {
            FieldViolation::new(format!("calls[{index}].tenant_id"), "must be a tenant id")
        });
        let count_time = match &entry.count_time {
            None => Ok(now),
            Some(time) => micros_in_range(time)
                .map(|time| time.min(now))
                .ok_or_else(|| {
                    FieldViolation::new(
                        format!("calls[{index}].count_time"),
                        "must be within years 1 to 9999",
                    )
                }),
        };
        match (tenant, count_time) {
            (Ok(tenant), Ok(count_time)) => calls.push(CountedCalls {
                tenant,
                api_calls: entry.api_calls,
                month: month_at(count_time).key,
            }),
            (tenant, count_time) => {
                violations.extend(tenant.err().into_iter().chain(count_time.err()))
            }
        }
        if !(0..=MAX_REPORTED_CALLS).contains(&entry.api_calls) {
            violations.push(FieldViolation::new(
                format!("calls[{index}].api_calls"),
                format!("must be 0 to {MAX_REPORTED_CALLS}"),
            ));
        }
    }
    if violations.is_empty() {
        Ok(calls)
    } else {
        Err(ApiError::InvalidArgument(violations))
    }
}
