//! Idle public connections are closed. A connection on which nothing has happened for the
//! idle timeout (`--idle-timeout`, 5 minutes by default) is shut down gracefully: HTTP/2 sends
//! GOAWAY, HTTP/1 closes after the response in progress; if that does not end it within a
//! grace period, it is cut. "Something happens" when a call starts or ends, or a frame of a
//! request or response body goes through. Without this, a client could hold the gateway's
//! connection slots for good: by opening connections and leaving them open (HTTP/2 keep-alive
//! pings are answered, so an idle HTTP/2 connection never times out by itself), or by making
//! a call and never reading its response. A streaming call that sends nothing either way for
//! the whole timeout is ended too. Clients reconnect when they next call, as gRPC channels do.
//!
//! A new connection must make its first call within 10 s ([`Activity::no_call_within`]), or
//! it is shut down the same way.
//!
//! [`Tracked`] wraps a connection's service and records each call's activity in the
//! connection's [`Activity`].

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::body::Body;

/// When something last happened on one connection, and whether a call has started on it.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    last: Mutex<Instant>,
    called: AtomicBool,
}

impl Activity {
    /// A connection that opened now.
    pub fn new() -> Arc<Activity> {
        let now = Instant::now();
        Arc::new(Activity {
            opened: now,
            last: Mutex::new(now),
            called: AtomicBool::new(false),
        })
    }

    /// Resolves if no call has started `timeout` after the connection opened; never once one
    /// has. Until a client's first call, neither hyper (sniffing the protocol, reading an
    /// HTTP/2 preface) nor the idle timeout would close its connection soon: a client sending
    /// a byte and nothing more would hold a connection slot for the idle timeout.
    pub async fn no_call_within(&self, timeout: Duration) {
        tokio::time::sleep_until(self.opened + timeout).await;
        if self.called.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once nothing has happened for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = *self.last.lock().expect("activity lock") + timeout;
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    fn touch(&self) {
        *self.last.lock().expect("activity lock") = Instant::now();
    }
}

/// A connection's service, its calls' activity recorded in an [`Activity`].
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Tracked<S> {
        Tracked { inner, activity }
    }
}

impl<S, B> tower::Service<Request<B>> for Tracked<S>
where
    S: tower::Service<Request<Touching<B>>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let activity = self.activity.clone();
        activity.touch();
        activity.called.store(true, Ordering::Relaxed);
        let request = request.map(|body| Touching::new(body, activity.clone()));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Body::new(Touching::new(body, activity))))
        })
    }
}

pin_project! {
    /// A body whose frames, and its end (sent, received or dropped), count as activity.
    pub struct Touching<B> {
        #[pin]
        body: B,
        activity: Arc<Activity>,
    }

    impl<B> PinnedDrop for Touching<B> {
        fn drop(this: Pin<&mut Self>) {
            this.activity.touch();
        }
    }
}

impl<B> Touching<B> {
    fn new(body: B, activity: Arc<Activity>) -> Touching<B> {
        Touching { body, activity }
    }
}

impl<B: HttpBody> HttpBody for Touching<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Ok(_)))) {
            this.activity.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures::FutureExt;
    use http_body_util::BodyExt;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    /// Whether `activity` counts as idle now (paused time: a sleep ends at once only when its
    /// deadline has come).
    async fn idle(activity: &Activity) -> bool {
        tokio::task::yield_now().await;
        activity.idle_for(TIMEOUT).now_or_never().is_some()
    }

    /// A service answering every call with a body of `frames` frames.
    fn service(
        frames: usize,
    ) -> impl tower::Service<
        Request<Touching<Body>>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone {
        tower::service_fn(move |_: Request<Touching<Body>>| async move {
            let chunks = (0..frames).map(|_| Ok::<_, tonic::Status>(Frame::data(Bytes::from("x"))));
            let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
            Ok::<_, Infallible>(Response::new(Body::new(body)))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_a_timeout_after_the_last_thing_happened() {
        let activity = Activity::new();
        assert!(!idle(&activity).await);
        tokio::time::advance(TIMEOUT - Duration::from_secs(1)).await;
        assert!(!idle(&activity).await);
        let mut tracked = Tracked::new(service(0), activity.clone());
        let response = tower::Service::call(&mut tracked, Request::new(Body::empty()))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!idle(&activity).await, "a call started half a timeout ago");
        drop(response);
        tokio::time::advance(TIMEOUT - Duration::from_secs(1)).await;
        assert!(
            !idle(&activity).await,
            "a call ended less than a timeout ago"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(idle(&activity).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_must_make_its_first_call_in_time() {
        let within = Duration::from_secs(10);
        let silent = Activity::new();
        let waited = tokio::time::Instant::now();
        silent.no_call_within(within).await;
        assert_eq!(waited.elapsed(), within);

        let calling = Activity::new();
        let mut tracked = Tracked::new(service(0), calling.clone());
        tokio::time::advance(Duration::from_secs(9)).await;
        drop(tower::Service::call(&mut tracked, Request::new(Body::empty())).await);
        let late = tokio::time::timeout(Duration::from_secs(60), calling.no_call_within(within));
        assert!(
            late.await.is_err(),
            "a connection that called is not refused"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn frames_sent_count_and_a_stalled_call_does_not_keep_its_connection() {
        let activity = Activity::new();
        let mut tracked = Tracked::new(service(3), activity.clone());
        let response = tower::Service::call(&mut tracked, Request::new(Body::empty()))
            .await
            .unwrap();
        let mut body = response.into_body();
        for _ in 0..2 {
            tokio::time::advance(TIMEOUT - Duration::from_secs(1)).await;
            body.frame().await.unwrap().unwrap();
            assert!(!idle(&activity).await, "a frame went through just now");
        }
        // The client stops reading: the call is still open, but nothing happens any more.
        tokio::time::advance(TIMEOUT).await;
        assert!(idle(&activity).await);
        drop(body);
    }
}
