//! Audit events on their way to compliance (DESIGN §4.6): a producer writes an event into its
//! own outbox in the same transaction as the change it records, and a relay ships the outbox
//! to `AuditService.AppendEvents`, which is idempotent on the event id — so no event is lost
//! and none is stored twice.

use opentelemetry::trace::TraceContextExt;
use palisade_db::outbox::{self, DeliveryError, OutboxMessage, OutboxSink};
use palisade_grpc::{MeshChannel, principal_type};
use palisade_proto::palisade::{
    common::v1::Principal as WirePrincipal,
    compliance::v1::{
        AppendEventsRequest, AuditEvent, Outcome, RequestOrigin,
        audit_service_client::AuditServiceClient,
    },
};
use palisade_tenancy::{Principal, RequestId, TenantId};
use prost::Message;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

/// The outbox topic audit events travel under.
pub const TOPIC: &str = "audit";

/// An audited action, described by the component that performed it.
#[derive(Clone, Debug)]
pub struct AuditRecord<'a> {
    /// The tenant whose log records the event (the owner of the resource acted on).
    pub tenant: &'a TenantId,
    /// The tenant of the actor, which differs from `tenant` when an operator acts.
    pub actor_tenant: &'a TenantId,
    pub actor: Option<&'a Principal>,
    pub action: &'a str,
    pub resource: &'a str,
    pub outcome: Outcome,
    pub request_id: Option<&'a RequestId>,
    /// The producing component, e.g. `identity`.
    pub source: &'a str,
    pub attributes: Vec<(&'a str, String)>,
}

impl AuditRecord<'_> {
    /// The wire event, with a fresh UUIDv7 id and the current time to the microsecond: what
    /// compliance stores and filters on, so the chained time is the time filters compare.
    pub fn to_event(&self) -> AuditEvent {
        let mut now = prost_types::Timestamp::from(std::time::SystemTime::now());
        now.nanos -= now.nanos % 1000;
        AuditEvent {
            event_id: Uuid::now_v7().to_string(),
            tenant_id: self.tenant.to_string(),
            action: self.action.to_owned(),
            actor: self.actor.map(|p| WirePrincipal {
                tenant_id: self.actor_tenant.to_string(),
                id: p.id.clone(),
                r#type: principal_type(p.kind) as i32,
                // Not recorded: the audit log names who acted, not which sign-in session.
                session_id: String::new(),
            }),
            resource: self.resource.to_owned(),
            outcome: self.outcome as i32,
            request_id: self.request_id.map(|r| r.0.clone()).unwrap_or_default(),
            occur_time: Some(now),
            source: self.source.to_owned(),
            origin: palisade_tenancy::current_origin().map(|origin| RequestOrigin {
                ip_address: origin.ip.unwrap_or_default(),
                user_agent: origin.user_agent.unwrap_or_default(),
            }),
            attributes: (self.attributes.iter())
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            ..AuditEvent::default()
        }
    }
}

/// Writes the event into the outbox on the caller's transaction, with the current trace
/// context so its delivery can be linked back to the call that caused it.
pub async fn enqueue(
    conn: &mut sqlx::AnyConnection,
    record: &AuditRecord<'_>,
) -> palisade_db::Result<()> {
    let event = record.to_event();
    let id = Uuid::parse_str(&event.event_id).expect("generated above");
    let mut headers = http::HeaderMap::new();
    palisade_telemetry::inject_current(&mut headers);
    let traceparent = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok());
    outbox::enqueue(conn, TOPIC, id, &event.encode_to_vec(), traceparent).await
}

/// The last step of an audited mutation: enqueue `record` on `tx`, commit both together, and
/// wake the relay so the event ships without waiting for its next poll.
pub async fn commit_with(
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    record: &AuditRecord<'_>,
    relay: &palisade_db::outbox::Relay,
) -> palisade_db::Result<()> {
    enqueue(&mut tx, record).await?;
    tx.commit().await?;
    relay.notify();
    Ok(())
}

/// Records an event that is the whole write (a refused login, a refused call): one insert in
/// autocommit on [`palisade_db::Db::single_write`], without a transaction's `BEGIN` and
/// `COMMIT` round trips, then wakes the relay.
pub async fn record_alone(
    db: &palisade_db::Db,
    record: &AuditRecord<'_>,
    relay: &palisade_db::outbox::Relay,
) -> palisade_db::Result<()> {
    let mut conn = db.single_write().acquire().await?;
    enqueue(&mut conn, record).await?;
    relay.notify();
    Ok(())
}

/// How long one delivery may take before the relay backs off and retries (on PostgreSQL it
/// holds the batch's row locks meanwhile).
const DELIVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Delivers outbox batches to compliance over mTLS.
#[derive(Clone)]
pub struct ComplianceSink {
    client: AuditServiceClient<MeshChannel>,
}

impl ComplianceSink {
    pub fn new(compliance: MeshChannel) -> ComplianceSink {
        ComplianceSink {
            client: AuditServiceClient::new(compliance),
        }
    }
}

impl OutboxSink for ComplianceSink {
    async fn deliver(&self, batch: Vec<OutboxMessage>) -> Result<(), DeliveryError> {
        let mut events = Vec::with_capacity(batch.len());
        for message in &batch {
            // A row that does not decode can never be delivered: rejected, it is set aside as a
            // dead letter for an operator, not dropped, and the events behind it still ship.
            let event = AuditEvent::decode(message.payload.as_slice()).map_err(|e| {
                DeliveryError::rejected(format!(
                    "outbox row {} is not an audit event: {e}",
                    message.id
                ))
            })?;
            events.push(event);
        }
        // One span per delivery, linked to the trace of every call whose events it carries.
        let span = tracing::info_span!(
            "outbox.relay",
            otel.kind = "producer",
            messaging.batch.message_count = batch.len()
        );
        for message in &batch {
            if let Some(traceparent) = &message.trace_context {
                let mut headers = http::HeaderMap::new();
                if let Ok(value) = traceparent.parse() {
                    headers.insert("traceparent", value);
                }
                let origin = palisade_telemetry::extract_context(&headers);
                let origin = origin.span().span_context().clone();
                if origin.is_valid() {
                    span.add_link(origin);
                }
            }
        }
        let mut request = tonic::Request::new(AppendEventsRequest { events });
        request.set_timeout(DELIVERY_TIMEOUT);
        self.client
            .clone()
            .append_events(request)
            .instrument(span)
            .await
            .map(|_| ())
            .map_err(|status| {
                let reason = format!("append refused: {:?} {}", status.code(), status.message());
                // Compliance validates the whole batch before it appends any: INVALID_ARGUMENT
                // says an event in it is malformed, and no retry will change that. Any other
                // code (down, overloaded, a certificate not allowed) may pass.
                if status.code() == tonic::Code::InvalidArgument {
                    DeliveryError::rejected(reason)
                } else {
                    DeliveryError::failed(reason)
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_stamped_to_the_microsecond() {
        let tenant = TenantId::system();
        let record = AuditRecord {
            tenant: &tenant,
            actor_tenant: &tenant,
            actor: None,
            action: "test.stamp",
            resource: "tenants/system",
            outcome: Outcome::Success,
            request_id: None,
            source: "test",
            attributes: Vec::new(),
        };
        // The clock rarely lands on a whole microsecond: a few tries would find a miss.
        for _ in 0..100 {
            let time = record.to_event().occur_time.expect("stamped");
            assert_eq!(time.nanos % 1000, 0, "{time:?}");
        }
    }
}
