//! All SQL of the compliance service. Errors are mapped to API errors here, at the boundary.

use std::collections::{BTreeMap, HashSet};

use palisade_db::{Backend, Db, Scope, placeholders};
use palisade_grpc::{ApiError, aip::Comparison};
use palisade_proto::palisade::compliance::v1::{AuditEvent, RequestOrigin};
use palisade_tenancy::TenantId;
use prost::Message;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use crate::chain::{GENESIS_HASH, canonical_bytes, chain_hash, without_empty_attributes};

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
    /// are already stored (or earlier in the batch). Concurrent appends to one tenant serialise
    /// on its chain head row. The batch comes from a component's outbox relay and spans tenants
    /// by nature. A tenant's events cost a fixed handful of statements however many there are
    /// (its head made and read, their ids looked up, the rows inserted, the head moved): a
    /// relay's batch under a login flood carries an event per attempt.
    pub async fn append(&self, events: &[AuditEvent]) -> Result<AppendOutcome, ApiError> {
        // Tenants in one global order, each keeping its events' order, so two batches touching
        // the same tenants lock their chain heads in the same order and can never deadlock on
        // PostgreSQL.
        let mut by_tenant: BTreeMap<&str, Vec<&AuditEvent>> = BTreeMap::new();
        for event in events {
            by_tenant.entry(&event.tenant_id).or_default().push(event);
        }
        let mut tx = self
            .db
            .begin_in(Scope::AllTenants)
            .await
            .map_err(internal)?;
        let recorded_at = palisade_grpc::time::now_micros();
        let mut outcome = AppendOutcome::default();
        // Event ids are unique across tenants: one appended here is a duplicate anywhere after.
        let mut appended_ids = HashSet::new();
        for (tenant, events) in by_tenant {
            let (mut sequence, mut hash) = self.lock_chain_head(&mut tx, tenant).await?;
            let stored = stored_event_ids(&mut tx, &events).await?;
            let mut links = Vec::with_capacity(events.len());
            for event in events {
                if stored.contains(&event.event_id) || !appended_ids.insert(&event.event_id) {
                    outcome.duplicates += 1;
                    continue;
                }
                let canonical = canonical_bytes(&without_empty_attributes(event));
                let next_hash = chain_hash(&hash, &canonical);
                let previous_hash = std::mem::replace(&mut hash, next_hash.clone());
                sequence += 1;
                links.push(ChainLink {
                    event,
                    sequence,
                    canonical,
                    previous_hash,
                    hash: next_hash,
                });
            }
            if links.is_empty() {
                continue;
            }
            for chunk in links.chunks(EVENTS_PER_STATEMENT) {
                insert_links(&mut tx, chunk, recorded_at).await?;
            }
            sqlx::query(
                "UPDATE audit_chain_heads SET sequence = $1, hash = $2 WHERE tenant_id = $3",
            )
            .bind(sequence)
            .bind(hash)
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
            outcome.appended += links.len();
        }
        tx.commit().await.map_err(internal)?;
        Ok(outcome)
    }

    /// The tenant's chain head (last sequence and hash), made at the genesis if the tenant has
    /// none yet, and locked for the rest of the transaction.
    async fn lock_chain_head(
        &self,
        conn: &mut AnyConnection,
        tenant: &str,
    ) -> Result<(i64, Vec<u8>), ApiError> {
        // Write first: on SQLite this takes the write lock at once, so a concurrent writer
        // waits (busy timeout) instead of failing to upgrade a read transaction.
        sqlx::query("INSERT INTO audit_chain_heads (tenant_id, sequence, hash) VALUES ($1, 0, $2) ON CONFLICT (tenant_id) DO NOTHING")
            .bind(tenant)
            .bind(GENESIS_HASH.to_vec())
            .execute(&mut *conn)
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
            .bind(tenant)
            .fetch_one(&mut *conn)
            .await
            .map_err(internal)?;
        Ok((
            head.try_get("sequence").map_err(internal)?,
            head.try_get("hash").map_err(internal)?,
        ))
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

/// Events per statement (a multi-row `INSERT` binds ten values each, the duplicate lookup one):
/// far below either backend's limit on bound parameters.
const EVENTS_PER_STATEMENT: usize = 100;

/// An event placed in its tenant's chain, ready to insert.
struct ChainLink<'a> {
    event: &'a AuditEvent,
    sequence: i64,
    canonical: Vec<u8>,
    previous_hash: Vec<u8>,
    hash: Vec<u8>,
}

/// Which of `events`' ids are stored already. Checked under the tenant's head lock: a
/// concurrent redelivery of the same events has either committed (and is seen here) or waits
/// for this transaction.
async fn stored_event_ids(
    conn: &mut AnyConnection,
    events: &[&AuditEvent],
) -> Result<HashSet<String>, ApiError> {
    let mut stored = HashSet::new();
    for chunk in events.chunks(EVENTS_PER_STATEMENT) {
        let sql = format!(
            "SELECT event_id FROM audit_events WHERE event_id IN ({})",
            placeholders(1, chunk.len())
        );
        // Numbered placeholders only; every value is bound. The statement's shape depends on
        // the count, so it is not kept in the connection's statement cache.
        let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for event in chunk {
            query = query.bind(&event.event_id);
        }
        for row in query.fetch_all(&mut *conn).await.map_err(internal)? {
            stored.insert(row.try_get("event_id").map_err(internal)?);
        }
    }
    Ok(stored)
}

/// Inserts `links` in one statement.
async fn insert_links(
    conn: &mut AnyConnection,
    links: &[ChainLink<'_>],
    recorded_at: i64,
) -> Result<(), ApiError> {
    const COLUMNS: usize = 10;
    let values: Vec<String> = (0..links.len())
        .map(|row| format!("({})", placeholders(row * COLUMNS + 1, COLUMNS)))
        .collect();
    let sql = format!(
        "INSERT INTO audit_events (tenant_id, sequence, event_id, action, occur_time, canonical, previous_hash, hash, recorded_at, origin) \
         VALUES {}",
        values.join(", ")
    );
    // As in `stored_event_ids`: placeholders only, and not cached.
    let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
    for link in links {
        let event = link.event;
        let occur_time = event
            .occur_time
            .as_ref()
            .map(palisade_grpc::time::micros)
            .unwrap_or_default();
        query = query
            .bind(&event.tenant_id)
            .bind(link.sequence)
            .bind(&event.event_id)
            .bind(&event.action)
            .bind(occur_time)
            .bind(&link.canonical)
            .bind(&link.previous_hash)
            .bind(&link.hash)
            .bind(recorded_at)
            .bind(event.origin.as_ref().map(Message::encode_to_vec));
    }
    query.execute(&mut *conn).await.map_err(internal)?;
    Ok(())
}

/// A failed query as an API error (`UNAVAILABLE` when the database was only busy).
fn internal(error: impl std::fmt::Display + 'static) -> ApiError {
    ApiError::from_store("audit store", error)
}
