//! Request bodies the gateway reads whole before it knows who is calling: a REST call's JSON
//! (transcoded before the gRPC call exists) and a gRPC-Web text call's base64 (decoded and
//! checked first). Each is bounded in size and in time ([`BODY_READ_TIMEOUT`]), and all of
//! them together by one budget of bytes that every connection worker shares ([`BodyBudget`]).
//! Without that budget, clients that open many streams and send all of a large body but its
//! last byte would each hold megabytes for the whole timeout, and no credential is asked
//! before. Native gRPC and gRPC-Web binary bodies are streamed, never read whole.

use std::{pin::pin, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use palisade_grpc::ApiError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// How many bytes of bodies being read whole the gateway holds at once, across its workers:
/// sixteen bodies of the largest size, or tens of thousands of ordinary JSON requests.
pub const BODY_BUDGET_BYTES: usize = 64 << 20;

/// How long a REST or gRPC-Web text body may take to arrive.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The budget is kept in units of this many bytes, so that it fits a semaphore's count.
const UNIT: usize = 1024;

/// The bytes the gateway may hold in bodies read whole, shared by every clone.
#[derive(Clone)]
pub struct BodyBudget(Arc<Semaphore>);

/// A body read whole, holding its share of the budget until dropped: a call keeps it until
/// its answer has begun.
pub struct WholeBody {
    pub bytes: Bytes,
    _held: Option<OwnedSemaphorePermit>,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> BodyBudget {
        BodyBudget(Arc::new(Semaphore::new(bytes.div_ceil(UNIT))))
    }

    /// Reads `body`, at most `limit` bytes, within [`BODY_READ_TIMEOUT`], taking its bytes
    /// from the budget as they arrive. Refused: RESOURCE_EXHAUSTED past `limit`,
    /// DEADLINE_EXCEEDED when it arrives too slowly, UNAVAILABLE when the budget is spent (not
    /// waited for: the bodies holding it may be an attacker's, trickling), or the body's own
    /// error (gRPC-Web text that is not base64).
    pub async fn read<B>(&self, body: B, limit: usize) -> Result<WholeBody, Status>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let reading = async {
            let mut body = pin!(body);
            let mut bytes = BytesMut::new();
            let mut held: Option<OwnedSemaphorePermit> = None;
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame.map_err(body_error)?.into_data() else {
                    continue; // Trailers: a REST or gRPC-Web request has none worth reading.
                };
                let size = bytes.len() + data.len();
                if size > limit {
                    return Err(too_large(limit));
                }
                let holding = held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
                let needed = size.div_ceil(UNIT).saturating_sub(holding);
                if needed > 0 {
                    let more = u32::try_from(needed)
                        .ok()
                        .and_then(|units| self.0.clone().try_acquire_many_owned(units).ok())
                        .ok_or_else(busy)?;
                    match &mut held {
                        Some(held) => held.merge(more),
                        None => held = Some(more),
                    }
                }
                bytes.extend_from_slice(&data);
            }
            Ok(WholeBody {
                bytes: bytes.freeze(),
                _held: held,
            })
        };
        // A body trickled in byte by byte would otherwise hold the connection and its slot.
        tokio::time::timeout(BODY_READ_TIMEOUT, reading)
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "the request body did not arrive within {BODY_READ_TIMEOUT:?}"
                )))
            })
    }
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

fn busy() -> Status {
    tracing::warn!("request body refused: the gateway holds its budget of bodies read whole");
    ApiError::Unavailable {
        message: "the gateway is reading too many request bodies at once; retry shortly".to_owned(),
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

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use tonic::Code;

    use super::*;

    type Chunk = Result<Frame<Bytes>, std::convert::Infallible>;

    fn data(size: usize) -> Chunk {
        Ok(Frame::data(Bytes::from(vec![b'x'; size])))
    }

    /// A body that sends `size` bytes and then keeps the request open.
    fn stalled(
        size: usize,
    ) -> impl http_body::Body<Data = Bytes, Error = std::convert::Infallible> {
        let first = futures::stream::iter([data(size)]);
        StreamBody::new(first.chain(futures::stream::pending()))
    }

    fn whole(
        sizes: &[usize],
    ) -> impl http_body::Body<Data = Bytes, Error = std::convert::Infallible> {
        StreamBody::new(futures::stream::iter(
            sizes.iter().map(|size| data(*size)).collect::<Vec<_>>(),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_finishes_is_given_up() {
        let budget = BodyBudget::new(BODY_BUDGET_BYTES);
        let status = budget.read(stalled(1), 1 << 20).await.err().unwrap();
        assert_eq!(status.code(), Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn a_body_past_its_limit_is_refused() {
        let budget = BodyBudget::new(BODY_BUDGET_BYTES);
        let read = budget.read(whole(&[600, 600]), 1000).await;
        let status = read.err().unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "the request body is larger than 1000 bytes"
        );
        let read = budget.read(whole(&[500, 500]), 1000).await.ok().unwrap();
        assert_eq!(read.bytes.len(), 1000);
    }

    #[tokio::test]
    async fn bodies_held_at_once_share_one_budget() {
        let budget = BodyBudget::new(4 * UNIT);
        // A client holding 3 KiB of a body it does not finish.
        let holder = budget.clone();
        let trickling = tokio::spawn(async move {
            let _ = holder.read(stalled(3 * UNIT), 1 << 20).await;
        });
        while budget.0.available_permits() > 1 {
            tokio::task::yield_now().await;
        }
        // Another body of 2 KiB does not fit beside it, and is refused at once.
        let refused = budget
            .read(whole(&[UNIT, UNIT]), 1 << 20)
            .await
            .err()
            .unwrap();
        assert_eq!(refused.code(), Code::Unavailable);
        // One of 1 KiB does, and what it holds comes back when it is dropped.
        let small = budget.read(whole(&[UNIT]), 1 << 20).await.ok().unwrap();
        assert!(budget.read(whole(&[1]), 1 << 20).await.is_err());
        drop(small);
        assert!(budget.read(whole(&[1]), 1 << 20).await.is_ok());
        // The trickling body gone, the budget is whole again.
        trickling.abort();
        let _ = trickling.await;
        let read = budget.read(whole(&[2 * UNIT, 2 * UNIT]), 1 << 20).await;
        assert_eq!(read.ok().unwrap().bytes.len(), 4 * UNIT);
    }
}
