//! `AuditService` over gRPC: decode and validate, call the store, encode. Nothing else.

use std::str::FromStr;

use palisade_grpc::{
    ApiError, FieldViolation,
    aip::{self, Comparison, FilterField},
};
use palisade_proto::palisade::compliance::v1::{
    AppendEventsRequest, AppendEventsResponse, AuditEvent, ListAuditEventsRequest,
    ListAuditEventsResponse, audit_service_server::AuditService,
};
use palisade_tenancy::{TenantContext, TenantId};
use tonic::{Request, Response, Status};

use crate::store::{AuditStore, EventFilter};

const MAX_BATCH: usize = 1000;
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;

const FILTER_FIELDS: &[FilterField] = &[
    FilterField {
        name: "action",
        comparisons: &[Comparison::Eq],
    },
    FilterField {
        name: "occur_time",
        comparisons: &[
            Comparison::Ge,
            Comparison::Gt,
            Comparison::Le,
            Comparison::Lt,
        ],
    },
];

pub struct AuditApi {
    store: AuditStore,
}

impl AuditApi {
    pub fn new(store: AuditStore) -> AuditApi {
        AuditApi { store }
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn append_events(
        &self,
        request: Request<AppendEventsRequest>,
    ) -> Result<Response<AppendEventsResponse>, Status> {
        let events = request.into_inner().events;
        validate_batch(&events)?;
        let outcome = self.store.append(&events).await?;
        tracing::debug!(
            appended = outcome.appended,
            duplicates = outcome.duplicates,
            "audit events appended"
        );
        Ok(Response::new(AppendEventsResponse {
            appended_count: outcome.appended as i32,
            duplicate_count: outcome.duplicates as i32,
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let context = request.extensions().get::<TenantContext>().cloned();
        let request = request.into_inner();
        let tenant = parse_parent(&request.parent)?;
        if !context.is_some_and(|context| context.may_access(&tenant)) {
            return Err(ApiError::PermissionDenied {
                reason: "CROSS_TENANT",
                message: format!("the audit log of tenants/{tenant} belongs to another tenant"),
            }
            .into());
        }
        let page_size = aip::page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let after = match aip::decode_page_token(&request.page_token, &request.filter)? {
            Some(cursor) => cursor
                .parse::<i64>()
                .map_err(|_| ApiError::invalid("page_token", "malformed page token"))?,
            None => 0,
        };
        let filters = parse_filters(&request.filter)?;
        let mut events = self
            .store
            .list(&tenant, after, &filters, page_size + 1)
            .await?;
        let next_page_token = if events.len() > page_size {
            events.truncate(page_size);
            let last = events.last().expect("page is not empty").sequence;
            aip::encode_page_token(&request.filter, &last.to_string())
        } else {
            String::new()
        };
        Ok(Response::new(ListAuditEventsResponse {
            audit_events: events,
            next_page_token,
        }))
    }
}

fn parse_parent(parent: &str) -> Result<TenantId, ApiError> {
    parent
        .strip_prefix("tenants/")
        .and_then(|id| TenantId::parse(id).ok())
        .ok_or_else(|| ApiError::invalid("parent", "must be `tenants/{tenant_id}`"))
}

fn parse_filters(filter: &str) -> Result<Vec<EventFilter>, ApiError> {
    aip::parse_filter(filter, FILTER_FIELDS)?
        .into_iter()
        .map(|term| match term.field {
            "action" => Ok(EventFilter::Action(term.value)),
            _ => {
                let time = prost_types::Timestamp::from_str(&term.value).map_err(|_| {
                    ApiError::invalid("filter", "occur_time needs an RFC 3339 timestamp")
                })?;
                Ok(EventFilter::OccurTime(
                    term.comparison,
                    palisade_grpc::time::micros(&time),
                ))
            }
        })
        .collect()
}

fn validate_batch(events: &[AuditEvent]) -> Result<(), ApiError> {
    let mut violations = Vec::new();
    if events.is_empty() || events.len() > MAX_BATCH {
        violations.push(FieldViolation::new(
            "events",
            format!("must hold 1 to {MAX_BATCH} events"),
        ));
    }
    for (index, event) in events.iter().enumerate() {
        let field = |name: &str| format!("events[{index}].{name}");
        if uuid::Uuid::parse_str(&event.event_id).is_err() {
            violations.push(FieldViolation::new(field("event_id"), "must be a UUID"));
        }
        if TenantId::parse(&event.tenant_id).is_err() {
            violations.push(FieldViolation::new(
                field("tenant_id"),
                "must be a tenant id",
            ));
        }
        if event.action.is_empty() {
            violations.push(FieldViolation::new(field("action"), "must not be empty"));
        }
        if event.occur_time.is_none() {
            violations.push(FieldViolation::new(field("occur_time"), "is required"));
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(violations))
    }
}
