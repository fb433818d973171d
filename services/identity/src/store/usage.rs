//! Usage against plan limits: the API calls the gateway reports per tenant and month
//! (`tenant_usage`), the report batches already counted (`usage_batches`), and the counts of
//! the resources that limits cap.

use palisade_grpc::ApiError;
use palisade_tenancy::TenantId;
use sqlx::{AnyConnection, Row};

use super::{IdentityStore, internal};

/// How long a report batch id is remembered: a gateway retries a lost answer within seconds,
/// so a day is plenty, and the table stays small.
const BATCH_MEMORY_MICROS: i64 = 24 * 3600 * 1_000_000;

/// How each countable limit is counted now: the SQL (tenant id as `$1`), and whether it takes
/// the current time as `$2`. A limit that caps a new kind of resource is one line here.
const COUNTS: &[(&str, &str, bool)] = &[
    (
        "users",
        // Disabled users do not take a place: disabling one makes room.
        "SELECT COUNT(*) FROM users WHERE tenant_id = $1 AND state = 'active'",
        false,
    ),
    (
        "api_keys",
        "SELECT COUNT(*) FROM api_keys \
         WHERE tenant_id = $1 AND revoke_time IS NULL AND expire_time > $2",
        true,
    ),
    (
        "custom_roles",
        "SELECT COUNT(*) FROM roles WHERE tenant_id = $1",
        false,
    ),
];

/// A tenant's calls counted in one month (`YYYY-MM`, the key usage is stored under).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountedCalls {
    pub tenant: TenantId,
    pub api_calls: i64,
    pub month: String,
}

/// A report batch as applied: whether it was new, and each reported tenant's total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageReport {
    pub applied: bool,
    pub totals: Vec<i64>,
}

impl IdentityStore {
    /// Adds each tenant's calls to its row for the month they were counted in, once per
    /// `batch_id`, in one transaction, and returns each tenant's total for `current_month`: a
    /// batch seen before changes nothing and still returns the totals. Calls for tenants that
    /// do not exist (deleted since the gateway counted them) are dropped and their total reads
    /// 0. Batch ids older than a day are forgotten on the way.
    pub async fn record_usage(
        &self,
        batch_id: &str,
        calls: &[CountedCalls],
        current_month: &str,
        now: i64,
    ) -> Result<UsageReport, ApiError> {
        let mut tx = self.db.begin().await.map_err(ApiError::from)?;
        sqlx::query("DELETE FROM usage_batches WHERE receive_time < $1")
            .bind(now - BATCH_MEMORY_MICROS)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        // Concurrent copies of one batch meet on the primary key: the second waits for the
        // first to commit and then inserts nothing.
        let applied = sqlx::query(
            "INSERT INTO usage_batches (id, receive_time) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(batch_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(internal)?
        .rows_affected()
            == 1;
        if applied {
            for counted in calls.iter().filter(|counted| counted.api_calls > 0) {
                sqlx::query(
                    "INSERT INTO tenant_usage (tenant_id, period, api_calls) \
                     SELECT id, $2, $3 FROM tenants WHERE id = $1 \
                     ON CONFLICT (tenant_id, period) \
                     DO UPDATE SET api_calls = CASE \
                         WHEN tenant_usage.api_calls > $4 - excluded.api_calls THEN $4 \
                         ELSE tenant_usage.api_calls + excluded.api_calls END",
                )
                .bind(counted.tenant.as_str())
                .bind(&counted.month)
                .bind(counted.api_calls)
                // Saturating: a total past i64 would fail the batch (PostgreSQL) or turn the
                // column REAL (SQLite), and the gateway would send that batch again forever.
                .bind(i64::MAX)
                .execute(&mut *tx)
                .await
                .map_err(internal)?;
            }
        }
        let mut totals = Vec::with_capacity(calls.len());
        for counted in calls {
            totals.push(api_calls_on(&mut tx, &counted.tenant, current_month).await?);
        }
        tx.commit().await.map_err(internal)?;
        Ok(UsageReport { applied, totals })
    }

    /// The API calls reported for `tenant` in `period`.
    pub async fn api_calls(&self, tenant: &TenantId, period: &str) -> Result<i64, ApiError> {
        let mut conn = self.db.pool().acquire().await.map_err(internal)?;
        api_calls_on(&mut conn, tenant, period).await
    }

    /// What `tenant` has used of each of `limits` now: API calls reported in `period`, or how
    /// many of the resources a limit caps it holds (0 for rates, which accrue nothing). All
    /// read on one connection: a call holding one while it waits for a second would, with as
    /// many such calls as the pool has connections, leave every query of identity waiting.
    pub async fn used(
        &self,
        tenant: &TenantId,
        limits: &[&'static str],
        period: &str,
        now: i64,
    ) -> Result<Vec<(&'static str, i64)>, ApiError> {
        let mut conn = self.db.pool().acquire().await.map_err(internal)?;
        let mut used = Vec::with_capacity(limits.len());
        for &limit in limits {
            let count = match limit {
                "api_calls_per_month" => api_calls_on(&mut conn, tenant, period).await?,
                _ => self.count_limited(&mut conn, tenant, limit, now).await?,
            };
            used.push((limit, count));
        }
        Ok(used)
    }

    /// How many of the resources `limit` caps `tenant` has now; 0 for limits that cap no
    /// stored resource (rates, monthly calls) and for resources not stored yet.
    pub async fn count_limited(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantId,
        limit: &str,
        now: i64,
    ) -> Result<i64, ApiError> {
        let Some((_, sql, with_now)) = COUNTS.iter().find(|(name, _, _)| *name == limit) else {
            return Ok(0);
        };
        let mut query = sqlx::query(*sql).bind(tenant.as_str());
        if *with_now {
            query = query.bind(now);
        }
        let row = query.fetch_one(&mut *conn).await.map_err(internal)?;
        row.try_get::<i64, _>(0).map_err(internal)
    }

    /// Refuses to create one more resource of `limit` (`users`, `api_keys`, `custom_roles`)
    /// when the tenant already has as many as its plan allows. Call it inside the creating
    /// transaction, before the insert: it locks the tenant row (PostgreSQL), so concurrent
    /// creations in one tenant queue here and cannot overshoot the limit together (SQLite's
    /// write transactions are serialized anyway).
    pub async fn ensure_within_limit(
        &self,
        conn: &mut AnyConnection,
        tenant: &TenantId,
        limit: &str,
    ) -> Result<(), ApiError> {
        let record = self
            .lock_tenant(conn, tenant)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                resource: format!("tenants/{tenant}"),
            })?;
        let entitlements = record.entitlements();
        let used = self
            .count_limited(conn, tenant, limit, palisade_grpc::time::now_micros())
            .await?;
        if entitlements.allows(limit, used + 1) {
            return Ok(());
        }
        let max = entitlements.limit(limit).unwrap_or_default();
        Err(ApiError::ResourceExhausted {
            reason: "LIMIT_EXCEEDED",
            message: format!(
                "tenants/{tenant} has reached its {limit} limit of {max}; \
                 free one (disabled users and revoked keys \
                 do not count) or ask for a higher limit"
            ),
            subject: format!("tenants/{tenant}"),
            description: format!("{limit} limit of {max} reached"),
            retry_after: None,
        })
    }
}

async fn api_calls_on(
    conn: &mut AnyConnection,
    tenant: &TenantId,
    period: &str,
) -> Result<i64, ApiError> {
    let row =
        sqlx::query("SELECT api_calls FROM tenant_usage WHERE tenant_id = $1 AND period = $2")
            .bind(tenant.as_str())
            .bind(period)
            .fetch_optional(&mut *conn)
            .await
            .map_err(internal)?;
    row.map_or(Ok(0), |row| row.try_get("api_calls").map_err(internal))
}

#[cfg(test)]
mod tests {
    use palisade_grpc::BoxError;

    use super::*;
    use crate::store::testing::store_with_tenant;

    #[tokio::test]
    async fn a_months_total_stops_at_the_largest_count_rather_than_failing() -> Result<(), BoxError>
    {
        let (_dir, store, acme) = store_with_tenant().await?;
        let half = CountedCalls {
            tenant: acme.id.clone(),
            api_calls: i64::MAX / 2 + 10,
            month: "2026-12".into(),
        };
        let first = store
            .record_usage("b1", std::slice::from_ref(&half), "2026-12", 1)
            .await?;
        assert_eq!(first.totals, [i64::MAX / 2 + 10]);
        // Past i64 the sum would fail the batch, and the gateway would send it forever.
        let second = store.record_usage("b2", &[half], "2026-12", 2).await?;
        assert_eq!(second.totals, [i64::MAX]);
        assert_eq!(store.api_calls(&acme.id, "2026-12").await?, i64::MAX);
        Ok(())
    }
}
