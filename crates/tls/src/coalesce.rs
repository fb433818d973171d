//! Write coalescing for HTTP/2 connections: one write (and one TLS record) per batch of frames
//! instead of one per frame.
//!
//! hyper's HTTP/2 flushes whatever frames are queued each time its connection task runs, and a
//! call's frames are queued by different tasks: a request's HEADERS by the caller, its DATA by
//! the body task that runs once the stream has flow-control capacity; a response's DATA and its
//! trailers likewise a turn apart. Each frame then went out in a write of its own, and each woke
//! the peer once more: two writes per request on a mesh hop, two per response at the gateway's
//! edge (seen with `strace` under `cargo bench -p palisade --bench gateway_overhead`).
//!
//! [`CoalescedWrites`] holds what is written and, the first time it is asked to flush, lets
//! the runtime run every other task that is ready before it writes: the flush is retried after
//! them, with whatever frames they queued meanwhile. This is Netty's flush consolidation
//! bounded to one turn of the scheduler, not Nagle's timer: a lone frame waits for no timer.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Above this many bytes held, a write first writes them through instead of holding more.
const HIGH_WATER: usize = 64 * 1024;

/// An I/O stream whose writes are held until a flush, and whose flushes wait one scheduler turn.
#[derive(Debug)]
pub struct CoalescedWrites<T> {
    inner: T,
    /// Bytes written to us and not yet to `inner`, from `sent` on.
    held: Vec<u8>,
    sent: usize,
    /// Whether the current flush has already let the other ready tasks run once.
    deferred: bool,
}

impl<T> CoalescedWrites<T> {
    pub fn new(inner: T) -> CoalescedWrites<T> {
        CoalescedWrites {
            inner,
            held: Vec::new(),
            sent: 0,
            deferred: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> CoalescedWrites<T> {
    /// Writes everything held through to `inner`.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let written =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += written;
        }
        self.held.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_make_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.len() - self.sent >= HIGH_WATER {
            ready!(self.poll_write_held(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescedWrites<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_make_room(cx))?;
        this.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_make_room(cx))?;
        let mut taken = 0;
        for buf in bufs {
            this.held.extend_from_slice(buf);
            taken += buf.len();
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.sent < this.held.len() && !this.deferred {
            // Waking ourselves while running is a yield in tokio: this task goes to the back
            // of the run queue, behind the tasks about to queue more frames.
            this.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_write_held(cx))?;
        this.deferred = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use futures::task::ArcWake;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn the_first_flush_yields_once_and_the_next_writes_what_was_queued_meanwhile() {
        struct Count(AtomicUsize);
        impl ArcWake for Count {
            fn wake_by_ref(count: &Arc<Count>) {
                count.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = futures::task::waker(count.clone());
        let mut cx = Context::from_waker(&waker);
        // The peer reads with a waker of its own, so `count` counts only the writer's wakes.
        let mut reader = Context::from_waker(futures::task::noop_waker_ref());
        let (near, mut far) = tokio::io::duplex(1024);
        let mut near = Pin::new(Box::new(CoalescedWrites::new(near)));

        let mut bytes = [0u8; 32];
        assert!(matches!(
            near.as_mut().poll_write(&mut cx, b"HEADERS"),
            Poll::Ready(Ok(7))
        ));
        let mut buf = ReadBuf::new(&mut bytes);
        assert!(
            Pin::new(&mut far)
                .poll_read(&mut reader, &mut buf)
                .is_pending(),
            "held until a flush"
        );
        assert!(near.as_mut().poll_flush(&mut cx).is_pending());
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the yield wakes the flushing task"
        );
        // What another task queues before the flush is retried goes out with it.
        assert!(matches!(
            near.as_mut().poll_write(&mut cx, b"DATA"),
            Poll::Ready(Ok(4))
        ));
        assert!(matches!(
            near.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));

        let mut buf = ReadBuf::new(&mut bytes);
        assert!(matches!(
            Pin::new(&mut far).poll_read(&mut reader, &mut buf),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(buf.filled(), b"HEADERSDATA", "one write, not two");
        // Nothing held: a flush goes straight through, without yielding.
        assert!(matches!(
            near.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn many_bytes_are_written_through_before_more_are_held() {
        let (near, mut far) = tokio::io::duplex(4 * HIGH_WATER);
        let mut near = CoalescedWrites::new(near);
        let chunk = vec![7u8; HIGH_WATER];
        near.write_all(&chunk).await.unwrap();
        near.write_all(&chunk).await.unwrap();
        let mut buf = vec![0u8; HIGH_WATER];
        far.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, chunk);
        near.shutdown().await.unwrap();
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), HIGH_WATER);
    }
}
