//! Identity's [`DenialSink`]: a refused call to one of its audited methods (`denial_audit.rs`
//! in palisade-grpc) becomes an event in the caller's tenant's audit log, outcome `DENIED`,
//! naming the method and why it was refused.
//!
//! The refusal does not wait for its record: the write runs in the background, at most
//! `MAX_WRITING` at once, and a refusal arriving while that many are being written is not
//! recorded (counted in the log instead). So a flood of refused calls (a stale client retrying
//! with a revoked key) cannot queue the store's writers (on SQLite, one for everything)
//! behind its audit records, nor slow the refusals themselves.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use palisade_audit::AuditRecord;
use palisade_db::outbox::Relay;
use palisade_grpc::{DenialSink, DeniedCall};
use palisade_proto::palisade::compliance::v1::Outcome;

use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::store::IdentityStore;

/// Refusals whose handler records its own event, with more to say than this sink knows: a
/// wrong current password counts towards the lockout.
const AUDITED_BY_THE_HANDLER: &[&str] = &["WRONG_PASSWORD"];

/// Refusals being recorded at once, at most.
const MAX_WRITING: usize = 8;

pub struct AuditDenials {
    store: IdentityStore,
    relay: Relay,
    writing: Arc<Semaphore>,
    /// Refusals not recorded because `MAX_WRITING` were being written.
    skipped: AtomicU64,
}

impl AuditDenials {
    pub fn new(store: IdentityStore, relay: Relay) -> AuditDenials {
        AuditDenials {
            store,
            relay,
            writing: Arc::new(Semaphore::new(MAX_WRITING)),
            skipped: AtomicU64::new(0),
        }
    }
}

impl DenialSink for AuditDenials {
    fn record(&self, denied: DeniedCall) {
        if AUDITED_BY_THE_HANDLER.contains(&denied.reason.as_str()) {
            return;
        }
        let Ok(permit) = self.writing.clone().try_acquire_owned() else {
            let skipped = self.skipped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(skipped, method = %denied.policy.path, "a refused call was not audited: too many being recorded");
            return;
        };
        let (store, relay) = (self.store.clone(), self.relay.clone());
        // The record keeps the call's origin (client address, user agent) and trace.
        let write = palisade_tenancy::in_this_call(async move {
            let _permit = permit;
            let tenant = &denied.context.tenant_id;
            // The user, role or key the call was refused on, when it is of the caller's tenant,
            // whose log this is; otherwise the tenant, and the other tenant's name (an
            // operator's, or one a caller tried) is kept as an attribute.
            let own = |target: &&String| target.starts_with(&format!("tenants/{tenant}/"));
            let resource = (denied.target.as_ref().filter(own).cloned())
                .unwrap_or_else(|| format!("tenants/{tenant}"));
            let record = AuditRecord {
                tenant,
                actor_tenant: tenant,
                actor: denied.context.principal.as_ref(),
                action: denied.policy.action(),
                resource: &resource,
                outcome: Outcome::Denied,
                request_id: denied.request_id.as_ref(),
                source: crate::COMPONENT,
                attributes: [
                    ("method", denied.policy.path.clone()),
                    ("reason", denied.reason.clone()),
                    ("message", denied.message.clone()),
                ]
                .into_iter()
                .chain(denied.target.clone().map(|target| ("target", target)))
                .collect(),
            };
            let recorded = palisade_audit::record_alone(store.db(), &record, &relay);
            // The caller's refusal stands either way; a lost record is logged, not an error.
            if let Err(error) = recorded.await {
                tracing::error!(%error, method = %denied.policy.path, "a refused call could not be audited");
            }
        });
        tokio::spawn(write.instrument(tracing::Span::current()));
    }
}
