//! A new connection must start talking promptly. Before hyper knows whether a connection is
//! HTTP/1 or HTTP/2 it waits for the first bytes with no timer of its own, so a client that
//! connects and sends nothing would hold one of the gateway's connection slots for ever;
//! enough of them and the gateway accepts no one. Until the first bytes arrive, reads fail
//! with `TimedOut` once the deadline passes, which closes the connection.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};

pub struct FirstBytesDeadline<I> {
    io: I,
    /// `None` once the client has sent something.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<I> FirstBytesDeadline<I> {
    pub fn new(io: I, within: Duration) -> FirstBytesDeadline<I> {
        FirstBytesDeadline {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytesDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        let Some(deadline) = self.deadline.as_mut() else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.deadline = None;
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Err(
                io::Error::new(io::ErrorKind::TimedOut, "the client sent nothing in time"),
            )),
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytesDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silence_times_out_and_talk_disarms_the_deadline() {
        let (client, server) = tokio::io::duplex(64);
        let mut silent = FirstBytesDeadline::new(server, Duration::from_secs(10));
        let error = silent.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(client);

        let (mut client, server) = tokio::io::duplex(64);
        let mut talking = FirstBytesDeadline::new(server, Duration::from_secs(10));
        client.write_all(b"PRI").await.unwrap();
        assert_eq!(talking.read(&mut [0; 8]).await.unwrap(), 3);
        // Later silences are the protocol's business (keep-alive, streams), not this one's.
        let reading = tokio::spawn(async move { talking.read(&mut [0; 8]).await });
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(reading.await.unwrap().unwrap(), 1);
    }
}
