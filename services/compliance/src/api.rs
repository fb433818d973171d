//! `AuditService` over gRPC: decode and validate, call the store, encode. Nothing else.

use std::str::FromStr;

use palisade_grpc::{
    ApiError, CallerComponent, FieldViolation,
    aip::{self, Comparison, FilterField},
    time::micros_in_range,
};
use palisade_proto::palisade::compliance::v1::{
    AppendEventsRequest, AppendEventsResponse, AuditEvent, ExportAuditEventsRequest,
    ListAuditEventsRequest, ListAuditEventsResponse, Outcome, audit_service_server::AuditService,
};
use palisade_tenancy::{TenantContext, TenantId};
// `ReceiverStream` from the `tokio-stream` that tonic re-exports: no extra dependency.
use tonic::{Request, Response, Status, codegen::tokio_stream::wrappers::ReceiverStream};
use tracing::Instrument;

use crate::store::{AuditStore, EventFilter};

const MAX_BATCH: usize = 1000;
/// How many events an export reads from the store at a time.
const EXPORT_BATCH: usize = 500;
/// How many events an export buffers ahead of a slow client.
const EXPORT_BUFFER: usize = 64;

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
        // The policy names the components that may append; the policy layer says which one
        // this is, and every event must say it came from there.
        let caller = (request.extensions().get::<CallerComponent>())
            .map(|caller| caller.0.clone())
            .unwrap_or_default();
        let events = request.into_inner().events;
        validate_batch(&events, &caller)?;
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
        let (tenant, reader) = readable_log(&request, &request.get_ref().parent)?;
        let request = request.into_inner();
        let page_size = aip::page_size(request.page_size)?;
        let query = aip::ListQuery {
            collection: "auditEvents",
            parent: &request.parent,
            filter: &request.filter,
        };
        let after = match aip::decode_page_token(&request.page_token, &query)? {
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
        let next_page_token = aip::finish_page(&mut events, page_size, &query, |last| {
            last.sequence.to_string()
        });
        Ok(Response::new(ListAuditEventsResponse {
            audit_events: events.into_iter().map(|e| as_read_by(e, &reader)).collect(),
            next_page_token,
        }))
    }

    type ExportAuditEventsStream = ReceiverStream<Result<AuditEvent, Status>>;

    async fn export_audit_events(
        &self,
        request: Request<ExportAuditEventsRequest>,
    ) -> Result<Response<Self::ExportAuditEventsStream>, Status> {
        // Bad input is refused before the stream starts, as the call's status.
        let (tenant, reader) = readable_log(&request, &request.get_ref().parent)?;
        let filters = parse_filters(&request.get_ref().filter)?;
        let (sender, receiver) = tokio::sync::mpsc::channel(EXPORT_BUFFER);
        let store = self.store.clone();
        // The stream outlives the handler; its reads stay in the call's span.
        let export = async move {
            let mut after = 0;
            loop {
                let batch = match store.list(&tenant, after, &filters, EXPORT_BATCH).await {
                    Ok(batch) => batch,
                    Err(error) => {
                        // The client may be gone already; nothing more to do then.
                        let _ = sender.send(Err(error.into())).await;
                        return;
                    }
                };
                let complete = batch.len() < EXPORT_BATCH;
                for event in batch {
                    after = event.sequence;
                    if sender.send(Ok(as_read_by(event, &reader))).await.is_err() {
                        tracing::debug!(tenant = %tenant, "audit export abandoned by the client");
                        return;
                    }
                }
                if complete {
                    return;
                }
            }
        };
        tokio::spawn(export.instrument(tracing::Span::current()));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// The tenant named by `parent`, if the caller may read its audit log (its own tenant's, or
/// any as a platform operator), and the caller's own tenant.
fn readable_log<T>(request: &Request<T>, parent: &str) -> Result<(TenantId, TenantId), ApiError> {
    let tenant = parse_parent(parent)?;
    let context = request.extensions().get::<TenantContext>();
    match context {
        Some(context) if context.may_access(&tenant) => Ok((tenant, context.tenant_id.clone())),
        _ => Err(ApiError::PermissionDenied {
            reason: "CROSS_TENANT",
            message: format!("the audit log of tenants/{tenant} belongs to another tenant"),
        }),
    }
}

/// `event` as a reader of tenant `reader` sees it: a tenant's reader without the origin
/// (address and user agent) of an actor of another tenant. An operator acting on a tenant's
/// resources is recorded in that tenant's log, but the operator's address is personal data of
/// the platform's staff, not the tenant's to read. The platform's operators see every origin.
fn as_read_by(mut event: AuditEvent, reader: &TenantId) -> AuditEvent {
    let foreign_actor =
        (event.actor.as_ref()).is_some_and(|actor| actor.tenant_id != reader.as_str());
    if foreign_actor && !reader.is_system() {
        event.origin = None;
    }
    event
}

fn parse_parent(parent: &str) -> Result<TenantId, ApiError> {
    parent
        .strip_prefix("tenants/")
        .and_then(|id| TenantId::parse(id).ok())
        .ok_or_else(|| ApiError::invalid("parent", "must be `tenants/{tenant_id}`"))
}

/// `occur_time <comparison> T` on the stored microseconds, where `micros` is T rounded down and
/// `finer` says whether T had nanoseconds beyond them. Events are stamped to the microsecond
/// (`palisade_audit`), so against such a T, `>= T` and `> T` both mean after the microsecond
/// T falls in, and `<= T` and `< T` both mean up to and including it.
fn occur_time_filter(comparison: Comparison, micros: i64, finer: bool) -> EventFilter {
    let exact = match comparison {
        Comparison::Ge | Comparison::Gt if finer => (Comparison::Gt, micros),
        Comparison::Le | Comparison::Lt if finer => (Comparison::Le, micros),
        other => (other, micros),
    };
    EventFilter::OccurTime(exact.0, exact.1)
}

fn parse_filters(filter: &str) -> Result<Vec<EventFilter>, ApiError> {
    aip::parse_filter(filter, FILTER_FIELDS)?
        .into_iter()
        .map(|term| match term.field {
            "action" => Ok(EventFilter::Action(term.value)),
            _ => {
                let time = prost_types::Timestamp::from_str(&term.value).ok();
                let micros = time.as_ref().and_then(palisade_grpc::time::micros_in_range);
                let (Some(time), Some(micros)) = (time, micros) else {
                    return Err(ApiError::invalid(
                        "filter",
                        "occur_time needs an RFC 3339 timestamp between years 1 and 9999",
                    ));
                };
                Ok(occur_time_filter(
                    term.comparison,
                    micros,
                    time.nanos % 1000 != 0,
                ))
            }
        })
        .collect()
}

/// What makes a batch appendable from the component `caller`.
fn validate_batch(events: &[AuditEvent], caller: &str) -> Result<(), ApiError> {
    let mut violations = Vec::new();
    if events.is_empty() || events.len() > MAX_BATCH {
        violations.push(FieldViolation::new(
            "events",
            format!("must hold 1 to {MAX_BATCH} events"),
        ));
    }
    for (index, event) in events.iter().enumerate() {
        let field = |name: &str| format!("events[{index}].{name}");
        // One spelling only (lower-case, hyphenated), as ids are compared as text: the same
        // event under another spelling (`{…}`, upper case, `urn:uuid:`) would be chained twice.
        let canonical = uuid::Uuid::parse_str(&event.event_id)
            .is_ok_and(|id| id.hyphenated().to_string() == event.event_id);
        if !canonical {
            violations.push(FieldViolation::new(
                field("event_id"),
                "must be a UUID in lower-case hyphenated form",
            ));
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
        match &event.occur_time {
            None => violations.push(FieldViolation::new(field("occur_time"), "is required")),
            // Stored as microseconds, which would saturate or skew an instant out of range.
            Some(time) if !(0..1_000_000_000).contains(&time.nanos) => violations.push(
                FieldViolation::new(field("occur_time"), "nanos must be 0 to 999999999"),
            ),
            Some(time) if micros_in_range(time).is_none() => violations.push(FieldViolation::new(
                field("occur_time"),
                "must be within years 1 to 9999",
            )),
            Some(_) => {}
        }
        // Every producer knows how its action ended; a number outside the enum would be
        // chained as given and read back as a value no client can name.
        let outcome_known = matches!(
            Outcome::try_from(event.outcome),
            Ok(Outcome::Success | Outcome::Failure | Outcome::Denied)
        );
        if !outcome_known {
            violations.push(FieldViolation::new(
                field("outcome"),
                "must be OUTCOME_SUCCESS, OUTCOME_FAILURE or OUTCOME_DENIED",
            ));
        }
        if event.source != caller {
            violations.push(FieldViolation::new(
                field("source"),
                format!("must name the calling component ({caller})"),
            ));
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(violations))
    }
}

#[cfg(test)]
mod tests {
    use palisade_tenancy::{Principal, PrincipalKind};

    use super::*;

    fn as_tenant(tenant: &str) -> Request<()> {
        let mut request = Request::new(());
        request.extensions_mut().insert(TenantContext {
            tenant_id: TenantId::parse(tenant).expect("valid tenant id"),
            principal: Some(Principal::new("key".to_owned(), PrincipalKind::ApiKey)),
        });
        request
    }

    #[test]
    fn a_tenant_reads_only_its_own_log_and_operators_read_any() {
        let (own, reader) = readable_log(&as_tenant("acme"), "tenants/acme").expect("own log");
        assert_eq!((own.as_str(), reader.as_str()), ("acme", "acme"));
        assert!(matches!(
            readable_log(&as_tenant("acme"), "tenants/globex"),
            Err(ApiError::PermissionDenied {
                reason: "CROSS_TENANT",
                ..
            })
        ));
        let (log, reader) = readable_log(&as_tenant("system"), "tenants/globex").expect("any");
        assert_eq!((log.as_str(), reader.as_str()), ("globex", "system"));
        assert!(matches!(
            readable_log(&Request::new(()), "tenants/acme"),
            Err(ApiError::PermissionDenied { .. })
        ));
        assert!(matches!(
            readable_log(&as_tenant("acme"), "acme"),
            Err(ApiError::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_time_finer_than_a_microsecond_filters_exactly() {
        // T = 12.000_000_500 s: events are stored to the microsecond, 12_000_000 or 12_000_001.
        let parsed = |comparison: &str| {
            let filter = format!("occur_time {comparison} \"1970-01-01T00:00:12.0000005Z\"");
            match parse_filters(&filter).unwrap().as_slice() {
                [EventFilter::OccurTime(comparison, micros)] => (*comparison, *micros),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(parsed(">="), (Comparison::Gt, 12_000_000));
        assert_eq!(parsed(">"), (Comparison::Gt, 12_000_000));
        assert_eq!(parsed("<="), (Comparison::Le, 12_000_000));
        assert_eq!(parsed("<"), (Comparison::Le, 12_000_000));
        // A whole microsecond compares as given.
        let whole = parse_filters(r#"occur_time >= "1970-01-01T00:00:12.000001Z""#).unwrap();
        assert!(matches!(
            whole.as_slice(),
            [EventFilter::OccurTime(Comparison::Ge, 12_000_001)]
        ));
    }

    #[test]
    fn a_tenant_reads_no_operators_origin_and_operators_read_every_origin() {
        use palisade_proto::palisade::{common::v1::Principal, compliance::v1::RequestOrigin};
        let by = |actor_tenant: Option<&str>| AuditEvent {
            actor: actor_tenant.map(|tenant| Principal {
                tenant_id: tenant.to_owned(),
                id: "someone".to_owned(),
                ..Principal::default()
            }),
            origin: Some(RequestOrigin {
                ip_address: "203.0.113.7".to_owned(),
                user_agent: "curl/8".to_owned(),
            }),
            ..event()
        };
        let shown = |actor_tenant: Option<&str>, reader: &str| {
            let reader = TenantId::parse(reader).unwrap();
            as_read_by(by(actor_tenant), &reader).origin.is_some()
        };
        assert!(shown(Some("acme"), "acme"));
        assert!(!shown(Some("system"), "acme"));
        // No actor: an anonymous caller (a failed login), whose address is the tenant's to see.
        assert!(shown(None, "acme"));
        assert!(shown(Some("acme"), "system"));
        assert!(shown(Some("system"), "system"));
    }

    /// The same event id under another spelling would be another event to the chain, which
    /// compares ids as text: only the lower-case hyphenated form is taken.
    #[test]
    fn an_event_id_has_one_spelling() {
        let id = "0190c6e2-6a3b-7c1d-8e2f-3a4b5c6d7e8f";
        let event = |event_id: &str| AuditEvent {
            event_id: event_id.to_owned(),
            ..event()
        };
        assert!(validate_batch(&[event(id)], "identity").is_ok());
        for spelling in [
            id.to_uppercase(),
            id.replace('-', ""),
            format!("{{{id}}}"),
            format!("urn:uuid:{id}"),
        ] {
            assert!(
                validate_batch(&[event(&spelling)], "identity").is_err(),
                "{spelling}"
            );
        }
    }

    fn event() -> AuditEvent {
        AuditEvent {
            event_id: "0190c6e2-6a3b-7c1d-8e2f-3a4b5c6d7e8f".into(),
            tenant_id: "acme".into(),
            action: "identity.users.create".into(),
            occur_time: Some(prost_types::Timestamp::default()),
            source: "identity".into(),
            outcome: Outcome::Success.into(),
            ..AuditEvent::default()
        }
    }

    fn violated_fields(events: &[AuditEvent], caller: &str) -> Vec<String> {
        match validate_batch(events, caller) {
            Ok(()) => Vec::new(),
            Err(ApiError::InvalidArgument(violations)) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn an_event_names_the_component_that_appends_it() {
        assert!(violated_fields(&[event()], "identity").is_empty());
        let forged = AuditEvent {
            source: "identity".into(),
            ..event()
        };
        assert_eq!(violated_fields(&[forged], "gateway"), ["events[0].source"]);
        let unnamed = AuditEvent {
            source: String::new(),
            ..event()
        };
        assert_eq!(
            violated_fields(&[unnamed], "identity"),
            ["events[0].source"]
        );
    }

    #[test]
    fn an_occur_time_outside_the_stored_range_is_refused() {
        for (seconds, nanos) in [
            (i64::MAX, 0),
            (-62_135_596_801, 0),
            (0, -1),
            (0, 1_000_000_000),
        ] {
            let event = AuditEvent {
                occur_time: Some(prost_types::Timestamp { seconds, nanos }),
                ..event()
            };
            assert_eq!(
                violated_fields(&[event], "identity"),
                ["events[0].occur_time"],
                "{seconds}s {nanos}ns"
            );
        }
    }

    #[test]
    fn an_outcome_must_say_how_the_action_ended() {
        for outcome in [Outcome::Success, Outcome::Failure, Outcome::Denied] {
            let event = AuditEvent {
                outcome: outcome.into(),
                ..event()
            };
            assert!(
                violated_fields(&[event], "identity").is_empty(),
                "{outcome:?}"
            );
        }
        for outcome in [Outcome::Unspecified as i32, 4, -1, i32::MAX] {
            let event = AuditEvent { outcome, ..event() };
            assert_eq!(
                violated_fields(&[event], "identity"),
                ["events[0].outcome"],
                "{outcome}"
            );
        }
    }
}
