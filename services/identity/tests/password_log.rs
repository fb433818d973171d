//! What identity logs about a stored password hash it cannot check: whose it is, and in which
//! call. The hashing runs on threads of its own, so the call's span has to go with it. On its
//! own in this file because it installs the process's global subscriber, as `palisade serve`
//! does.

use std::sync::{Arc, Mutex};

use palisade_identity::Passwords;
use tracing::Instrument;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn an_unusable_stored_hash_is_logged_with_its_user_and_call() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let call = tracing::info_span!("grpc.server", request_id = "req-42");
    let matches = Passwords::new(1)
        .verify("user-7", "not a PHC string", "hunter2-secret")
        .instrument(call)
        .await
        .unwrap();
    assert!(!matches);

    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = logged
        .lines()
        .find(|line| line.contains("a stored password hash cannot be checked"))
        .unwrap_or_else(|| panic!("no such log line in {logged:?}"));
    assert!(
        line.contains("grpc.server{request_id=\"req-42\"}"),
        "{line}"
    );
    assert!(line.contains("user=\"user-7\""), "{line}");
    assert!(
        !logged.contains("hunter2"),
        "no password in the log: {logged}"
    );
}
