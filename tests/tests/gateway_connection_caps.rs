//! One client address holds at most `--max-connections-per-address` open connections to the
//! gateway's public port: one more is reset at once, before any byte, and a place frees when
//! one of the address's connections closes. Trusted proxies are not capped.

use std::{net::SocketAddr, time::Duration};

use palisade_testkit::{Component, Mesh};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const WAIT: Duration = Duration::from_secs(5);

/// Whether the gateway answers a request on `stream` (leaving the connection open).
async fn answers(stream: &mut TcpStream, gateway: SocketAddr) -> anyhow::Result<bool> {
    let request = format!("GET /.well-known/jwks.json HTTP/1.1\r\nHost: {gateway}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return Ok(false);
    }
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|end| end == b"\r\n\r\n") {
        match tokio::time::timeout(WAIT, stream.read(&mut buffer)).await? {
            Ok(0) | Err(_) => return Ok(false),
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    Ok(head.starts_with(b"HTTP/1.1 200"))
}

/// Whether the gateway resets a new connection without a byte (an abortive close, which
/// leaves the gateway no `TIME_WAIT`). The reset can arrive before the client's connect has
/// returned, which then fails with it.
async fn reset_at_once(gateway: SocketAddr) -> anyhow::Result<bool> {
    let is_reset = |error: &std::io::Error| error.kind() == std::io::ErrorKind::ConnectionReset;
    let mut stream = match TcpStream::connect(gateway).await {
        Ok(stream) => stream,
        Err(error) => return Ok(is_reset(&error)),
    };
    let mut buffer = [0u8; 16];
    Ok(matches!(
        tokio::time::timeout(WAIT, stream.read(&mut buffer)).await?,
        Err(error) if is_reset(&error)
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_over_its_cap_is_closed_until_one_of_its_connections_ends() -> anyhow::Result<()>
{
    let mesh = Mesh::builder()
        .with_max_connections_per_address(2)
        .start()
        .await?;
    let gateway = mesh.addr(Component::Gateway);
    let mut first = TcpStream::connect(gateway).await?;
    let mut second = TcpStream::connect(gateway).await?;
    assert!(answers(&mut first, gateway).await?);
    assert!(answers(&mut second, gateway).await?);

    assert!(reset_at_once(gateway).await?, "a third connection was kept");
    // The two it holds still work, and the refusal is counted.
    assert!(answers(&mut second, gateway).await?);
    let (_, metrics) = mesh.admin_get(Component::Gateway, "/metrics").await?;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("palisade_gateway_throttled_total")
                && line.ends_with(r#"reason="connections_per_address"} 1"#)),
        "{metrics}"
    );

    // Once one closes (and the gateway has seen it close), a new one is served.
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // Until then it is reset, possibly before its connect returns.
        if let Ok(mut next) = TcpStream::connect(gateway).await
            && answers(&mut next, gateway).await?
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no place freed after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mesh.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_is_not_capped() -> anyhow::Result<()> {
    let mesh = Mesh::builder()
        .with_max_connections_per_address(1)
        .with_trusted_proxies(&["127.0.0.1"])
        .start()
        .await?;
    let gateway = mesh.addr(Component::Gateway);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(gateway).await?;
        assert!(answers(&mut stream, gateway).await?);
        held.push(stream);
    }
    mesh.stop().await?;
    Ok(())
}
