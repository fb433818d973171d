//! All SQL of the compliance service. Errors are mapped to API errors here, at the boundary.

use palisade_db::{Backend, Db, Scope};
use palisade_grpc::{ApiError, aip::Comparison};
use palisade_proto::palisade::compliance::v1::{AuditEvent, RequestOrigin};
use palisade_tenancy::TenantId;
use prost::Message;
use sqlx::{AssertSqlSafe, Row};

use crate::chain::{GENESIS_HASH, canonical_bytes, chain_hash};

/// A condition on listed events, already validated.
#[derive(Clone, Debug)]
pub enum EventFilter {
    Action(String),
    OccurTime(Comparison, i64),
}

/// What one append did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    pub appended: usize,
    pub duplicates: usize,
}

#[derive(Clone)]
pub struct AuditStore {
    db: Db,
}

impl AuditStore {
    pub fn new(db: Db) -> AuditStore {
        AuditStore { db }
    }

    /// Appends `events` to their tenants' chains in one transaction, skipping event ids that
    /// are already stored. Concurrent appends to one tenant serialise on its chain head row.
    /// The batch comes from a component's outbox relay and spans tenants by nature.
    pub async fn append(&self, events: &[AuditEvent]) -> Result<AppendOutcome, ApiError> {
        let mut tx = self
            .db
            .begin_in(Scope::AllTenants)
            .await
            .map_err(internal)?;
        let mut outcome = AppendOutcome::default();
        let recorded_at = palisade_grpc::time::now_micros();
        // Visit tenants in one global order (a stable sort keeps each tenant's own order), so
        // two batches touching the same tenants lock their chain heads in the same order and
        // can never deadlock on PostgreSQL.
        let mut in_lock_order: Vec<&AuditEvent> = events.iter().collect();
        in_lock_order.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        for event in in_lock_order {
            // Write first: on SQLite this takes the write lock at once, so a concurrent writer
            // waits (busy timeout) instead of failing to upgrade a read transaction.
            sqlx::query("INSERT INTO audit_chain_heads (tenant_id, sequence, hash) VALUES ($1, 0, $2) ON CONFLICT (tenant_id) DO NOTHING")
                .bind(&event.tenant_id)
                .bind(GENESIS_HASH.to_vec())
                .execute(&mut *tx)
                .await
                .map_err(internal)?;
            let lock = match self.db.backend() {
                Backend::Postgres => " FOR UPDATE",
                Backend::Sqlite => "",
            };
            // Only a constant suffix is spliced in; values are bound.
            let head_sql =
                format!("SELECT sequence, hash FROM audit_chain_heads WHERE tenant_id = $1{lock}");
            let head = sqlx::query(AssertSqlSafe(head_sql))
                .bind(&event.tenant_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(internal)?;
            // Checked under the head lock: a concurrent redelivery of the same event has either
            // committed (and is seen here) or waits for this transaction.
            let seen = sqlx::query("SELECT 1 FROM audit_events WHERE event_id = $1")
                .bind(&event.event_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(internal)?;
            if seen.is_some() {
                outcome.duplicates += 1;
                continue;
            }
            let sequence: i64 = head.try_get::<i64, _>("sequence").map_err(internal)? + 1;
            let previous_hash: Vec<u8> = head.try_get("hash").map_err(internal)?;
            let canonical = canonical_bytes(event);
            let hash = chain_hash(&previous_hash, &canonical);
            let occur_time = event
                .occur_time
                .as_ref()
                .map(palisade_grpc::time::micros)
                .unwrap_or_default();
            sqlx::query(
                "INSERT INTO audit_events (tenant_id, sequence, event_id, action, occur_time, canonical, previous_hash, hash, recorded_at, origin) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&event.tenant_id)
            .bind(sequence)
            .bind(&event.event_id)
            .bind(&event.action)
            .bind(occur_time)
            .bind(canonical)
            .bind(previous_hash)
            .bind(hash.clone())
            .bind(recorded_at)
            .bind(event.origin.as_ref().map(Message::encode_to_vec))
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
            sqlx::query(
                "UPDATE audit_chain_heads SET sequence = $1, hash = $2 WHERE tenant_id = $3",
            )
            .bind(sequence)
            .bind(hash)
            .bind(&event.tenant_id)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
            outcome.appended += 1;
        }
        tx.commit().await.map_err(internal)?;
        Ok(outcome)
    }

    /// One page of a tenant's events after `after_sequence`, in chain order; `limit` rows at most.
    pub async fn list(
        &self,
        tenant: &TenantId,
        after_sequence: i64,
        filters: &[EventFilter],
        limit: usize,
    ) -> Result<Vec<AuditEvent>, ApiError> {
        let mut sql = String::from(
            "SELECT sequence, canonical, previous_hash, hash, origin FROM audit_events WHERE tenant_id = $1 AND sequence > $2",
        );
        for (index, filter) in filters.iter().enumerate() {
            let placeholder = index + 3;
            match filter {
                EventFilter::Action(_) => sql.push_str(&format!(" AND action = ${placeholder}")),
                EventFilter::OccurTime(op, _) => {
                    sql.push_str(&format!(" AND occur_time {} ${placeholder}", op.sql()))
                }
            }
        }
        sql.push_str(&format!(" ORDER BY sequence LIMIT {limit}"));
        // The SQL is built from constants and numbered placeholders only; every value is bound.
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(after_sequence);
        for filter in filters {
            query = match filter {
                EventFilter::Action(action) => query.bind(action.clone()),
                EventFilter::OccurTime(_, micros) => query.bind(*micros),
            };
        }
        let mut tx = self
            .db
            .read_in(Scope::Tenant(tenant.as_str()))
            .await
            .map_err(internal)?;
        let rows = query.fetch_all(&mut *tx).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        rows.iter()
            .map(|row| {
                let canonical: Vec<u8> = row.try_get("canonical").map_err(internal)?;
                let mut event = AuditEvent::decode(canonical.as_slice()).map_err(internal)?;
                event.sequence = row.try_get("sequence").map_err(internal)?;
                event.previous_hash = row.try_get("previous_hash").map_err(internal)?;
                event.hash = row.try_get("hash").map_err(internal)?;
                let origin: Option<Vec<u8>> = row.try_get("origin").map_err(internal)?;
                event.origin = origin
                    .map(|bytes| RequestOrigin::decode(bytes.as_slice()))
                    .transpose()
                    .map_err(internal)?;
                event.name = format!("tenants/{}/auditEvents/{}", event.tenant_id, event.event_id);
                Ok(event)
            })
            .collect()
    }
}

/// A failed query as an API error (`UNAVAILABLE` when the database was only busy).
fn internal(error: impl std::fmt::Display + 'static) -> ApiError {
    ApiError::from_store("audit store", error)
}
