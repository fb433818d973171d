//! Monthly API-call quotas: every call the gateway lets through for a tenant is counted here
//! and reported to identity (`EdgeService.ReportUsage`) in batches, about once a second and
//! once more at shutdown. A call is refused when identity's count plus the calls counted here
//! and not yet acknowledged reaches the tenant's `api_calls_per_month`.
//!
//! A batch that fails is sent again with the same `batch_id` (identity applies a batch once),
//! and the calls counted meanwhile wait for the next batch, so no count is lost or doubled.
//! Each entry says when its calls were counted, and calls from a month that has ended go in an
//! entry of their own, so they count in their month even when identity hears of them later.
//! Until identity acknowledges a batch its calls still count against the quota here. Several
//! gateways each add their own unreported calls to the count identity last gave them, so a
//! tenant may overshoot by what the others counted within about a second.

use std::{collections::HashMap, sync::Arc, time::Duration};

use palisade_grpc::{
    ApiError, MeshChannel,
    time::{micros, month_at, timestamp},
};
use palisade_proto::palisade::identity::v1::{
    ReportUsageRequest, TenantCalls, edge_service_client::EdgeServiceClient,
};
use palisade_tenancy::TenantId;
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    sharded::{SHARDS, Sharded},
    tenants::EdgeTenant,
};

/// Tenants with a counter at once; counters with nothing unreported are the ones dropped.
const MAX_METERS: usize = 65_536;
/// Tenants per batch, so that identity applies one well within `REPORT_TIMEOUT` (identity
/// takes at most 1,000); more tenants with calls go in further batches right after.
const MAX_BATCH_TENANTS: usize = 500;
/// Batches sent per tick at most, the rest waiting for the next tick.
const MAX_BATCHES_PER_TICK: usize = 64;
/// How often counts are reported.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How long one report waits for identity.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of the final report at shutdown.
const FINAL_ATTEMPTS: u32 = 3;

/// One tenant's count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Meter {
    /// Identity's count for the month ending at `period_end`.
    used: i64,
    /// Counted here, not yet in a batch, all in the month ending at `pending_until`.
    pending: i64,
    /// When the first of `pending` was counted (micros): the count time reported for them.
    pending_since: i64,
    pending_until: i64,
    /// Counted here in months that ended before the calls went in a batch, as (count time,
    /// calls): empty but for a tenant called across a month's end since the last batch.
    earlier: Vec<(i64, i64)>,
    /// Counted here, in the batch being reported.
    reporting: i64,
    period_end: i64,
}

impl Meter {
    /// Counts one call at `now`. Pending calls of a month that has ended are set aside first,
    /// so that they are reported as that month's.
    fn count(&mut self, now: i64) {
        self.close_ended_month(now);
        if self.pending == 0 {
            self.pending_since = now;
            self.pending_until = month_at(now).end;
        }
        self.pending += 1;
    }

    fn close_ended_month(&mut self, now: i64) {
        if self.pending > 0 && now >= self.pending_until {
            self.earlier.push((self.pending_since, self.pending));
            self.pending = 0;
        }
    }

    /// Whether calls counted here wait for identity: such a meter is never dropped.
    fn unreported(&self) -> bool {
        self.pending + self.reporting > 0 || !self.earlier.is_empty()
    }

    /// Moves every unreported count into `entries`, as one entry per month counted in.
    fn report(&mut self, tenant: &TenantId, entries: &mut Vec<Counted>) {
        let months = std::mem::take(&mut self.earlier);
        let current = (self.pending > 0).then_some((self.pending_since, self.pending));
        for (count_time, calls) in months.into_iter().chain(current) {
            entries.push(Counted {
                tenant: tenant.clone(),
                calls,
                count_time,
            });
            self.reporting += calls;
        }
        self.pending = 0;
    }

    /// Takes in a newer count from identity (it includes other gateways' reports).
    fn learn(&mut self, used: i64, period_end: i64) {
        if period_end > self.period_end {
            self.used = used;
            self.period_end = period_end;
        } else if period_end == self.period_end {
            self.used = self.used.max(used);
        }
    }

    /// Calls this month so far, as far as this gateway knows at `now` (micros).
    fn total(&self, now: i64) -> i64 {
        // A new month began and identity has not said so yet: its count is last month's.
        let used = if now >= self.period_end { 0 } else { self.used };
        let pending = if now >= self.pending_until {
            0
        } else {
            self.pending
        };
        // Saturating: identity's total stops at the largest count rather than overflow.
        used.saturating_add(pending).saturating_add(self.reporting)
    }
}

/// What one report achieved.
#[derive(Debug, PartialEq, Eq)]
enum Flushed {
    /// Acknowledged, and it held every count there was.
    Done,
    /// Acknowledged, and counts are left for another batch.
    More,
    /// Not acknowledged; it goes again next time.
    Failed,
}

/// A batch handed to identity and not yet acknowledged.
#[derive(Clone, Debug)]
struct Batch {
    id: String,
    calls: Vec<Counted>,
}

/// One entry of a batch: a tenant's calls counted in one month.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Counted {
    tenant: TenantId,
    calls: i64,
    /// When the first of them was counted (micros).
    count_time: i64,
}

/// Every tenant's count, and the batch in flight.
pub struct UsageMeter {
    meters: Sharded<TenantId, Meter>,
    identity: EdgeServiceClient<MeshChannel>,
    /// Only the flusher touches it; a tokio mutex because it is held across the report.
    outstanding: tokio::sync::Mutex<Option<Batch>>,
    /// Where the next batch's walk starts: a shard, and a position in it.
    resume: std::sync::Mutex<(usize, usize)>,
}

impl UsageMeter {
    pub fn new(identity: MeshChannel) -> UsageMeter {
        UsageMeter {
            meters: Sharded::with_capacity(MAX_METERS),
            identity: EdgeServiceClient::new(identity),
            outstanding: tokio::sync::Mutex::new(None),
            resume: std::sync::Mutex::new((0, 0)),
        }
    }

    /// Counts one call of `tenant` at `now` (micros), or refuses it when the month's quota is
    /// used up (`RESOURCE_EXHAUSTED`, reason `QUOTA_EXCEEDED`, retry at the month's end).
    pub fn admit(&self, tenant: &EdgeTenant, now: i64) -> Result<(), ApiError> {
        self.meters.with(&tenant.id, |shard| {
            if !shard.contains_key(&tenant.id) {
                // Meters with calls not yet reported are never dropped.
                self.meters.make_room(
                    shard,
                    |meter| meter.unreported(),
                    |meter| (!meter.unreported()).then_some(()),
                );
                shard.insert(tenant.id.clone(), Meter::default());
            }
            let meter = shard.get_mut(&tenant.id).expect("inserted above");
            // While a batch is out, identity's count may already hold it (applied, the answer
            // not back yet): taking that count in would count the batch twice until then.
            if meter.reporting == 0 || tenant.period_end > meter.period_end {
                meter.learn(tenant.calls_used, tenant.period_end);
            }
            if let Some(limit) = tenant.monthly_calls
                && meter.total(now) >= limit
            {
                return Err(quota_exceeded(tenant, limit, meter.period_end, now));
            }
            meter.count(now);
            Ok(())
        })
    }

    /// Reports batches until every call counted so far is acknowledged, one fails, or
    /// `max_batches` went. Returns whether everything counted is acknowledged.
    pub async fn flush_all(&self, max_batches: usize) -> bool {
        for _ in 0..max_batches {
            match self.flush().await {
                Flushed::Done => return true,
                Flushed::More => {}
                Flushed::Failed => return false,
            }
        }
        false
    }

    /// Reports one batch: the one that failed last time, if any, else a new one.
    async fn flush(&self) -> Flushed {
        let mut outstanding = self.outstanding.lock().await;
        let resent = outstanding.is_some();
        if !resent {
            *outstanding = self.next_batch();
        }
        let Some(batch) = outstanding.clone() else {
            return Flushed::Done;
        };
        let request = ReportUsageRequest {
            batch_id: batch.id.clone(),
            calls: batch
                .calls
                .iter()
                .map(|counted| TenantCalls {
                    tenant_id: counted.tenant.to_string(),
                    api_calls: counted.calls,
                    count_time: Some(timestamp(counted.count_time)),
                })
                .collect(),
        };
        let mut identity = self.identity.clone();
        // Bounded, so that shutdown (which reports once more) cannot hang on identity.
        let answer = tokio::time::timeout(REPORT_TIMEOUT, identity.report_usage(request))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time")));
        match answer {
            Ok(response) => {
                let response = response.into_inner();
                let period_end = response.period_end.as_ref().map_or(i64::MAX, micros);
                let totals: HashMap<&str, i64> = response
                    .totals
                    .iter()
                    .map(|total| (total.tenant_id.as_str(), total.api_calls))
                    .collect();
                for Counted { tenant, calls, .. } in &batch.calls {
                    self.meters.with(tenant, |shard| {
                        let meter = shard.entry(tenant.clone()).or_default();
                        meter.reporting -= calls;
                        if let Some(total) = totals.get(tenant.as_str()) {
                            meter.learn(*total, period_end);
                        }
                    });
                }
                *outstanding = None;
                if resent || batch.calls.len() >= MAX_BATCH_TENANTS {
                    Flushed::More
                } else {
                    Flushed::Done
                }
            }
            Err(status) if status.code() == Code::InvalidArgument => {
                // Refused as a whole, so nothing was applied: drop the entries identity named
                // (a tenant deleted since) and send the rest as a new batch next time.
                let bad = bad_entries(&status);
                tracing::warn!(batch = %batch.id, ?bad, message = status.message(), "usage report refused");
                let (dropped, kept): (Vec<_>, Vec<_>) = batch
                    .calls
                    .into_iter()
                    .enumerate()
                    .partition(|(index, _)| bad.is_empty() || bad.contains(index));
                for (_, Counted { tenant, calls, .. }) in dropped {
                    self.meters.with(&tenant, |shard| {
                        shard.entry(tenant.clone()).or_default().reporting -= calls
                    });
                }
                *outstanding = (!kept.is_empty()).then(|| Batch {
                    id: uuid::Uuid::now_v7().to_string(),
                    calls: kept.into_iter().map(|(_, entry)| entry).collect(),
                });
                Flushed::Failed
            }
            Err(status) => {
                tracing::warn!(batch = %batch.id, code = ?status.code(), message = status.message(), "usage report failed; will retry");
                Flushed::Failed
            }
        }
    }

    /// Moves pending counts, of at most `MAX_BATCH_TENANTS` tenants (an entry for each month
    /// a tenant's calls were counted in), into a new batch. The
    /// walk resumes where the last full batch stopped (a shard and a position in it), takes
    /// the rest of the shards in turn and that shard's beginning last, so when more tenants
    /// have calls than a tick's batches hold, each waits at most a lap, not forever.
    /// (Positions shift as tenants come and go; a lap is then only about fair.)
    fn next_batch(&self) -> Option<Batch> {
        let mut calls = Vec::new();
        let mut resume = self.resume.lock().expect("resume lock");
        let (first, skip) = *resume;
        *resume = (first, 0);
        for step in 0..=SHARDS {
            let index = (first + step) % SHARDS;
            let full = self.meters.with_shard(index, |shard| {
                let lap = shard
                    .iter_mut()
                    .enumerate()
                    .filter(|(position, _)| match step {
                        0 => *position >= skip,
                        SHARDS => *position < skip,
                        _ => true,
                    });
                for (position, (tenant, meter)) in lap {
                    if calls.len() >= MAX_BATCH_TENANTS {
                        *resume = (index, position);
                        return true;
                    }
                    meter.report(tenant, &mut calls);
                }
                false
            });
            if full {
                break;
            }
        }
        (!calls.is_empty()).then(|| Batch {
            id: uuid::Uuid::now_v7().to_string(),
            calls,
        })
    }

    /// Reports every second until `stop` resolves, then reports what is left.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let mut ticks = tokio::time::interval(FLUSH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = ticks.tick() => { self.flush_all(MAX_BATCHES_PER_TICK).await; }
                () = &mut stop => break,
            }
        }
        for _ in 0..FINAL_ATTEMPTS {
            // A batch that failed goes first, then the rest, as many batches as it takes.
            if self.flush_all(usize::MAX).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::error!("usage counts could not be reported before shutdown");
    }
}

fn quota_exceeded(tenant: &EdgeTenant, limit: i64, period_end: i64, now: i64) -> ApiError {
    ApiError::ResourceExhausted {
        reason: "QUOTA_EXCEEDED",
        message: format!(
            "tenant {} has used its {limit} API calls for this month",
            tenant.id
        ),
        subject: format!("tenants/{}", tenant.id),
        description: format!("api_calls_per_month: {limit}"),
        retry_after: (period_end > now && period_end != i64::MAX)
            .then(|| Duration::from_micros((period_end - now) as u64)),
    }
}

/// The indexes of `calls[i]` that a refusal's field violations name.
fn bad_entries(status: &tonic::Status) -> Vec<usize> {
    let details = status.get_error_details();
    let Some(bad) = details.bad_request() else {
        return Vec::new();
    };
    bad.field_violations
        .iter()
        .filter_map(|violation| {
            let rest = violation.field.strip_prefix("calls[")?;
            rest[..rest.find(']')?].parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenants::EdgeTenant;
    use palisade_proto::palisade::identity::v1::TenantState;

    const MONTH_END: i64 = 1_000_000_000;

    /// A meter whose identity refuses connections, as when identity is down.
    fn meter() -> UsageMeter {
        use tower::Layer;
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let metrics = palisade_telemetry::ComponentMetrics::new("gateway");
        let channel = palisade_grpc::ClientObserveLayer::new("gateway", metrics.rpc.client.clone())
            .layer(palisade_tenancy::PropagateContext::new(channel));
        UsageMeter::new(channel)
    }

    fn acme(limit: Option<i64>, used: i64) -> EdgeTenant {
        EdgeTenant {
            id: TenantId::parse("acme").unwrap(),
            state: TenantState::Active,
            rate: None,
            monthly_calls: limit,
            calls_used: used,
            period_end: MONTH_END,
        }
    }

    /// A batch's entries as (tenant, calls).
    fn entries(batch: &Batch) -> Vec<(TenantId, i64)> {
        let entry = |counted: &Counted| (counted.tenant.clone(), counted.calls);
        batch.calls.iter().map(entry).collect()
    }

    #[test]
    fn meters_learn_newer_counts_and_new_months() {
        let mut meter = Meter {
            used: 10,
            pending: 2,
            pending_until: MONTH_END,
            reporting: 3,
            period_end: MONTH_END,
            ..Meter::default()
        };
        assert_eq!(meter.total(0), 15);
        meter.learn(8, MONTH_END); // an older answer changes nothing
        assert_eq!(meter.used, 10);
        meter.learn(12, MONTH_END);
        assert_eq!(meter.used, 12);
        // The month ended: identity's count and the calls counted here in it no longer apply;
        // a batch in flight still counts until identity acknowledges it.
        assert_eq!(meter.total(MONTH_END), 3);
        meter.learn(1, MONTH_END * 2);
        assert_eq!((meter.used, meter.period_end), (1, MONTH_END * 2));
    }

    #[test]
    fn bad_entries_are_read_from_field_violations() {
        let status: tonic::Status = ApiError::InvalidArgument(vec![
            palisade_grpc::FieldViolation::new("calls[2].tenant_id", "no such tenant"),
            palisade_grpc::FieldViolation::new("batch_id", "is required"),
        ])
        .into();
        assert_eq!(bad_entries(&status), vec![2]);
    }

    #[tokio::test]
    async fn a_quota_counts_unreported_calls() {
        let usage = meter();
        let tenant = acme(Some(5), 3);
        usage.admit(&tenant, 0).unwrap();
        usage.admit(&tenant, 0).unwrap();
        let refused = tonic::Status::from(usage.admit(&tenant, 0).unwrap_err());
        assert_eq!(refused.code(), Code::ResourceExhausted);
        let details = refused.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "QUOTA_EXCEEDED");
        assert_eq!(
            details.quota_failure().unwrap().violations[0].subject,
            "tenants/acme"
        );
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(Duration::from_micros(MONTH_END as u64))
        );
        // In a batch, not yet acknowledged: still counted.
        let batch = usage.next_batch().unwrap();
        assert_eq!(entries(&batch), vec![(tenant.id.clone(), 2)]);
        assert!(usage.admit(&tenant, 0).is_err());
        assert!(usage.next_batch().is_none());
        // Unlimited tenants are counted but never refused.
        let unlimited = acme(None, 1_000_000);
        usage.admit(&unlimited, 0).unwrap();
        assert_eq!(usage.next_batch().unwrap().calls[0].calls, 1);
    }

    /// Many more tenants with calls than a batch holds, more in each shard than a batch
    /// holds too, every tenant calling again before each batch: within a lap of batches,
    /// every tenant has gone, though those that went have calls again at once.
    #[tokio::test]
    async fn batches_take_turns_across_tenants() {
        let usage = meter();
        let tenants: Vec<EdgeTenant> = (0..SHARDS * 750)
            .map(|i| EdgeTenant {
                id: TenantId::parse(&format!("tenant-{i}")).unwrap(),
                ..acme(None, 0)
            })
            .collect();
        let mut gone = std::collections::HashSet::new();
        for _ in 0..tenants.len().div_ceil(MAX_BATCH_TENANTS) + 1 {
            for tenant in &tenants {
                usage.admit(tenant, 0).unwrap();
            }
            let batch = usage.next_batch().unwrap();
            assert_eq!(batch.calls.len(), MAX_BATCH_TENANTS);
            gone.extend(batch.calls.into_iter().map(|counted| counted.tenant));
        }
        assert_eq!(
            gone.len(),
            tenants.len(),
            "tenants left out for a whole lap"
        );
    }

    #[tokio::test]
    async fn a_failed_report_is_sent_again_as_it_was() {
        let usage = meter();
        let tenant = acme(Some(100), 0);
        usage.admit(&tenant, 0).unwrap();
        usage.admit(&tenant, 0).unwrap();
        assert_eq!(usage.flush().await, Flushed::Failed);
        let first = usage.outstanding.lock().await.clone().unwrap();
        assert_eq!(entries(&first), vec![(tenant.id.clone(), 2)]);
        // Calls counted meanwhile wait for the next batch; the failed one goes again as it was.
        usage.admit(&tenant, 0).unwrap();
        assert!(!usage.flush_all(3).await);
        let again = usage.outstanding.lock().await.clone().unwrap();
        assert_eq!((again.id, again.calls), (first.id, first.calls));
        let meter = usage
            .meters
            .with(&tenant.id, |shard| shard[&tenant.id].clone());
        assert_eq!((meter.pending, meter.reporting), (1, 2));
    }

    #[tokio::test]
    async fn a_batch_holds_a_bounded_number_of_tenants() {
        let usage = meter();
        for i in 0..(MAX_BATCH_TENANTS + 7) {
            let mut tenant = acme(None, 0);
            tenant.id = TenantId::parse(&format!("tenant-{i:04}")).unwrap();
            usage.admit(&tenant, 0).unwrap();
        }
        assert_eq!(usage.next_batch().unwrap().calls.len(), MAX_BATCH_TENANTS);
        assert_eq!(usage.next_batch().unwrap().calls.len(), 7);
        assert!(usage.next_batch().is_none());
    }

    #[tokio::test]
    async fn identity_count_is_not_taken_in_while_a_batch_is_out() {
        let usage = meter();
        usage.admit(&acme(Some(3), 0), 0).unwrap();
        usage.admit(&acme(Some(3), 0), 0).unwrap();
        assert!(usage.next_batch().is_some());
        // Identity applied the batch, its answer not back yet: the directory already says 2.
        usage.admit(&acme(Some(3), 2), 0).unwrap();
        // A new month's count is still taken in.
        let mut next_month = acme(Some(10), 1);
        next_month.period_end = MONTH_END * 2;
        usage.admit(&next_month, MONTH_END).unwrap();
        let id = &next_month.id;
        let meter = usage.meters.with(id, |shard| shard[id].clone());
        assert_eq!((meter.used, meter.period_end), (1, MONTH_END * 2));
    }

    /// Calls on both sides of a month's end, not reported in between (identity was down, or
    /// the month ended within a flush interval): each month's calls go in an entry of their
    /// own, timed in that month, and last month's no longer count against this month's quota.
    #[tokio::test]
    async fn calls_across_a_month_end_are_reported_in_their_months() {
        let usage = meter();
        let november = month_at(1_795_259_646_000_000);
        let december = month_at(november.end);
        let mut tenant = acme(Some(3), 0);
        tenant.period_end = november.end;
        for time in [
            november.end - 2_000_000,
            november.end - 1_000_000,
            november.end - 1,
        ] {
            usage.admit(&tenant, time).unwrap();
        }
        assert!(usage.admit(&tenant, november.end - 1).is_err());
        // A new month: the quota starts again although November's calls are unreported.
        usage.admit(&tenant, december.start).unwrap();
        usage.admit(&tenant, december.start + 5).unwrap();
        let batch = usage.next_batch().unwrap();
        let counted: Vec<(i64, String)> = (batch.calls.iter())
            .map(|counted| (counted.calls, month_at(counted.count_time).key))
            .collect();
        assert_eq!(counted, [(3, november.key), (2, december.key)]);
        let id = &tenant.id;
        let meter = usage.meters.with(id, |shard| shard[id].clone());
        assert_eq!((meter.pending, meter.reporting), (0, 5));
        assert!(meter.earlier.is_empty());
    }
}
