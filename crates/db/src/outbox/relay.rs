//! The relay: a background task that drains one topic of the outbox into a sink.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::{OutboxSink, Shipped, batch_limit, ship_batch};
use crate::{Db, Result};

/// First wait after a failure; doubles per consecutive failure up to `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// How long a stopping relay keeps shipping; whatever is left ships after the restart.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// What a relay ships and how patiently.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub topic: String,
    /// Messages per delivery (capped at 1000).
    pub batch_size: usize,
    /// Poll interval when the outbox looks empty; [`Relay::notify`] cuts it short.
    pub idle_poll: Duration,
    /// How long a notified relay waits before shipping, so that messages committed meanwhile
    /// travel in the same batch rather than one delivery (and one sink transaction) each.
    pub linger: Duration,
    pub max_backoff: Duration,
}

impl RelayConfig {
    /// Defaults: batches of 100, lingering 50ms after a notify, polling every 500ms, backing
    /// off up to 5s.
    pub fn new(topic: impl Into<String>) -> RelayConfig {
        RelayConfig {
            topic: topic.into(),
            batch_size: 100,
            linger: Duration::from_millis(50),
            idle_poll: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Ships messages of one topic in creation order (`created_at`, `id`) in batches, and deletes
/// them only after the sink acknowledges. A notify starts a delivery after the `linger`: under
/// a steady stream of commits (a login flood writes an audit event per attempt) a batch
/// carries what arrived in that time, where shipping at once would make a delivery of each.
/// On failure it bumps `attempts`, backs off exponentially (from 100ms up to `max_backoff`)
/// and retries from the same oldest message, so nothing is dropped or reordered. A batch the
/// sink rejects (see [`super::DeliveryError::rejected`]) is shipped again one message at a
/// time, and the message the sink rejects alone is moved to `outbox_dead_letters` with the
/// sink's reason ([`super::dead_letters`]), logged as an error: one malformed message does not
/// stall its topic for good. Each one set aside is followed by the failure backoff, which grows
/// while no message is delivered in between.
/// [`Relay::notify`] wakes it early; when `shutdown` resolves it finishes the batch in flight
/// and makes one final flush attempt bounded to 2s.
///
/// Run one relay per topic and database in a process. On PostgreSQL, replicas may each run one:
/// a per-topic advisory lock lets only one of them ship at a time.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    config: RelayConfig,
    notify: Notify,
}

impl Relay {
    pub fn new(db: Db, config: RelayConfig) -> Relay {
        Relay {
            inner: Arc::new(Inner {
                db,
                config,
                notify: Notify::new(),
            }),
        }
    }

    /// Ships without waiting for the next poll; call it after committing an enqueue. A call while
    /// the relay is busy is remembered, so a message committed mid-delivery is not left waiting.
    pub fn notify(&self) {
        self.inner.notify.notify_one();
    }

    pub fn spawn<S: OutboxSink>(
        &self,
        sink: S,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move { inner.run(sink, shutdown).await })
    }
}

impl Inner {
    async fn run<S: OutboxSink>(&self, sink: S, shutdown: impl Future<Output = ()>) {
        let topic = self.config.topic.as_str();
        let mut shutdown = pin!(shutdown);
        let mut failures: u32 = 0;
        // While a rejected batch is searched for the message to blame: how many of its
        // messages are still to ship one at a time.
        let mut one_by_one: usize = 0;
        // Messages set aside since one was last delivered. A sink that rejects every message
        // (a stricter receiver mid-upgrade) is slowed down by the backoff, not emptied into
        // dead letters at full speed.
        let mut dead_in_a_row: u32 = 0;
        debug!(topic, "outbox relay started");
        loop {
            let batch_size = if one_by_one > 0 {
                1
            } else {
                self.config.batch_size
            };
            let mut step = pin!(self.step(&sink, batch_size));
            let shipped = tokio::select! {
                biased;
                () = &mut shutdown => None,
                shipped = &mut step => Some(shipped),
            };
            let Some(shipped) = shipped else {
                // The batch in flight may be moments from its acknowledgement: finish it within
                // the final window rather than abandon it and ship it twice.
                self.stop(async {
                    let _ = step.await;
                    self.drain(&sink).await
                })
                .await;
                return;
            };
            let (wait, wake_on_notify) = match shipped {
                Ok(Shipped::Delivered(count)) if one_by_one > 0 => {
                    (failures, dead_in_a_row) = (0, 0);
                    one_by_one = one_by_one.saturating_sub(count);
                    continue;
                }
                Ok(Shipped::Delivered(count)) => {
                    (failures, dead_in_a_row) = (0, 0);
                    debug!(topic, count, "outbox batch delivered");
                    // A full batch may have left more behind: ship again at once. What was
                    // committed since a partial one was read has notified (a notify while
                    // shipping is kept), so the wait below ends at once for it.
                    if count >= batch_limit(self.config.batch_size) {
                        continue;
                    }
                    (self.config.idle_poll, true)
                }
                Ok(Shipped::Empty) => {
                    (failures, one_by_one) = (0, 0);
                    (self.config.idle_poll, true)
                }
                // Another replica ships the topic meanwhile, and searches it itself.
                Ok(Shipped::Busy) => {
                    one_by_one = 0;
                    (self.config.idle_poll, true)
                }
                Ok(Shipped::Rejected { count, error }) => {
                    warn!(topic, count, %error, "outbox batch rejected, shipping it one message at a time");
                    one_by_one = count;
                    continue;
                }
                Ok(Shipped::DeadLettered(reason)) => {
                    error!(topic, %reason, "outbox message rejected by its sink, moved to outbox_dead_letters");
                    dead_in_a_row = dead_in_a_row.saturating_add(1);
                    // The rest of the rejected batch may hold another one: still one by one.
                    one_by_one = one_by_one.saturating_sub(1);
                    (self.backoff(dead_in_a_row), false)
                }
                Ok(Shipped::Refused(error)) => {
                    failures = failures.saturating_add(1);
                    warn!(topic, failures, %error, "outbox delivery refused, retrying");
                    // A notify must not shortcut the backoff and hammer a failing sink.
                    (self.backoff(failures), false)
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    warn!(topic, failures, %error, "outbox relay database error, retrying");
                    (self.backoff(failures), false)
                }
            };
            let next_step = async {
                tokio::select! {
                    () = self.notify.notified(), if wake_on_notify => {
                        tokio::time::sleep(self.config.linger).await;
                    }
                    () = tokio::time::sleep(wait) => {}
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    self.stop(self.drain(&sink)).await;
                    return;
                }
                () = next_step => {}
            }
        }
    }

    async fn step<S: OutboxSink>(&self, sink: &S, batch_size: usize) -> Result<Shipped> {
        ship_batch(&self.db, &self.config.topic, batch_size, sink).await
    }

    /// Ships until the topic is empty or a step fails; `true` when nothing is left behind.
    async fn drain<S: OutboxSink>(&self, sink: &S) -> bool {
        let topic = self.config.topic.as_str();
        loop {
            match self.step(sink, self.config.batch_size).await {
                Ok(Shipped::Delivered(_)) => continue,
                Ok(Shipped::DeadLettered(reason)) => {
                    error!(topic, %reason, "outbox message rejected by its sink, moved to outbox_dead_letters");
                    continue;
                }
                // A busy topic is being shipped by another replica, which stays up.
                Ok(Shipped::Empty | Shipped::Busy) => return true,
                // Searched for the message to blame after the restart.
                Ok(Shipped::Refused(error) | Shipped::Rejected { error, .. }) => {
                    warn!(topic, %error, "outbox delivery refused during final flush");
                    return false;
                }
                Err(error) => {
                    warn!(topic, %error, "outbox database error during final flush");
                    return false;
                }
            }
        }
    }

    async fn stop(&self, flush: impl Future<Output = bool>) {
        let topic = self.config.topic.as_str();
        match tokio::time::timeout(FINAL_FLUSH, flush).await {
            Ok(true) => info!(topic, "outbox relay stopped, outbox flushed"),
            Ok(false) => info!(
                topic,
                "outbox relay stopped, messages left for the next start"
            ),
            Err(_) => warn!(
                topic,
                "outbox final flush timed out, messages left for the next start"
            ),
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        FIRST_BACKOFF
            .saturating_mul(1 << doublings)
            .min(self.config.max_backoff)
    }
}
