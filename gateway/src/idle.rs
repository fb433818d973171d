//! Idle public connections are closed. A connection with no call in flight for the idle
//! timeout (`--idle-timeout`, 5 minutes by default) is shut down gracefully: HTTP/2 sends
//! GOAWAY and closes, HTTP/1 closes between requests. Without it, a client that opens
//! connections and leaves them open would hold the gateway's connection slots for good (HTTP/2
//! keep-alive pings are answered, so an idle HTTP/2 connection never times out by itself).
//! Clients reconnect when they next call, as gRPC channels do.
//!
//! [`Tracked`] wraps a connection's service and counts its calls: one is in flight from the
//! moment it arrives until its response body has been sent or dropped.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;
use tonic::body::Body;

/// The calls of one connection: how many are in flight, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    last_end: Mutex<Instant>,
}

impl Activity {
    /// A connection that opened now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last_end: Mutex::new(Instant::now()),
        })
    }

    /// Resolves once no call has been in flight for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let now = Instant::now();
            let deadline = if self.in_flight.load(Ordering::Acquire) > 0 {
                // Looked at again a whole timeout later: a long call keeps its connection.
                now + timeout
            } else {
                *self.last_end.lock().expect("activity lock") + timeout
            };
            if deadline <= now {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

/// One call in flight; it ends when this is dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // The end time first, so a check that sees no call in flight sees when it ended.
        *self.0.last_end.lock().expect("activity lock") = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's service, its calls counted in an [`Activity`].
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
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let in_flight = self.activity.begin();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                Body::new(UntilSent {
                    body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A response body that holds its call in flight until it is sent or dropped.
struct UntilSent {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for UntilSent {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
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
    use futures::FutureExt;

    use super::*;

    /// Whether `activity` counts as idle for `timeout` now (paused time: sleeps end at once
    /// only when their deadline has come).
    async fn idle(activity: &Activity, timeout: Duration) -> bool {
        tokio::task::yield_now().await;
        activity.idle_for(timeout).now_or_never().is_some()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_a_timeout_after_its_last_call_ended() {
        let timeout = Duration::from_secs(60);
        let activity = Activity::new();
        assert!(!idle(&activity, timeout).await);
        let call = activity.begin();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(
            !idle(&activity, timeout).await,
            "a call in flight keeps it open"
        );
        drop(call);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!idle(&activity, timeout).await);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(idle(&activity, timeout).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_lasts_until_its_response_body_is_dropped() {
        let activity = Activity::new();
        let mut service = Tracked::new(
            tower::service_fn(|_: Request<()>| async {
                let body = http_body_util::Full::new(Bytes::from_static(b"answer"));
                Ok::<_, Infallible>(Response::new(Body::new(body)))
            }),
            activity.clone(),
        );
        let response = tower::Service::call(&mut service, Request::new(()))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(120)).await;
        assert!(!idle(&activity, Duration::from_secs(60)).await);
        drop(response);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(idle(&activity, Duration::from_secs(60)).await);
    }
}
