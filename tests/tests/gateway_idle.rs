//! Idle public connections are closed: an HTTP/2 connection on which nothing happens for the
//! idle timeout gets GOAWAY and closes, its keep-alive pings notwithstanding; an HTTP/1
//! keep-alive connection closes too; a call whose request keeps arriving, however slowly,
//! outlasts the timeout.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_testkit::{Component, Mesh};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const IDLE: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_kept() -> anyhow::Result<()> {
    let mesh = Mesh::builder().with_idle_timeout(IDLE).start().await?;
    let gateway = mesh.addr(Component::Gateway);

    // HTTP/2: one call, then nothing; the gateway ends the connection.
    let stream = TcpStream::connect(gateway).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let request =
        http::Request::get(format!("http://{gateway}/openapi.json")).body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    assert_eq!(response.status(), 200);
    response.into_body().collect().await?;
    tokio::time::timeout(IDLE * 10, connection)
        .await
        .map_err(|_| anyhow::anyhow!("an idle HTTP/2 connection was kept"))???;
    assert!(sender.is_closed());

    // HTTP/1: a request whose body trickles in for longer than the timeout is answered, and
    // the connection then closes once idle.
    let mut stream = TcpStream::connect(gateway).await?;
    let body = br#"{"tenant_id": "nobody", "email": "ada@example.com", "password": "x"}"#;
    let head = format!(
        "POST /v1/auth:login HTTP/1.1\r\nHost: {gateway}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    // A byte every fifth of the timeout, for three timeouts: slow, but never idle.
    let (trickled, rest) = body.split_at(15);
    for byte in trickled {
        stream.write_all(std::slice::from_ref(byte)).await?;
        tokio::time::sleep(IDLE / 5).await;
    }
    stream.write_all(rest).await?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let closed = tokio::time::timeout(IDLE * 10, async {
        loop {
            match stream.read(&mut buffer).await? {
                0 => return anyhow::Ok(()),
                read => answer.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "the slow call was not answered: {answer}"
    );
    assert!(
        closed.is_ok(),
        "an idle HTTP/1 connection was kept: {answer}"
    );
    closed??;
    mesh.stop().await
}
