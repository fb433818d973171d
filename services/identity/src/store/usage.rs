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

/// A report batch as applied: whether it was new, and each reported tenant's total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageReport {
    pub applied: bool,
    pub totals: Vec<i64>,
}

impl IdentityStore {
    /// Adds each tenant's calls to its row for `period`, once per `batch_id`, in one
    /// transaction: a batch seen before changes nothing and still returns the totals. Calls
    /// for tenants that do not exist (deleted since the gateway counted them) are dropped
    /// and their total reads 0. Batch ids older than a day are forgotten on the way.
    pub async fn record_usage(
        &self,
        batch_id: &str,
        calls: &[(TenantId, i64)],
        period: &str,
        now: i64,
    ) -> Result<UsageReport, ApiError> {
        let mut tx = self.db.begin().await.map_err(internal)?;
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
            for (tenant, api_calls) in calls.iter().filter(|(_, calls)| *calls > 0) {
                sqlx::query(
                    "INSERT INTO tenant_usage (tenant_id, period, api_calls) \
                     SELECT id, $2, $3 FROM tenants WHERE id = $1 \
                     ON CONFLICT (tenant_id, period) \
                     DO UPDATE SET api_calls = tenant_usage.api_calls + excluded.api_calls",
                )
                .bind(tenant.as_str())
                .bind(period)
                .bind(*api_calls)
                .execute(&mut *tx)
                .await
                .map_err(internal)?;
            }
        }
        let mut totals = Vec::with_capacity(calls.len());
        for (tenant, _) in calls {
            totals.push(api_calls_on(&mut tx, tenant, period).await?);
        }
        tx.commit().await.map_err(internal)?;
        Ok(UsageReport { applied, totals })
    }

    /// The API calls reported for `tenant` in `period`.
    pub async fn api_calls(&self, tenant: &TenantId, period: &str) -> Result<i64, ApiError> {
        let mut conn = self.db.pool().acquire().await.map_err(internal)?;
        api_calls_on(&mut conn, tenant, period).await
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
