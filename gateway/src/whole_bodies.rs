//! Request bodies the gateway reads whole before it knows who is calling: a REST call's JSON
//! (transcoded before the gRPC call exists) and a gRPC-Web text call's base64 (decoded and
//! checked first). Each is bounded in size and in time ([`BODY_READ_TIMEOUT`]), and all of
//! them together by one budget of memory that every connection worker shares ([`BodyBudget`]),
//! of which one client address may hold only a share. Without the budget, clients that open
//! many streams and send all of a large body but its last byte would each hold megabytes for
//! the whole timeout, and no credential is asked before; without the share, one client doing
//! so would leave every other client's REST calls refused. Native gRPC and gRPC-Web binary
//! bodies are streamed, never read whole.

use std::{
    collections::HashMap,
    net::IpAddr,
    pin::pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use palisade_grpc::ApiError;
use palisade_telemetry::LabeledCounter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::limits::ClientKey;

/// How much memory bodies being read whole may hold at once, across the gateway's workers:
/// eight bodies of the largest size, or thousands of ordinary JSON requests.
pub const BODY_BUDGET_BYTES: usize = 32 << 20;
/// How much of it one client address (IPv6: its /64) may hold: two bodies of the largest size.
pub const CLIENT_SHARE_BYTES: usize = 8 << 20;

/// How long a REST or gRPC-Web text body may take to arrive.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The budget is kept in units of this many bytes, so that it fits a semaphore's count.
const UNIT: usize = 1024;

/// A refused body is logged at most this often (each is counted).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The memory bodies read whole may hold, shared by every clone.
#[derive(Clone)]
pub struct BodyBudget(Arc<Shared>);

struct Shared {
    /// Units not held by any body.
    free: Arc<Semaphore>,
    /// Units one client may hold.
    client_share: usize,
    /// Units each client holds now (clients holding none are not kept).
    held_by: Mutex<HashMap<ClientKey, usize>>,
    refused: LabeledCounter,
    last_warning: Mutex<Option<Instant>>,
}

/// A body read whole, holding its share of the budget until dropped: a call keeps it until
/// its answer has begun.
pub struct WholeBody {
    pub bytes: Bytes,
    pub held: Held,
}

/// Memory taken from the budget, for one body, given back when dropped.
pub struct Held {
    budget: BodyBudget,
    client: Option<ClientKey>,
    units: usize,
    permit: Option<OwnedSemaphorePermit>,
}

impl BodyBudget {
    /// `bytes` in all, `client_share` of them for one client; refusals are counted in
    /// `refused` (reason `body_budget`).
    pub fn new(bytes: usize, client_share: usize, refused: LabeledCounter) -> BodyBudget {
        BodyBudget(Arc::new(Shared {
            free: Arc::new(Semaphore::new(bytes.div_ceil(UNIT))),
            client_share: client_share.div_ceil(UNIT),
            held_by: Mutex::default(),
            refused,
            last_warning: Mutex::default(),
        }))
    }

    /// Reads `body` from `client` (its address, when known), at most `limit` bytes, within
    /// [`BODY_READ_TIMEOUT`], taking the memory it is read into from the budget as it grows.
    /// Refused: RESOURCE_EXHAUSTED past `limit`, DEADLINE_EXCEEDED when it arrives too slowly,
    /// UNAVAILABLE when the budget or the client's share is spent (not waited for: the bodies
    /// holding it may be an attacker's, trickling), or the body's own error (gRPC-Web text
    /// that is not base64).
    pub async fn read<B>(
        &self,
        body: B,
        limit: usize,
        client: Option<IpAddr>,
    ) -> Result<WholeBody, Status>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut held = Held {
            budget: self.clone(),
            client: client.map(ClientKey::of),
            units: 0,
            permit: None,
        };
        let reading = async {
            let mut body = pin!(body);
            // An honest client says how long its body is: read into one allocation of that
            // size. Past it, the buffer doubles, and what it holds is what is counted.
            let announced = usize::try_from(body.size_hint().lower()).unwrap_or(limit);
            let mut bytes: Vec<u8> = Vec::new();
            self.grow(&mut bytes, announced.min(limit), &mut held)?;
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame.map_err(body_error)?.into_data() else {
                    continue; // Trailers: a REST or gRPC-Web request has none worth reading.
                };
                let size = bytes.len() + data.len();
                if size > limit {
                    return Err(too_large(limit));
                }
                if size > bytes.capacity() {
                    let doubled = (bytes.capacity() * 2).clamp(size, limit);
                    self.grow(&mut bytes, doubled, &mut held)?;
                }
                bytes.extend_from_slice(&data);
            }
            Ok(Bytes::from(bytes))
        };
        // A body trickled in byte by byte would otherwise hold the connection and its slot.
        match tokio::time::timeout(BODY_READ_TIMEOUT, reading).await {
            Ok(Ok(bytes)) => Ok(WholeBody { bytes, held }),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the request body did not arrive within {BODY_READ_TIMEOUT:?}"
            ))),
        }
    }

    /// Makes `bytes` hold `capacity` bytes, once the budget has them for `held`.
    fn grow(&self, bytes: &mut Vec<u8>, capacity: usize, held: &mut Held) -> Result<(), Status> {
        let needed = capacity.div_ceil(UNIT).saturating_sub(held.units);
        if needed > 0 {
            self.take(needed, held)?;
        }
        bytes.reserve_exact(capacity.saturating_sub(bytes.len()));
        Ok(())
    }

    /// Takes `units` more for `held`: from its client's share, then from what is free.
    fn take(&self, units: usize, held: &mut Held) -> Result<(), Status> {
        let shared = &*self.0;
        if let Some(client) = held.client {
            let mut held_by = lock(&shared.held_by);
            let holding = held_by.entry(client).or_default();
            if *holding + units > shared.client_share {
                if *holding == 0 {
                    held_by.remove(&client);
                }
                drop(held_by);
                return Err(self.refuse("its address holds its share"));
            }
            *holding += units;
        }
        // Counted for the client above, so that dropping `held` gives back both alike.
        held.units += units;
        let permit = u32::try_from(units)
            .ok()
            .and_then(|units| shared.free.clone().try_acquire_many_owned(units).ok());
        let Some(permit) = permit else {
            return Err(self.refuse("the gateway's budget is spent"));
        };
        match &mut held.permit {
            Some(held) => held.merge(permit),
            None => held.permit = Some(permit),
        }
        Ok(())
    }

    fn refuse(&self, why: &str) -> Status {
        let shared = &*self.0;
        shared.refused.inc("body_budget");
        let now = Instant::now();
        let mut last = lock(&shared.last_warning);
        if last.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            *last = Some(now);
            tracing::warn!(
                why,
                "request body refused: bodies read whole hold the memory they may"
            );
        }
        ApiError::Unavailable {
            message: "the gateway is reading too many request bodies at once; retry shortly"
                .to_owned(),
        }
        .into()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // The permit goes back by itself; the client's count is given back here.
        let Some(client) = self.client else {
            return;
        };
        let mut held_by = lock(&self.budget.0.held_by);
        if let Some(holding) = held_by.get_mut(&client) {
            // Only what was counted for the client: a take refused by the budget counted it
            // too (see `take`).
            *holding = holding.saturating_sub(self.units);
            if *holding == 0 {
                held_by.remove(&client);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn too_large(limit: usize) -> Status {
    let limit = match limit % (1 << 20) {
        0 => format!("{} MiB", limit >> 20),
        _ => format!("{limit} bytes"),
    };
    ApiError::ResourceExhausted {
        reason: "BODY_TOO_LARGE",
        message: format!("the request body is larger than {limit}"),
        subject: "request".to_owned(),
        description: format!("a request body holds at most {limit}"),
        retry_after: None,
    }
    .into()
}

fn body_error(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Status {
    match error.into().downcast::<Status>() {
        // The body's own refusal, e.g. gRPC-Web text that is not base64.
        Ok(status) => *status,
        Err(error) => Status::cancelled(format!("reading the request failed: {error}")),
    }
}

/// The address of the client a request came from, as the edge found it.
pub fn client_of(extensions: &http::Extensions) -> Option<IpAddr> {
    let origin = extensions.get::<palisade_tenancy::ClientOrigin>()?;
    origin.ip.as_deref()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use tonic::Code;

    use super::*;

    type Chunk = Result<Frame<Bytes>, std::convert::Infallible>;

    fn budget(bytes: usize, client_share: usize) -> BodyBudget {
        let metrics = palisade_telemetry::ComponentMetrics::new("gateway");
        let refused = metrics.labeled_counter("refused", "refused bodies", "reason");
        BodyBudget::new(bytes, client_share, refused)
    }

    fn data(size: usize) -> Chunk {
        Ok(Frame::data(Bytes::from(vec![b'x'; size])))
    }

    /// A body that sends `size` bytes and then keeps the request open.
    fn stalled(
        size: usize,
    ) -> impl http_body::Body<Data = Bytes, Error = std::convert::Infallible> {
        StreamBody::new(futures::stream::iter([data(size)]).chain(futures::stream::pending()))
    }

    fn whole(
        sizes: &[usize],
    ) -> impl http_body::Body<Data = Bytes, Error = std::convert::Infallible> {
        let chunks: Vec<Chunk> = sizes.iter().map(|size| data(*size)).collect();
        StreamBody::new(futures::stream::iter(chunks))
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    /// Starts reading a body of `size` bytes that never ends, from `client`, and returns once
    /// it holds its part of the budget (the task, to abort).
    async fn trickle(
        budget: &BodyBudget,
        size: usize,
        client: Option<IpAddr>,
    ) -> tokio::task::JoinHandle<()> {
        let free_before = budget.0.free.available_permits();
        let holder = budget.clone();
        let task = tokio::spawn(async move {
            let _ = holder.read(stalled(size), 1 << 20, client).await;
        });
        for _ in 0..1000 {
            if budget.0.free.available_permits() < free_before {
                return task;
            }
            tokio::task::yield_now().await;
        }
        panic!("the trickling body never took its share");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_finishes_is_given_up() {
        let budget = budget(BODY_BUDGET_BYTES, CLIENT_SHARE_BYTES);
        let status = budget.read(stalled(1), 1 << 20, None).await.err().unwrap();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(budget.0.free.available_permits(), BODY_BUDGET_BYTES / UNIT);
    }

    #[tokio::test]
    async fn a_body_past_its_limit_is_refused() {
        let budget = budget(BODY_BUDGET_BYTES, CLIENT_SHARE_BYTES);
        let read = budget.read(whole(&[600, 600]), 1000, None).await;
        let status = read.err().unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "the request body is larger than 1000 bytes"
        );
        let read = budget
            .read(whole(&[500, 500]), 1000, None)
            .await
            .ok()
            .unwrap();
        assert_eq!(read.bytes.len(), 1000);
    }

    #[tokio::test]
    async fn bodies_held_at_once_share_one_budget() {
        let budget = budget(4 * UNIT, 4 * UNIT);
        // A client holding 3 KiB of a body it does not finish.
        let trickling = trickle(&budget, 3 * UNIT, None).await;
        // Another body of 2 KiB does not fit beside it, and is refused at once.
        let refused = budget.read(whole(&[2 * UNIT]), 1 << 20, None).await;
        assert_eq!(refused.err().unwrap().code(), Code::Unavailable);
        // One of 1 KiB does, and what it holds comes back when it is dropped.
        let small = budget
            .read(whole(&[UNIT]), 1 << 20, None)
            .await
            .ok()
            .unwrap();
        assert!(budget.read(whole(&[1]), 1 << 20, None).await.is_err());
        drop(small);
        assert!(budget.read(whole(&[1]), 1 << 20, None).await.is_ok());
        // The trickling body gone, the budget is whole again.
        trickling.abort();
        let _ = trickling.await;
        assert_eq!(budget.0.free.available_permits(), 4);
    }

    #[tokio::test]
    async fn one_client_holds_its_share_and_no_more() {
        let budget = budget(8 * UNIT, 4 * UNIT);
        let eve = ip("203.0.113.7");
        let trickling = trickle(&budget, 3 * UNIT, eve).await;
        let refused = budget.read(whole(&[2 * UNIT]), 1 << 20, eve).await;
        assert_eq!(refused.err().unwrap().code(), Code::Unavailable);
        // Her /64 is one client; another client is served beside her.
        let neighbour = ip("2001:db8::1");
        let trickling_v6 = trickle(&budget, 3 * UNIT, neighbour).await;
        let same_network = budget
            .read(whole(&[2 * UNIT]), 1 << 20, ip("2001:db8::2"))
            .await;
        assert_eq!(same_network.err().unwrap().code(), Code::Unavailable);
        let ada = budget
            .read(whole(&[2 * UNIT]), 1 << 20, ip("198.51.100.1"))
            .await;
        assert_eq!(ada.ok().unwrap().bytes.len(), 2 * UNIT);
        // Given back in full: shares and budget.
        for task in [trickling, trickling_v6] {
            task.abort();
            let _ = task.await;
        }
        assert!(lock(&budget.0.held_by).is_empty());
        assert_eq!(budget.0.free.available_permits(), 8);
    }

    #[tokio::test]
    async fn what_is_counted_is_what_the_buffer_holds() {
        // Announced: one allocation of that size, counted once.
        let budget = budget(4 * UNIT, 4 * UNIT);
        let announced = http_body_util::Full::new(Bytes::from(vec![b'x'; 3 * UNIT]));
        let read = budget.read(announced, 1 << 20, None).await.ok().unwrap();
        assert_eq!((read.held.units, read.bytes.len()), (3, 3 * UNIT));
        drop(read);
        // Unannounced, in pieces: the buffer doubles, and its capacity is what is held.
        let read = budget
            .read(whole(&[UNIT, 10, 10]), 1 << 20, None)
            .await
            .ok()
            .unwrap();
        assert_eq!(read.held.units, 2);
    }
}
