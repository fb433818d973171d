//! The outbox and its relay: nothing committed is lost, nothing rolled back ships, order holds.

mod support;

use std::sync::Arc;
use std::time::Duration;

use palisade_db::outbox::{self, RelayConfig};
use palisade_db::{Backend, Db, DbConfig};
use support::{
    RecordingSink, RunningRelay, depth, enqueue_committed, eventually, on_each_backend,
    quiet_relay_config,
};
use uuid::Uuid;

#[tokio::test]
async fn committed_message_is_delivered_once_notified() {
    on_each_backend(|db| async move {
        let sink = Arc::new(RecordingSink::default());
        let running = RunningRelay::start(&db, quiet_relay_config("audit"), sink.clone());

        let ids = enqueue_committed(&db, "audit", "event-", 1).await;
        // The idle poll is an hour: only the notify can make this arrive in time.
        running.relay.notify();
        eventually("delivery", || async { sink.delivered().len() == 1 }).await;
        eventually("delete after ack", || async { depth(&db).await == 0 }).await;

        let message = &sink.delivered()[0];
        assert_eq!(message.id, ids[0]);
        assert_eq!(message.topic, "audit");
        assert_eq!(message.payload, b"event-0");
        assert_eq!(message.attempts, 0);
        assert_eq!(message.trace_context.as_deref(), Some(support::TRACEPARENT));
        assert!(message.created_at_micros > 1_700_000_000_000_000);
        running.stop().await;
    })
    .await;
}

#[tokio::test]
async fn rolled_back_message_is_never_delivered() {
    on_each_backend(|db| async move {
        let sink = Arc::new(RecordingSink::default());
        let running = RunningRelay::start(&db, quiet_relay_config("audit"), sink.clone());

        let mut tx = db.begin().await.unwrap();
        let doomed = Uuid::now_v7();
        outbox::enqueue(&mut tx, "audit", doomed, b"doomed", None)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        // A later committed message proves the relay has looked past where the doomed one was.
        let kept = enqueue_committed(&db, "audit", "kept-", 1).await;
        running.relay.notify();
        eventually("delivery", || async { !sink.delivered().is_empty() }).await;
        eventually("delete after ack", || async { depth(&db).await == 0 }).await;

        assert_eq!(sink.delivered_ids(), kept);
        running.stop().await;
    })
    .await;
}

#[tokio::test]
async fn failing_sink_is_retried_and_nothing_is_deleted_until_it_acknowledges() {
    on_each_backend(|db| async move {
        let sink = RecordingSink::failing();
        let running = RunningRelay::start(&db, quiet_relay_config("audit"), sink.clone());

        let ids = enqueue_committed(&db, "audit", "event-", 2).await;
        running.relay.notify();
        eventually("three refusals", || async { sink.calls() >= 3 }).await;
        assert_eq!(depth(&db).await, 2, "refused messages stay in the outbox");
        let attempts: i64 = sqlx::query_scalar("SELECT MIN(attempts) FROM outbox")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert!(attempts >= 2, "attempts bumped per refusal, got {attempts}");

        sink.set_failing(false);
        eventually("delivery after recovery", || async {
            sink.delivered().len() == 2
        })
        .await;
        eventually("delete after ack", || async { depth(&db).await == 0 }).await;
        assert_eq!(sink.delivered_ids(), ids);
        assert!(sink.delivered().iter().all(|message| message.attempts >= 3));
        running.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_message_the_sink_rejects_is_set_aside_and_the_rest_ship_in_order() {
    on_each_backend(|db| async move {
        let sink = Arc::new(RecordingSink::default());
        sink.reject_payload(b"event-2");
        sink.reject_payload(b"event-5");
        let running = RunningRelay::start(&db, quiet_relay_config("audit"), sink.clone());

        let ids = enqueue_committed(&db, "audit", "event-", 8).await;
        running.relay.notify();
        eventually("the rest delivered", || async {
            sink.delivered().len() == 6
        })
        .await;
        eventually("the outbox emptied", || async { depth(&db).await == 0 }).await;

        let mut expected = ids.clone();
        expected.retain(|id| *id != ids[2] && *id != ids[5]);
        assert_eq!(sink.delivered_ids(), expected, "in order, nothing twice");
        let dead = outbox::dead_letters(&db, Some("audit")).await.unwrap();
        let dead_ids: Vec<Uuid> = dead.iter().map(|letter| letter.message.id).collect();
        assert_eq!(dead_ids, [ids[2], ids[5]]);
        assert_eq!(dead[0].message.payload, b"event-2");
        assert_eq!(dead[0].reason, "a message is malformed");
        assert!(dead[0].message.attempts >= 1);
        assert_eq!(outbox::dead_letter_count(&db).await.unwrap(), 2);

        // Once the sink takes them, an operator puts them back and they ship, oldest first.
        sink.accept_all_payloads();
        assert_eq!(
            outbox::requeue_dead_letters(&db, Some("other"))
                .await
                .unwrap(),
            0
        );
        assert_eq!(outbox::dead_letters(&db, None).await.unwrap(), dead);
        assert_eq!(outbox::requeue_dead_letters(&db, None).await.unwrap(), 2);
        assert_eq!(outbox::dead_letter_count(&db).await.unwrap(), 0);
        running.relay.notify();
        eventually("the requeued delivered", || async {
            sink.delivered().len() == 8
        })
        .await;
        eventually("the outbox emptied again", || async {
            depth(&db).await == 0
        })
        .await;
        let requeued: Vec<_> = sink.delivered()[6..]
            .iter()
            .map(|m| (m.id, m.attempts))
            .collect();
        assert_eq!(requeued, [(ids[2], 0), (ids[5], 0)]);
        running.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_dead_letter_the_relay_is_still_moving_is_left_alone() {
    on_each_backend(|db| async move {
        enqueue_committed(&db, "audit", "event-", 1).await;
        // Halfway through the relay's move on SQLite: copied, not yet deleted from the outbox.
        sqlx::query(
            "INSERT INTO outbox_dead_letters \
             (id, topic, payload, created_at, attempts, trace_context, reason, dead_at) \
             SELECT id, topic, payload, created_at, attempts, trace_context, 'rejected', 0 \
             FROM outbox",
        )
        .execute(db.pool())
        .await
        .unwrap();
        assert_eq!(outbox::requeue_dead_letters(&db, None).await.unwrap(), 0);
        assert_eq!(outbox::dead_letter_count(&db).await.unwrap(), 1);
        assert_eq!(depth(&db).await, 1);
    })
    .await;
}

#[tokio::test]
async fn delivery_preserves_creation_order_across_batches_and_failures() {
    on_each_backend(|db| async move {
        let sink = Arc::new(RecordingSink::default());
        let config = RelayConfig {
            batch_size: 7,
            ..quiet_relay_config("audit")
        };
        let running = RunningRelay::start(&db, config, sink.clone());

        let mut expected = Vec::new();
        for round in 0..10 {
            // Alternate an outage with recovery while messages keep arriving.
            sink.set_failing(round % 3 == 1);
            expected.extend(enqueue_committed(&db, "audit", &format!("r{round}-"), 12).await);
            // Another topic interleaves in the table but must not disturb this one.
            enqueue_committed(&db, "other", "x", 1).await;
            running.relay.notify();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sink.set_failing(false);
        running.relay.notify();
        eventually("all delivered", || async {
            sink.delivered().len() >= expected.len()
        })
        .await;

        assert_eq!(
            sink.delivered_ids(),
            expected,
            "no drop, duplicate or reorder"
        );
        assert!(
            sink.delivered()
                .iter()
                .all(|message| message.topic == "audit")
        );
        eventually("only the other topic left", || async {
            depth(&db).await == 10
        })
        .await;
        running.stop().await;
    })
    .await;
}

#[tokio::test]
async fn messages_committed_while_the_relay_lingers_ship_in_one_delivery() {
    on_each_backend(|db| async move {
        let sink = Arc::new(RecordingSink::default());
        let config = RelayConfig {
            linger: Duration::from_millis(400),
            ..quiet_relay_config("audit")
        };
        let running = RunningRelay::start(&db, config, sink.clone());
        // Let the relay find the outbox empty and settle into its idle wait.
        tokio::time::sleep(Duration::from_millis(100)).await;

        // One commit after another, each notifying, as a flood of audited calls does.
        let mut ids = Vec::new();
        for n in 0..5 {
            ids.extend(enqueue_committed(&db, "audit", &format!("e{n}-"), 1).await);
            running.relay.notify();
        }
        eventually("delivery", || async { sink.delivered().len() == 5 }).await;

        assert_eq!(sink.delivered_ids(), ids);
        assert_eq!(sink.calls(), 1, "one delivery for the five messages");
        running.stop().await;
    })
    .await;
}

#[tokio::test]
async fn depth_counts_waiting_messages_of_all_topics() {
    on_each_backend(|db| async move {
        assert_eq!(depth(&db).await, 0);
        enqueue_committed(&db, "audit", "a", 3).await;
        enqueue_committed(&db, "metering", "m", 2).await;
        assert_eq!(depth(&db).await, 5);
    })
    .await;
}

#[tokio::test]
async fn shutdown_flushes_what_is_waiting() {
    on_each_backend(|db| async move {
        let sink = Arc::new(RecordingSink::default());
        let running = RunningRelay::start(&db, quiet_relay_config("audit"), sink.clone());
        // Let the relay find the outbox empty and settle into its hour-long idle wait.
        tokio::time::sleep(Duration::from_millis(100)).await;

        let ids = enqueue_committed(&db, "audit", "late-", 150).await;
        // No notify: only the final flush can ship these.
        running.stop().await;

        assert_eq!(sink.delivered_ids(), ids);
        assert_eq!(depth(&db).await, 0);
    })
    .await;
}

#[tokio::test]
async fn postgres_replicas_never_ship_the_same_message_twice() {
    let Some(url) = support::postgres_url() else {
        return;
    };
    let config = DbConfig::postgres(&url, Some(support::random_schema()));
    let db = Db::connect(&config).await.unwrap();
    assert_eq!(db.backend(), Backend::Postgres);
    db.migrate(&support::migrations()).await.unwrap();
    // Two pools stand in for two replicas of one service.
    let replica = Db::connect(&config).await.unwrap();

    let sink = Arc::new(RecordingSink::default());
    let relay_config = RelayConfig {
        batch_size: 5,
        idle_poll: Duration::from_millis(5),
        ..RelayConfig::new("audit")
    };
    let first = RunningRelay::start(&db, relay_config.clone(), sink.clone());
    let second = RunningRelay::start(&replica, relay_config, sink.clone());

    let mut expected = Vec::new();
    for round in 0..20 {
        expected.extend(enqueue_committed(&db, "audit", &format!("r{round}-"), 10).await);
        first.relay.notify();
        second.relay.notify();
    }
    eventually("all delivered", || async {
        sink.delivered().len() >= expected.len()
    })
    .await;
    first.stop().await;
    second.stop().await;

    assert_eq!(sink.delivered_ids(), expected, "no duplicate, no reorder");
    assert_eq!(depth(&db).await, 0);
    replica.close().await;
    db.drop_schema().await.unwrap();
    db.close().await;
}
