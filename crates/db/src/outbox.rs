//! The transactional outbox: messages that commit with the change that caused them.
//!
//! A mutating call [`enqueue`]s its audit event inside its own transaction, so the event exists
//! if and only if the change does. A [`Relay`] later ships the rows of one topic to an
//! [`OutboxSink`], in creation order (`created_at`, then the UUIDv7 id), and deletes them only
//! once the sink acknowledged the whole batch.
//!
//! Delivery is at least once: a crash (or a shutdown deadline) between the sink's acknowledgement
//! and the delete ships the batch again on restart. The receiver must therefore be idempotent on
//! the message id, which compliance's `AppendEvents` is.
//!
//! Order is creation order as seen at poll time. A transaction that enqueued early but commits
//! late can surface behind messages already shipped; the receiver must not infer causality from
//! arrival order alone.

use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{AnyConnection, AssertSqlSafe, Row};
use uuid::Uuid;

use crate::{Backend, Db, Error, Result};

mod relay;

pub use relay::{Relay, RelayConfig};

/// One message waiting to be shipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxMessage {
    pub id: Uuid,
    pub topic: String,
    pub payload: Vec<u8>,
    pub created_at_micros: i64,
    /// Failed deliveries so far.
    pub attempts: i32,
    /// The W3C `traceparent` of the operation that enqueued the message, so delivery can be
    /// linked back to it.
    pub trace_context: Option<String>,
}

/// Enqueues inside the caller's transaction, so the message commits or rolls back with the change.
///
/// Pass `&mut *tx` for a `sqlx::Transaction`. `id` should be a UUIDv7 (the receiver dedups on it
/// and it breaks ties between messages created in the same microsecond). Call
/// [`Relay::notify`] after the commit to ship without waiting for the next poll.
pub async fn enqueue(
    conn: &mut AnyConnection,
    topic: &str,
    id: Uuid,
    payload: &[u8],
    trace_context: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO outbox (id, topic, payload, created_at, attempts, trace_context) \
         VALUES ($1, $2, $3, $4, 0, $5)",
    )
    .bind(id.to_string())
    .bind(topic)
    .bind(payload)
    .bind(now_micros())
    .bind(trace_context)
    .execute(conn)
    .await?;
    Ok(())
}

/// Messages waiting across all topics, for metrics and tests.
pub async fn depth(db: &Db) -> Result<i64> {
    let depth = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(db.pool())
        .await?;
    Ok(depth)
}

/// When the oldest waiting message was enqueued (microseconds since the epoch), if any: how far
/// behind the relay is.
pub async fn oldest_created_at(db: &Db) -> Result<Option<i64>> {
    let oldest: Option<i64> = sqlx::query_scalar("SELECT MIN(created_at) FROM outbox")
        .fetch_one(db.pool())
        .await?;
    Ok(oldest)
}

/// Where a relay delivers. Returning `Ok` means every message of the batch is acknowledged and
/// may be deleted; `Err` means none is: after a [`DeliveryError::failed`] the same messages
/// come again after a backoff, after a [`DeliveryError::rejected`] one at a time.
///
/// Implementations should bound their own calls with a timeout: the relay waits as long as
/// `deliver` takes (on PostgreSQL while holding the batch's row locks).
pub trait OutboxSink: Send + Sync + 'static {
    fn deliver(
        &self,
        batch: Vec<OutboxMessage>,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send;
}

// Lets a caller keep a handle on the sink it hands to `Relay::spawn` (tests, metrics).
impl<S: OutboxSink> OutboxSink for Arc<S> {
    fn deliver(
        &self,
        batch: Vec<OutboxMessage>,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send {
        S::deliver(self, batch)
    }
}

/// Why a sink did not take a batch; the relay logs it.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct DeliveryError {
    pub reason: String,
    /// The sink will never take the batch as it is (it holds a message the sink finds
    /// malformed), as opposed to not taking it now (unreachable, overloaded, misconfigured).
    /// Retrying a rejected batch would stall its topic for good, so the relay ships it one
    /// message at a time and sets the message the sink rejects alone aside as a dead letter.
    pub rejected: bool,
}

impl DeliveryError {
    /// Not taken now; the relay retries after a backoff.
    pub fn failed(reason: impl Into<String>) -> DeliveryError {
        DeliveryError {
            reason: reason.into(),
            rejected: false,
        }
    }

    /// Never to be taken as it is (see [`DeliveryError::rejected`]).
    pub fn rejected(reason: impl Into<String>) -> DeliveryError {
        DeliveryError {
            reason: reason.into(),
            rejected: true,
        }
    }
}

/// A message its sink rejected on its own, set aside so the rest of its topic could ship: for
/// an operator to read, fix and enqueue again. Nothing is dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub message: OutboxMessage,
    /// What the sink said.
    pub reason: String,
    /// When it was set aside (microseconds since the epoch).
    pub dead_at_micros: i64,
}

/// The dead letters of `topic` (of every topic for `None`), oldest message first.
pub async fn dead_letters(db: &Db, topic: Option<&str>) -> Result<Vec<DeadLetter>> {
    let rows = sqlx::query(
        "SELECT id, topic, payload, created_at, attempts, trace_context, reason, dead_at \
         FROM outbox_dead_letters WHERE $1 IS NULL OR topic = $1 ORDER BY created_at, id",
    )
    .bind(topic)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| {
            Ok(DeadLetter {
                message: message_of(row)?,
                reason: row.try_get("reason")?,
                dead_at_micros: row.try_get("dead_at")?,
            })
        })
        .collect()
}

/// Puts the dead letters of `topic` (of every topic for `None`) back in the outbox with no
/// attempts counted, once what made the sink reject them is fixed, and returns how many. They
/// keep their creation time, so each goes before the messages of its topic still waiting; one
/// the sink still rejects becomes a dead letter again.
///
/// Only what went back is deleted, by id: a dead letter set aside while this runs (PostgreSQL
/// takes a new snapshot per statement), or one the relay is still moving (on SQLite it copies
/// and deletes in two statements, so for a moment the message is in both tables and the
/// insert skips it), stays a dead letter.
pub async fn requeue_dead_letters(db: &Db, topic: Option<&str>) -> Result<u64> {
    let mut tx = db.begin().await?;
    let requeued: Vec<String> = sqlx::query_scalar(
        "INSERT INTO outbox (id, topic, payload, created_at, attempts, trace_context) \
         SELECT id, topic, payload, created_at, 0, trace_context FROM outbox_dead_letters \
         WHERE $1 IS NULL OR topic = $1 ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    .bind(topic)
    .fetch_all(&mut *tx)
    .await?;
    for ids in requeued.chunks(MAX_BATCH) {
        where_id_in("DELETE FROM outbox_dead_letters", ids)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(requeued.len() as u64)
}

/// Dead letters across all topics, for metrics.
pub async fn dead_letter_count(db: &Db) -> Result<i64> {
    let count = sqlx::query_scalar("SELECT COUNT(*) FROM outbox_dead_letters")
        .fetch_one(db.pool())
        .await?;
    Ok(count)
}

/// Upper bound on a batch: its ids become bind parameters of one statement, and both engines
/// cap those (SQLite at 32766).
const MAX_BATCH: usize = 1000;

/// How many messages a step ships at most for a configured `batch_size`.
pub(crate) fn batch_limit(batch_size: usize) -> usize {
    batch_size.clamp(1, MAX_BATCH)
}

/// What one relay step did.
#[derive(Debug)]
pub(crate) enum Shipped {
    /// Nothing to ship for the topic.
    Empty,
    /// Another relay holds the topic (PostgreSQL replicas).
    Busy,
    Delivered(usize),
    /// Not taken now: `attempts` bumped, to be retried after a backoff.
    Refused(DeliveryError),
    /// A batch of `count` messages rejected: one of them is to blame, to be found by shipping
    /// them one at a time (`attempts` bumped).
    Rejected {
        count: usize,
        error: DeliveryError,
    },
    /// A message rejected on its own, moved to `outbox_dead_letters`.
    DeadLettered(DeliveryError),
}

/// Ships the oldest batch of `topic` to `sink` and settles it: deleted on success, `attempts`
/// bumped on failure, set aside as a dead letter when the sink rejects it and it is one
/// message.
pub(crate) async fn ship_batch<S: OutboxSink>(
    db: &Db,
    topic: &str,
    batch_size: usize,
    sink: &S,
) -> Result<Shipped> {
    match db.backend() {
        Backend::Postgres => {
            // The transaction stays open across delivery so no other replica can take these rows.
            let mut tx = db.begin().await?;
            // A per-topic lock rather than `SKIP LOCKED` alone: skipping would let a second
            // replica ship younger rows while the first holds older ones, reordering the topic.
            // The schema is part of the key because advisory locks span the whole database.
            let locked: bool = sqlx::query_scalar(
                "SELECT pg_try_advisory_xact_lock(hashtext(\
                 coalesce(current_schema(), '') || '/outbox/' || $1))",
            )
            .bind(topic)
            .fetch_one(&mut *tx)
            .await?;
            if !locked {
                tx.rollback().await?;
                return Ok(Shipped::Busy);
            }
            let batch = select_batch(&mut tx, topic, batch_size, " FOR UPDATE SKIP LOCKED").await?;
            if batch.is_empty() {
                tx.commit().await?;
                return Ok(Shipped::Empty);
            }
            let ids = ids_of(&batch);
            let shipped = deliver(sink, batch).await;
            settle(&mut tx, &ids, &shipped).await?;
            tx.commit().await?;
            Ok(shipped)
        }
        Backend::Sqlite => {
            // One process owns the file, so a plain read suffices, and no write lock is held
            // while the sink works.
            let batch = {
                let mut conn = db.pool().acquire().await?;
                select_batch(&mut conn, topic, batch_size, "").await?
            };
            if batch.is_empty() {
                return Ok(Shipped::Empty);
            }
            let ids = ids_of(&batch);
            let shipped = deliver(sink, batch).await;
            // One statement: in autocommit on the writer, without `BEGIN` and `COMMIT`.
            let mut conn = db.single_write().acquire().await?;
            settle(&mut conn, &ids, &shipped).await?;
            Ok(shipped)
        }
    }
}

async fn deliver<S: OutboxSink>(sink: &S, batch: Vec<OutboxMessage>) -> Shipped {
    let count = batch.len();
    match sink.deliver(batch).await {
        Ok(()) => Shipped::Delivered(count),
        Err(error) if error.rejected && count == 1 => Shipped::DeadLettered(error),
        Err(error) if error.rejected => Shipped::Rejected { count, error },
        Err(error) => Shipped::Refused(error),
    }
}

async fn select_batch(
    conn: &mut AnyConnection,
    topic: &str,
    batch_size: usize,
    lock_clause: &str,
) -> Result<Vec<OutboxMessage>> {
    let sql = format!(
        "SELECT id, topic, payload, created_at, attempts, trace_context FROM outbox \
         WHERE topic = $1 ORDER BY created_at, id LIMIT $2{lock_clause}"
    );
    let limit = i64::try_from(batch_limit(batch_size)).unwrap_or(1);
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(topic)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.iter().map(message_of).collect()
}

fn message_of(row: &sqlx::any::AnyRow) -> Result<OutboxMessage> {
    let id: String = row.try_get("id")?;
    let parsed = Uuid::parse_str(&id).map_err(|err| Error::CorruptRow {
        id: id.clone(),
        reason: err.to_string(),
    })?;
    Ok(OutboxMessage {
        id: parsed,
        topic: row.try_get("topic")?,
        payload: row.try_get("payload")?,
        created_at_micros: row.try_get("created_at")?,
        attempts: row.try_get("attempts")?,
        trace_context: row.try_get("trace_context")?,
    })
}

fn ids_of(batch: &[OutboxMessage]) -> Vec<String> {
    batch.iter().map(|message| message.id.to_string()).collect()
}

async fn settle(conn: &mut AnyConnection, ids: &[String], shipped: &Shipped) -> Result<()> {
    let action = match shipped {
        Shipped::Delivered(_) => "DELETE FROM outbox",
        Shipped::Refused(_) | Shipped::Rejected { .. } => {
            "UPDATE outbox SET attempts = attempts + 1"
        }
        Shipped::DeadLettered(error) => {
            // Copied, then deleted. Without a transaction (SQLite's writer settles in
            // autocommit) a crash between the two ships the message again, and the copy is
            // already there: `DO NOTHING`.
            sqlx::query(
                "INSERT INTO outbox_dead_letters \
                 (id, topic, payload, created_at, attempts, trace_context, reason, dead_at) \
                 SELECT id, topic, payload, created_at, attempts + 1, trace_context, $2, $3 \
                 FROM outbox WHERE id = $1 ON CONFLICT (id) DO NOTHING",
            )
            .bind(ids.first().map(String::as_str))
            .bind(error.reason.as_str())
            .bind(now_micros())
            .execute(&mut *conn)
            .await?;
            "DELETE FROM outbox"
        }
        Shipped::Empty | Shipped::Busy => return Ok(()),
    };
    where_id_in(action, ids).execute(conn).await?;
    Ok(())
}

/// `statement WHERE id IN (…)` with `ids` bound. Placeholders are generated, values bound: a
/// batch is small enough for one statement (at most [`MAX_BATCH`] ids).
fn where_id_in<'q>(
    statement: &str,
    ids: &'q [String],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let sql = format!(
        "{statement} WHERE id IN ({})",
        crate::placeholders(1, ids.len())
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for id in ids {
        query = query.bind(id.as_str());
    }
    query
}

fn now_micros() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}
