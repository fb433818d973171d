//! `TenantService`.

use palisade_audit::AuditRecord;
use palisade_db::outbox::Relay;
use palisade_grpc::{
    ApiError, Caller,
    aip::{self, CreatedCursor, FilterField},
    time::{month_at, now_micros, timestamp},
};
use palisade_proto::palisade::{
    compliance::v1::Outcome,
    identity::v1::{
        CheckFeatureRequest, CheckFeatureResponse, CreateTenantRequest, DeleteTenantRequest,
        GetTenantRequest, GetUsageRequest, ListTenantsRequest, ListTenantsResponse, Plan, Tenant,
        TenantState, UpdateTenantRequest, Usage, UsageMetric, tenant_service_server::TenantService,
    },
};
use palisade_tenancy::TenantId;
use tonic::{Request, Response, Status};

use crate::{
    plans,
    store::{IdentityStore, TenantFilter},
    tenants::{self, TenantRecord},
};

const FILTER_FIELDS: &[FilterField] = &[
    FilterField {
        name: "plan",
        comparisons: aip::EQUALITY,
    },
    FilterField {
        name: "state",
        comparisons: aip::EQUALITY,
    },
    FilterField {
        name: "region",
        comparisons: aip::EQUALITY,
    },
];

pub struct TenantApi {
    store: IdentityStore,
    relay: Relay,
}

impl TenantApi {
    pub fn new(store: IdentityStore, relay: Relay) -> TenantApi {
        TenantApi { store, relay }
    }
}

#[tonic::async_trait]
impl TenantService for TenantApi {
    async fn create_tenant(
        &self,
        request: Request<CreateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        // Platform operators only (`platform_only`, enforced by the policy layer): creating a
        // tenant acts on another tenant by definition (DESIGN §4.3).
        let caller = Caller::of(&request)?;
        let record = tenants::validate_create(request.get_ref(), now_micros())?;
        let resource = format!("tenants/{}", record.id);
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        self.store.create_tenant(&mut tx, &record).await?;
        let audit = AuditRecord {
            tenant: &record.id,
            actor_tenant: &caller.context.tenant_id,
            actor: Some(caller.principal()),
            action: caller.action("identity.tenants.create"),
            resource: &resource,
            outcome: Outcome::Success,
            request_id: caller.request_id.as_ref(),
            source: crate::COMPONENT,
            attributes: vec![("plan", tenants::plan_key(record.plan).to_owned())],
        };
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(tenant = %record.id, plan = tenants::plan_key(record.plan), "tenant created");
        Ok(Response::new(to_proto(record)))
    }

    async fn get_tenant(
        &self,
        request: Request<GetTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let caller = Caller::of(&request)?;
        let id = tenants::parse_name(&request.get_ref().name)?;
        // Another tenant's existence is not revealed: it is simply not found.
        let not_found = || ApiError::NotFound {
            resource: format!("tenants/{id}"),
        };
        if !caller.context.may_access(&id) {
            return Err(not_found().into());
        }
        let record = self.store.get_tenant(&id).await?.ok_or_else(not_found)?;
        Ok(Response::new(to_proto(record)))
    }

    async fn list_tenants(
        &self,
        request: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let page_size = aip::page_size(request.page_size)?;
        let query = aip::ListQuery {
            collection: "tenants",
            parent: "",
            filter: &request.filter,
        };
        let after = aip::decode_page_token(&request.page_token, &query)?
            .map(|cursor| CreatedCursor::decode(&cursor))
            .transpose()?;
        let filters = parse_filters(&request.filter)?;
        let only = (!caller.context.is_platform_operator()).then_some(&caller.context.tenant_id);
        let mut records = self
            .store
            .list_tenants(only, after.as_ref(), &filters, page_size + 1)
            .await?;
        let next_page_token = aip::finish_page(&mut records, page_size, &query, |last| {
            CreatedCursor {
                create_time: last.create_time,
                id: last.id.to_string(),
            }
            .encode()
        });
        Ok(Response::new(ListTenantsResponse {
            tenants: records.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_tenant(
        &self,
        request: Request<UpdateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let Some(tenant) = &request.tenant else {
            return Err(ApiError::invalid("tenant", "is required").into());
        };
        let id = tenants::parse_field(&tenant.name, "tenant.name")?;
        let not_found = || ApiError::NotFound {
            resource: format!("tenants/{id}"),
        };
        if !caller.context.may_access(&id) {
            return Err(not_found().into());
        }
        let paths = tenants::update_paths(tenant, request.update_mask.as_ref())?;
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        let current = self
            .store
            .lock_tenant(&mut tx, &id)
            .await?
            .ok_or_else(not_found)?;
        // Checked under the lock, so it holds until this commits (AIP-154).
        aip::require_etag(&tenant.etag, &current.etag(), &format!("tenants/{id}"))?;
        let updated = tenants::apply_update(&current, tenant, &paths, now_micros())?;
        // Judged on what changes, so a tenant fetched, renamed and sent back whole passes.
        tenants::require_may_change(&caller.context, &updated.changed)?;
        if updated.changed.is_empty() {
            // Nothing to write and nothing to record: the tenant as it is.
            return Ok(Response::new(to_proto(current)));
        }
        self.store.update_tenant(&mut tx, &updated.record).await?;
        let resource = format!("tenants/{id}");
        let mut attributes = vec![("fields", updated.changed.join(" "))];
        if updated.changed.contains(&"state") {
            let state = tenants::state_key(updated.record.state).to_owned();
            attributes.push(("state", state));
        }
        if updated.changed.contains(&"plan") {
            attributes.push(("plan", tenants::plan_key(updated.record.plan).to_owned()));
        }
        let audit = AuditRecord {
            tenant: &id,
            actor_tenant: &caller.context.tenant_id,
            actor: Some(caller.principal()),
            action: caller.action("identity.tenants.update"),
            resource: &resource,
            outcome: Outcome::Success,
            request_id: caller.request_id.as_ref(),
            source: crate::COMPONENT,
            attributes,
        };
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(tenant = %id, fields = %updated.changed.join(" "), "tenant updated");
        Ok(Response::new(to_proto(updated.record)))
    }

    async fn delete_tenant(
        &self,
        request: Request<DeleteTenantRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = Caller::of(&request)?;
        let id = tenants::parse_name(&request.get_ref().name)?;
        let not_found = || ApiError::NotFound {
            resource: format!("tenants/{id}"),
        };
        // Only platform operators get here (`platform_only`, enforced by the policy layer).
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        let record = self
            .store
            .lock_tenant(&mut tx, &id)
            .await?
            .ok_or_else(not_found)?;
        tenants::ensure_deletable(&record)?;
        self.store.delete_tenant(&mut tx, &id, now_micros()).await?;
        // The event goes to the deleted tenant's own log: compliance keeps logs by tenant id
        // and needs no tenant row, so the record of the deletion outlives the tenant. For the
        // same reason the id is retired with it: no new tenant is created under it.
        let resource = format!("tenants/{id}");
        let audit = AuditRecord {
            tenant: &id,
            actor_tenant: &caller.context.tenant_id,
            actor: Some(caller.principal()),
            action: caller.action("identity.tenants.delete"),
            resource: &resource,
            outcome: Outcome::Success,
            request_id: caller.request_id.as_ref(),
            source: crate::COMPONENT,
            attributes: vec![("plan", tenants::plan_key(record.plan).to_owned())],
        };
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(tenant = %id, "tenant deleted");
        Ok(Response::new(()))
    }

    async fn get_usage(
        &self,
        request: Request<GetUsageRequest>,
    ) -> Result<Response<Usage>, Status> {
        let caller = Caller::of(&request)?;
        let id = tenants::parse_usage_name(&request.get_ref().name)?;
        let record = self.visible_tenant(&caller, &id).await?;
        let now = now_micros();
        let period = month_at(now);
        let entitlements = record.entitlements();
        let used = self
            .store
            .used(&id, &plans::LIMITS, &period.key, now)
            .await?;
        let metrics = used
            .into_iter()
            .map(|(limit, used)| UsageMetric {
                metric: limit.to_owned(),
                used,
                limit: entitlements.limit(limit).expect("a known limit"),
            })
            .collect();
        Ok(Response::new(Usage {
            name: format!("tenants/{id}/usage"),
            period_start: Some(timestamp(period.start)),
            period_end: Some(timestamp(period.end)),
            metrics,
        }))
    }

    async fn check_feature(
        &self,
        request: Request<CheckFeatureRequest>,
    ) -> Result<Response<CheckFeatureResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let id = tenants::parse_field(&request.tenant, "tenant")?;
        if request.feature.is_empty() {
            return Err(ApiError::invalid("feature", "is required").into());
        }
        if !plans::FEATURES.contains(&request.feature.as_str()) {
            return Err(ApiError::invalid(
                "feature",
                format!(
                    "unknown feature {:?}; known: {}",
                    palisade_grpc::echoed(&request.feature),
                    plans::FEATURES.join(", ")
                ),
            )
            .into());
        }
        let record = self.visible_tenant(&caller, &id).await?;
        let (enabled, source) = record
            .entitlements()
            .feature(&request.feature)
            .expect("a known feature");
        Ok(Response::new(CheckFeatureResponse { enabled, source }))
    }
}

impl TenantApi {
    /// The tenant `id` if the caller may see it; another tenant's existence is not revealed.
    async fn visible_tenant(
        &self,
        caller: &Caller,
        id: &TenantId,
    ) -> Result<TenantRecord, ApiError> {
        let not_found = || ApiError::NotFound {
            resource: format!("tenants/{id}"),
        };
        if !caller.context.may_access(id) {
            return Err(not_found());
        }
        self.store.get_tenant(id).await?.ok_or_else(not_found)
    }
}

fn to_proto(record: TenantRecord) -> Tenant {
    let entitlements = record.entitlements();
    let etag = record.etag();
    Tenant {
        etag,
        name: format!("tenants/{}", record.id),
        display_name: record.display_name,
        plan: record.plan as i32,
        state: record.state as i32,
        region: record.region,
        domain: record.domain.unwrap_or_default(),
        features: entitlements.features(),
        limits: entitlements.limits(),
        feature_overrides: record.feature_overrides,
        limit_overrides: record.limit_overrides,
        create_time: Some(timestamp(record.create_time)),
        update_time: Some(timestamp(record.update_time)),
    }
}

fn parse_filters(filter: &str) -> Result<Vec<TenantFilter>, ApiError> {
    aip::parse_filter(filter, FILTER_FIELDS)?
        .into_iter()
        .map(|term| {
            let (column, value) = match term.field {
                "plan" => match Plan::from_str_name(&term.value) {
                    Some(plan) if plan != Plan::Unspecified => {
                        ("plan", tenants::plan_key(plan).to_owned())
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            "filter",
                            format!("unknown plan {:?}", palisade_grpc::echoed(&term.value)),
                        ));
                    }
                },
                "state" => match TenantState::from_str_name(&term.value) {
                    Some(state) if state != TenantState::Unspecified => {
                        ("state", tenants::state_key(state).to_owned())
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            "filter",
                            format!("unknown state {:?}", palisade_grpc::echoed(&term.value)),
                        ));
                    }
                },
                _ => ("region", term.value),
            };
            Ok(TenantFilter {
                column,
                comparison: term.comparison,
                value,
            })
        })
        .collect()
}
