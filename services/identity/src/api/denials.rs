//! Identity's [`DenialSink`]: a refused call to one of its audited methods (`denial_audit.rs`
//! in palisade-grpc) becomes an event in the caller's tenant's audit log, outcome `DENIED`,
//! naming the method and why it was refused.
//!
//! The refusal does not wait for its record: the write runs in the background, at most
//! `MAX_WRITING` at once, and a refusal arriving while that many are being written is not
//! recorded on its own. So a flood of refused calls (a stale client retrying with a revoked
//! key) cannot queue the store's writers (on SQLite, one for everything) behind its audit
//! records, nor slow the refusals themselves. Nor can it hide a refusal from the log: those
//! not recorded are counted per tenant, and once a writer is free the count is recorded, one
//! event per tenant (`identity.denials.unrecorded`, with how many and of which methods).
//! The counts are kept in memory: a restart loses those not yet recorded, and beyond
//! `MAX_TENANTS_COUNTED` tenants at once refusals are only logged.
//! Each writer looks for counts after it is done, and a refusal goes uncounted only while
//! every writer is busy (and looks again if one freed up meanwhile), so the count is always
//! found.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use palisade_audit::AuditRecord;
use palisade_db::outbox::Relay;
use palisade_grpc::{DenialSink, DeniedCall};
use palisade_proto::palisade::compliance::v1::Outcome;
use palisade_tenancy::TenantId;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::store::IdentityStore;

/// Refusals whose handler records its own event, with more to say than this sink knows: a
/// wrong current password counts towards the lockout.
const AUDITED_BY_THE_HANDLER: &[&str] = &["WRONG_PASSWORD"];

/// Refusals being recorded at once, at most.
const MAX_WRITING: usize = 8;

/// The action of the event that counts a tenant's refusals not recorded one by one.
pub const UNRECORDED_ACTION: &str = "identity.denials.unrecorded";

/// Methods an `identity.denials.unrecorded` event names, at most (the count covers all).
const MAX_METHODS_NAMED: usize = 32;

/// Tenants whose unrecorded refusals are counted at once, at most: denials come from
/// principals of existing tenants, so only a very large mesh reaches it; beyond it refusals
/// are only logged.
const MAX_TENANTS_COUNTED: usize = 10_000;

pub struct AuditDenials {
    writer: Writer,
}

/// What writes refusals into the outbox, shared with the writes in flight.
#[derive(Clone)]
struct Writer {
    store: IdentityStore,
    relay: Relay,
    writing: Arc<Semaphore>,
    unrecorded: Arc<Mutex<Unrecorded>>,
}

/// Refusals not recorded one by one because `MAX_WRITING` were being written, per tenant.
#[derive(Debug, Default)]
struct Unrecorded {
    by_tenant: HashMap<TenantId, Count>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Count {
    refusals: u64,
    /// The methods refused, the first `MAX_METHODS_NAMED` of them.
    methods: BTreeSet<String>,
}

impl Unrecorded {
    /// Counts a refusal of `method` in `tenant`; false when it could not be counted.
    fn count(&mut self, tenant: &TenantId, method: &str) -> bool {
        if !self.by_tenant.contains_key(tenant) && self.by_tenant.len() >= MAX_TENANTS_COUNTED {
            return false;
        }
        let count = self.by_tenant.entry(tenant.clone()).or_default();
        count.refusals += 1;
        if count.methods.len() < MAX_METHODS_NAMED {
            count.methods.insert(method.to_owned());
        }
        true
    }
}

impl AuditDenials {
    pub fn new(store: IdentityStore, relay: Relay) -> AuditDenials {
        AuditDenials {
            writer: Writer {
                store,
                relay,
                writing: Arc::new(Semaphore::new(MAX_WRITING)),
                unrecorded: Arc::default(),
            },
        }
    }
}

impl Writer {
    /// Records the counts of refusals not recorded, while a writer is free and there are any.
    /// Called by each write once done (its place freed), outside the call it recorded: the
    /// counts are not that call's.
    async fn record_unrecorded(&self) {
        loop {
            let Ok(place) = self.writing.try_acquire() else {
                // Every writer is busy, and each will look once done.
                return;
            };
            let counts =
                std::mem::take(&mut self.unrecorded.lock().expect("not poisoned").by_tenant);
            if counts.is_empty() {
                // Counted while this held its place, a refusal may have seen no writer free;
                // so the place is given back before looking again (a refusal counts, then
                // looks for a free place; this frees its place, then looks for counts).
                drop(place);
                if self
                    .unrecorded
                    .lock()
                    .expect("not poisoned")
                    .by_tenant
                    .is_empty()
                {
                    return;
                }
                continue;
            }
            for (tenant, count) in counts {
                let methods: Vec<String> = count.methods.into_iter().collect();
                let record = AuditRecord {
                    tenant: &tenant,
                    actor_tenant: &tenant,
                    actor: None,
                    action: UNRECORDED_ACTION,
                    resource: &format!("tenants/{tenant}"),
                    outcome: Outcome::Denied,
                    request_id: None,
                    source: crate::COMPONENT,
                    attributes: vec![
                        ("refusals", count.refusals.to_string()),
                        ("methods", methods.join(" ")),
                    ],
                };
                let recorded = palisade_audit::record_alone(self.store.db(), &record, &self.relay);
                if let Err(error) = recorded.await {
                    tracing::error!(%error, %tenant, refusals = count.refusals, "refused calls could not be audited");
                }
            }
        }
    }
}

impl DenialSink for AuditDenials {
    fn record(&self, denied: DeniedCall) {
        if AUDITED_BY_THE_HANDLER.contains(&denied.reason.as_str()) {
            return;
        }
        let writer = &self.writer;
        let Ok(permit) = writer.writing.clone().try_acquire_owned() else {
            let tenant = &denied.context.tenant_id;
            let counted = (writer.unrecorded.lock().expect("not poisoned"))
                .count(tenant, &denied.policy.path);
            if !counted {
                tracing::warn!(%tenant, method = %denied.policy.path, "a refused call was not audited: too many being recorded");
            }
            // Every writer may have looked for counts and finished between the try above and
            // the count: then a free writer records it now.
            if writer.writing.available_permits() > 0 {
                let writer = writer.clone();
                let counts = tracing::info_span!(parent: None, "unrecorded_denials");
                tokio::spawn(async move { writer.record_unrecorded().await }.instrument(counts));
            }
            return;
        };
        let (store, relay) = (writer.store.clone(), writer.relay.clone());
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
        let writer = writer.clone();
        let call = tracing::Span::current();
        let written = async move {
            write.instrument(call).await;
            // Not this call's: recorded under no call's trace.
            let counts = tracing::info_span!(parent: None, "unrecorded_denials");
            writer.record_unrecorded().instrument(counts).await;
        };
        tokio::spawn(written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_per_tenant_with_a_bounded_list_of_methods() {
        let mut unrecorded = Unrecorded::default();
        let acme = TenantId::parse("acme").unwrap();
        for method in 0..40 {
            assert!(unrecorded.count(&acme, &format!("/m{method:02}")));
        }
        assert!(unrecorded.count(&acme, "/m00"));
        let count = &unrecorded.by_tenant[&acme];
        assert_eq!(count.refusals, 41);
        assert_eq!(count.methods.len(), MAX_METHODS_NAMED);

        for tenant in 1..MAX_TENANTS_COUNTED {
            let tenant = TenantId::parse(&format!("tenant-{tenant}")).unwrap();
            assert!(unrecorded.count(&tenant, "/m"));
        }
        let one_more = TenantId::parse("globex").unwrap();
        assert!(!unrecorded.count(&one_more, "/m"));
        assert!(
            unrecorded.count(&acme, "/m"),
            "a tenant already counted still is"
        );
    }
}
