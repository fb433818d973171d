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
    /// Bytes written to us and not yet to `inner`: never more than `HIGH_WATER` and one write.
    held: Vec<u8>,
    /// Whether the current flush has already let the other ready tasks run once.
    deferred: bool,
}

impl<T> CoalescedWrites<T> {
    pub fn new(inner: T) -> CoalescedWrites<T> {
        CoalescedWrites {
            inner,
            held: Vec::new(),
            deferred: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> CoalescedWrites<T> {
    /// Writes everything held through to `inner`. What went out leaves `held` however the
    /// attempt ends: a peer that reads slowly takes part of it per turn, and more is appended
    /// behind the rest, so keeping the written part until all of it had gone would let a
    /// connection that never drains fully keep every byte it ever sent.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut sent = 0;
        let outcome = loop {
            if sent == self.held.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &self.held[sent..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(written)) => sent += written,
                Poll::Ready(Err(error)) => break Poll::Ready(Err(error)),
                Poll::Pending => break Poll::Pending,
            }
        };
        self.held.drain(..sent);
        // One large write (a big message's frames at once) must not keep its buffer for the
        // connection's life.
        if self.held.is_empty() && self.held.capacity() > 4 * HIGH_WATER {
            self.held = Vec::new();
        }
        outcome
    }

    fn poll_make_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.len() >= HIGH_WATER {
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
        if !this.held.is_empty() && !this.deferred {
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

    /// A peer that reads slowly: it takes at most `per_turn` bytes, then is not ready until
    /// it is asked again.
    struct Trickle {
        per_turn: usize,
        ready: bool,
        taken: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if !this.ready {
                this.ready = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.ready = false;
            let taken = buf.len().min(this.per_turn);
            this.taken += taken;
            Poll::Ready(Ok(taken))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Frames come faster than the peer takes them, so what is held never drains fully: what
    /// went out must still leave the buffer, which then holds at most `HIGH_WATER` and one
    /// write however much passes through.
    #[test]
    fn a_slow_reader_never_makes_the_buffer_keep_what_it_already_took() {
        let mut near = CoalescedWrites::new(Trickle {
            per_turn: 1000,
            ready: false,
            taken: 0,
        });
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let frame = [1u8; 1500];
        for _ in 0..2000 {
            // Refused (pending) while over the high-water mark; offered again next turn.
            let _ = Pin::new(&mut near).poll_write(&mut cx, &frame);
            let _ = Pin::new(&mut near).poll_flush(&mut cx);
            assert!(
                near.held.len() <= HIGH_WATER + frame.len(),
                "{} bytes held after {} went out",
                near.held.len(),
                near.inner.taken
            );
        }
        assert!(
            near.inner.taken > 1_000_000,
            "{} went out",
            near.inner.taken
        );
    }
}
