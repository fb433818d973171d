//! Identity's [`DenialSink`]: a refused call to one of its audited methods (`denial_audit.rs`
//! in palisade-grpc) becomes an event in the caller's tenant's audit log, outcome `DENIED`,
//! naming the method and why it was refused.

use futures::future::BoxFuture;
use palisade_audit::AuditRecord;
use palisade_db::outbox::Relay;
use palisade_grpc::{DenialSink, DeniedCall};
use palisade_proto::palisade::compliance::v1::Outcome;

use crate::store::IdentityStore;

/// Refusals whose handler records its own event, with more to say than this sink knows: a
/// wrong current password counts towards the lockout.
const AUDITED_BY_THE_HANDLER: &[&str] = &["WRONG_PASSWORD"];

pub struct AuditDenials {
    store: IdentityStore,
    relay: Relay,
}

impl AuditDenials {
    pub fn new(store: IdentityStore, relay: Relay) -> AuditDenials {
        AuditDenials { store, relay }
    }
}

impl DenialSink for AuditDenials {
    fn record(&self, denied: DeniedCall) -> BoxFuture<'static, ()> {
        let (store, relay) = (self.store.clone(), self.relay.clone());
        Box::pin(async move {
            if AUDITED_BY_THE_HANDLER.contains(&denied.reason.as_str()) {
                return;
            }
            let tenant = &denied.context.tenant_id;
            let resource = format!("tenants/{tenant}");
            let record = AuditRecord {
                tenant,
                actor_tenant: tenant,
                actor: denied.context.principal.as_ref(),
                action: denied.policy.action(),
                resource: &resource,
                outcome: Outcome::Denied,
                request_id: denied.request_id.as_ref(),
                source: crate::COMPONENT,
                attributes: vec![
                    ("method", denied.policy.path.clone()),
                    ("reason", denied.reason.clone()),
                    ("message", denied.message.clone()),
                ],
            };
            let recorded = async {
                let tx = store.db().begin().await?;
                palisade_audit::commit_with(tx, &record, &relay).await
            };
            // The caller's refusal stands either way; a lost record is logged, not an error.
            if let Err(error) = recorded.await {
                tracing::error!(%error, method = %denied.policy.path, "a refused call could not be audited");
            }
        })
    }
}
