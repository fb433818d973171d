//! Test harness: runs each test body on SQLite, and on PostgreSQL when
//! `PALISADE_TEST_POSTGRES_URL` is set (each run in a fresh schema, dropped afterwards).

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_db::outbox::{self, DeliveryError, OutboxMessage, OutboxSink, Relay, RelayConfig};
use palisade_db::{Db, DbConfig, Migrations};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub const POSTGRES_URL_ENV: &str = "PALISADE_TEST_POSTGRES_URL";

/// Every test message carries this trace context, so the column round-trips.
pub const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

pub fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("tests/migrations/sqlite"),
        postgres: sqlx::migrate!("tests/migrations/postgres"),
    }
}

pub fn postgres_url() -> Option<String> {
    std::env::var(POSTGRES_URL_ENV)
        .ok()
        .filter(|url| !url.is_empty())
}

pub fn random_schema() -> String {
    format!("palisade_test_{}", Uuid::new_v4().simple())
}

/// Runs `test` on a migrated database of every configured backend.
pub async fn on_each_backend<F, Fut>(test: F)
where
    F: Fn(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = Db::connect(&DbConfig::sqlite_in(dir.path(), "svc"))
        .await
        .expect("connect sqlite");
    sqlite.migrate(&migrations()).await.expect("migrate sqlite");
    test(sqlite.clone()).await;
    sqlite.close().await;

    if let Some(url) = postgres_url() {
        let postgres = Db::connect(&DbConfig::postgres(&url, Some(random_schema())))
            .await
            .expect("connect postgres");
        postgres
            .migrate(&migrations())
            .await
            .expect("migrate postgres");
        test(postgres.clone()).await;
        postgres.drop_schema().await.expect("drop schema");
        postgres.close().await;
    }
}

/// Commits one transaction enqueuing `count` messages whose payloads are `"<prefix><n>"`.
pub async fn enqueue_committed(db: &Db, topic: &str, prefix: &str, count: usize) -> Vec<Uuid> {
    let mut tx = db.begin().await.expect("begin");
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let id = Uuid::now_v7();
        let payload = format!("{prefix}{n}");
        outbox::enqueue(&mut tx, topic, id, payload.as_bytes(), Some(TRACEPARENT))
            .await
            .expect("enqueue");
        ids.push(id);
    }
    tx.commit().await.expect("commit");
    ids
}

/// Polls `check` until it holds, failing the test after 10s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn depth(db: &Db) -> i64 {
    outbox::depth(db).await.expect("depth")
}

/// A sink that records acknowledged batches and can be told to refuse them.
#[derive(Default)]
pub struct RecordingSink {
    delivered: Mutex<Vec<OutboxMessage>>,
    failing: AtomicBool,
    calls: AtomicUsize,
    /// Payloads the sink finds malformed: it rejects any batch that holds one, as a whole.
    malformed: Mutex<Vec<Vec<u8>>>,
}

impl RecordingSink {
    pub fn failing() -> Arc<RecordingSink> {
        let sink = RecordingSink::default();
        sink.failing.store(true, Ordering::SeqCst);
        Arc::new(sink)
    }

    /// Rejects every batch holding a message with this payload.
    pub fn reject_payload(&self, payload: &[u8]) {
        self.malformed.lock().unwrap().push(payload.to_vec());
    }

    /// The sink was fixed: it takes every payload again.
    pub fn accept_all_payloads(&self) {
        self.malformed.lock().unwrap().clear();
    }

    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn delivered(&self) -> Vec<OutboxMessage> {
        self.delivered.lock().unwrap().clone()
    }

    pub fn delivered_ids(&self) -> Vec<Uuid> {
        self.delivered().iter().map(|message| message.id).collect()
    }
}

impl OutboxSink for RecordingSink {
    fn deliver(
        &self,
        batch: Vec<OutboxMessage>,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send {
        // The flag is read before the call is counted, so `calls() >= n` proves n refusals
        // while failing.
        let failing = self.failing.load(Ordering::SeqCst);
        let malformed = self.malformed.lock().unwrap();
        let rejected = (batch.iter()).any(|message| malformed.contains(&message.payload));
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !failing && !rejected {
            self.delivered.lock().unwrap().extend(batch);
        }
        async move {
            if failing {
                Err(DeliveryError::failed("sink is down"))
            } else if rejected {
                Err(DeliveryError::rejected("a message is malformed"))
            } else {
                Ok(())
            }
        }
    }
}

/// A relay that only ships when notified or stopped (its idle poll is an hour), with fast retries.
pub fn quiet_relay_config(topic: &str) -> RelayConfig {
    RelayConfig {
        idle_poll: Duration::from_secs(3600),
        max_backoff: Duration::from_millis(50),
        ..RelayConfig::new(topic)
    }
}

pub struct RunningRelay {
    pub relay: Relay,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<()>,
}

impl RunningRelay {
    pub fn start<S: OutboxSink>(db: &Db, config: RelayConfig, sink: S) -> RunningRelay {
        let relay = Relay::new(db.clone(), config);
        let (stop, stopped) = oneshot::channel();
        let handle = relay.spawn(sink, async move {
            let _ = stopped.await;
        });
        RunningRelay {
            relay,
            stop,
            handle,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.handle)
            .await
            .expect("relay stops within its final flush window")
            .expect("relay task does not panic");
    }
}
