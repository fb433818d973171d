//! The public listener: HTTP/2 with prior knowledge (h2c, what gRPC clients speak) and
//! HTTP/1.1 (REST, gRPC-Web) on one port, or both over TLS when a certificate is configured.
//! The accept loop only accepts, or resets a connection from a client address over its cap
//! (`address_caps.rs`): each connection is served by a connection worker (see `workers.rs`),
//! where the TLS handshake runs too, so a slow client never holds up the loop. Connections
//! are capped, so slow or silent clients are timed out: the TLS handshake, the first call
//! (`idle.rs`), HTTP/1 request headers and REST bodies each have a deadline.
//! A connection on which nothing happens for the idle timeout is closed (`idle.rs`).
//! Shutdown lets in-flight calls finish for a grace period, then cuts the rest.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::Semaphore};

use crate::{address_caps::AddressCaps, workers::Workers};

const MAX_CONNECTIONS: usize = 10_000;

pub async fn serve(
    listener: TcpListener,
    workers: Workers,
    address_caps: AddressCaps,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Reset at once (the client sees the connection end before any byte): refused
        // before any worker spends a TLS handshake or an HTTP parser on it. A reset, not a
        // close, so a client retrying in a loop leaves the gateway no `TIME_WAIT` per refusal.
        let Ok(address_slot) = address_caps.admit(peer.ip()) else {
            let _ = stream.set_zero_linger();
            continue;
        };
        let _ = stream.set_nodelay(true);
        workers.dispatch(stream, peer, (permit, address_slot));
    }
    drop(listener);
    tracing::info!("draining gateway connections");
    workers.drain().await;
}
