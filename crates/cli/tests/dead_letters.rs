//! `palisade dead-letters` on a component's SQLite database: lists what its sink set aside,
//! and puts it back in the outbox.

use std::process::Output;

use palisade_db::{Db, DbConfig, outbox};

const DEAD_ID: &str = "0190b5a0-0000-7000-8000-00000000dead";

fn palisade(args: &[&str], data_dir: &std::path::Path) -> Output {
    palisade_testkit::palisade_command(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("palisade runs")
}

/// What `palisade` said on stderr, having failed as it should.
fn refusal(args: &[&str], data_dir: &std::path::Path) -> String {
    let output = palisade(args, data_dir);
    assert!(!output.status.success(), "palisade {args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "palisade failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn dead_letters_are_listed_and_put_back_in_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    stdout(&palisade(&["migrate", "identity"], dir.path()));
    let db = Db::connect(&DbConfig::sqlite_in(dir.path(), "identity"))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO outbox_dead_letters \
         (id, topic, payload, created_at, attempts, trace_context, reason, dead_at) \
         VALUES ($1, 'audit', $2, 1700000000000000, 3, NULL, 'event id is malformed', 1700000001000000)",
    )
    .bind(DEAD_ID)
    .bind(b"not an audit event".to_vec())
    .execute(db.pool())
    .await
    .unwrap();

    let listed = stdout(&palisade(&["dead-letters", "identity"], dir.path()));
    assert!(
        listed.contains(&format!(
            "audit {DEAD_ID} created 2023-11-14T22:13:20.000000Z attempts 3 set aside \
             2023-11-14T22:13:21.000000Z: event id is malformed"
        )),
        "{listed}"
    );
    assert!(
        listed.contains("1 dead letter(s) in identity's outbox"),
        "{listed}"
    );
    let other_topic = stdout(&palisade(
        &["dead-letters", "identity", "--topic", "other"],
        dir.path(),
    ));
    assert!(other_topic.contains("0 dead letter(s)"), "{other_topic}");

    let other_topic = stdout(&palisade(
        &["dead-letters", "identity", "--requeue", "--topic", "other"],
        dir.path(),
    ));
    assert!(
        other_topic.starts_with("0 dead letter(s) back"),
        "{other_topic}"
    );
    assert_eq!(outbox::dead_letter_count(&db).await.unwrap(), 1);

    let requeued = stdout(&palisade(
        &["dead-letters", "identity", "--requeue"],
        dir.path(),
    ));
    assert!(requeued.starts_with("1 dead letter(s) back"), "{requeued}");
    assert_eq!(outbox::dead_letter_count(&db).await.unwrap(), 0);
    assert_eq!(outbox::depth(&db).await.unwrap(), 1);
    let back: (String, Vec<u8>, i64, i32, Option<String>) = sqlx::query_as(
        "SELECT topic, payload, created_at, attempts, trace_context FROM outbox WHERE id = $1",
    )
    .bind(DEAD_ID)
    .fetch_one(db.pool())
    .await
    .unwrap();
    let expected = (
        "audit".to_owned(),
        b"not an audit event".to_vec(),
        1_700_000_000_000_000,
        0,
        None,
    );
    assert_eq!(back, expected);
    db.close().await;
}

#[test]
fn a_missing_database_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refusal(&["dead-letters", "identity"], dir.path());
    assert!(stderr.contains("opening identity's database"), "{stderr}");
    assert!(stderr.contains("no such database"), "{stderr}");
    assert!(!dir.path().join("identity.db").exists());
}

#[test]
fn a_component_without_an_outbox_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refusal(&["dead-letters", "gateway"], dir.path());
    assert!(stderr.contains("gateway keeps no outbox"), "{stderr}");
}
