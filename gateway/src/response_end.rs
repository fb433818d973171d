//! How a proxied response ends: with the backend's own trailers, or with a status the gateway
//! adds in place of the rest. Should the backend connection break off between two messages,
//! the response ends with trailers saying `UNAVAILABLE` instead of an error (passed on as an
//! error, hyper would reset the stream: native clients would read `INTERNAL` and gRPC-Web
//! clients no status at all); in the middle of a message it is broken off too, as trailers
//! would be read as the rest of the message. A streaming call's response still going at its deadline ends
//! there with `DEADLINE_EXCEEDED`, and the backend's stream is dropped (cancelled at the
//! backend). That status comes between two whole messages: the body's chunks do not follow
//! gRPC's message framing, and trailers after half a message would be read as message bytes
//! by a gRPC-Web client, so a message under way when the deadline passes is finished first.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http_body::Frame;
use tonic::{Status, body::Body};

use crate::frames;

pub struct EndsWithStatus {
    inner: Body,
    ended: bool,
    /// When the response must have ended, and the status it ends with if it has not.
    deadline: Option<(Pin<Box<tokio::time::Sleep>>, Status)>,
    /// The deadline has passed; the response ends at the next message boundary.
    expired: bool,
    framing: Framing,
}

impl EndsWithStatus {
    pub fn new(inner: Body, deadline: Option<(Instant, Status)>) -> EndsWithStatus {
        EndsWithStatus {
            inner,
            ended: false,
            deadline: deadline
                .map(|(due, status)| (Box::pin(tokio::time::sleep_until(due.into())), status)),
            expired: false,
            framing: Framing::default(),
        }
    }

    /// The trailers that end the response with `status`, in place of the rest of it.
    fn end_with(&mut self, status: &Status) -> Frame<Bytes> {
        self.ended = true;
        self.inner = Body::empty();
        let mut trailers = http::HeaderMap::new();
        if let Err(error) = status.add_header(&mut trailers) {
            tracing::warn!(%error, "a status could not be written as trailers");
        }
        Frame::trailers(trailers)
    }

    /// Ends the response with the deadline's status, if it has passed and no message is
    /// under way.
    fn end_if_expired(&mut self) -> Option<Frame<Bytes>> {
        if !self.expired || !self.framing.at_boundary() {
            return None;
        }
        let status = self.deadline.as_ref().map(|(_, status)| status.clone())?;
        tracing::info!(
            message = status.message(),
            "streaming call exceeded its deadline"
        );
        Some(self.end_with(&status))
    }
}

impl http_body::Body for EndsWithStatus {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if !self.expired
            && let Some((due, _)) = &mut self.deadline
            && due.as_mut().poll(cx).is_ready()
        {
            self.expired = true;
        }
        if let Some(trailers) = self.end_if_expired() {
            return Poll::Ready(Some(Ok(trailers)));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(error))) => {
                tracing::warn!(%error, "backend broke off a response");
                let status = Status::unavailable("the component broke off the response");
                if !self.framing.at_boundary() {
                    // Trailers now would be read as the rest of the message: break off too.
                    self.ended = true;
                    self.inner = Body::empty();
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Some(Ok(self.end_with(&status))))
            }
            // Ended by the backend: nothing follows, whatever time it is when polled again.
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    // Past the deadline, only the rest of the message under way is sent.
                    let expired = self.expired;
                    let taken = self.framing.advance(&data, expired);
                    data.truncate(taken);
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    self.ended = frame.is_trailers();
                    Poll::Ready(Some(Ok(frame)))
                }
            },
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Where a response stands in gRPC's message framing (a 5-byte prefix whose last four bytes
/// are the message's length, then the message).
#[derive(Debug, Default)]
struct Framing {
    /// The bytes of a prefix read so far (fewer than `frames::HEADER`).
    prefix: Vec<u8>,
    /// Bytes of the current message still to come.
    remaining: usize,
}

impl Framing {
    fn at_boundary(&self) -> bool {
        self.prefix.is_empty() && self.remaining == 0
    }

    /// Moves over `data`, or with `to_boundary` only as far as the end of the message under
    /// way; returns how many bytes it moved over.
    fn advance(&mut self, data: &[u8], to_boundary: bool) -> usize {
        let mut at = 0;
        while at < data.len() && !(to_boundary && self.at_boundary()) {
            if self.remaining > 0 {
                let taken = self.remaining.min(data.len() - at);
                self.remaining -= taken;
                at += taken;
            } else {
                self.prefix.push(data[at]);
                at += 1;
                if let Ok(prefix) = <&[u8; frames::HEADER]>::try_from(self.prefix.as_slice()) {
                    self.remaining = frames::declared_length(prefix);
                    self.prefix.clear();
                }
            }
        }
        at
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use http_body_util::BodyExt;

    use super::*;
    use http::HeaderValue;
    use std::time::Duration;

    #[tokio::test]
    async fn a_response_broken_off_ends_with_unavailable_trailers() {
        let frames = futures::stream::iter([
            Ok(http_body::Frame::data(bytes::Bytes::from_static(
                b"\0\0\0\0\0",
            ))),
            Err(Status::internal("connection reset")),
        ])
        .chain(futures::stream::pending());
        let body = EndsWithStatus::new(Body::new(http_body_util::StreamBody::new(frames)), None);
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "14");
        assert_eq!(collected.to_bytes().len(), 5);
    }

    #[tokio::test]
    async fn a_response_broken_off_mid_message_is_broken_off_too() {
        let half_a_message = message(10, 1)[..8].to_vec();
        let frames = futures::stream::iter([
            Ok(http_body::Frame::data(bytes::Bytes::from(half_a_message))),
            Err(Status::internal("connection reset")),
        ])
        .chain(futures::stream::pending());
        let mut body =
            EndsWithStatus::new(Body::new(http_body_util::StreamBody::new(frames)), None);
        assert!(body.frame().await.unwrap().unwrap().is_data());
        let broken = body.frame().await.unwrap();
        assert_eq!(broken.unwrap_err().code(), tonic::Code::Unavailable);
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_still_going_at_its_deadline_ends_deadline_exceeded() {
        let message = http_body::Frame::data(bytes::Bytes::from_static(b"\0\0\0\0\0"));
        // One message now, then a backend that sends nothing more.
        let frames =
            futures::stream::iter([Ok::<_, Status>(message)]).chain(futures::stream::pending());
        let due = Instant::now() + Duration::from_secs(5);
        let status = Status::deadline_exceeded("too slow");
        let body = EndsWithStatus::new(
            Body::new(http_body_util::StreamBody::new(frames)),
            Some((due, status)),
        );
        let collected = body.collect().await.unwrap();
        // Paused time moves tokio's clock only.
        assert!(tokio::time::Instant::now() >= due.into());
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "4");
        assert_eq!(trailers["grpc-message"], "too%20slow");
        assert_eq!(collected.to_bytes().len(), 5);
    }

    /// A message, 5-byte prefix and body, of `length` bytes of `fill`.
    fn message(length: u8, fill: u8) -> Vec<u8> {
        let mut message = vec![0, 0, 0, 0, length];
        message.extend(std::iter::repeat_n(fill, usize::from(length)));
        message
    }

    #[test]
    fn framing_finds_message_boundaries_across_chunks() {
        let mut framing = Framing::default();
        let stream = [message(3, 1), message(0, 0), message(4, 2)].concat();
        // Chunks cut across prefixes and messages alike.
        assert_eq!(framing.advance(&stream[..2], false), 2);
        assert!(!framing.at_boundary());
        assert_eq!(framing.advance(&stream[2..7], false), 5);
        assert!(!framing.at_boundary());
        // To the boundary only: the end of the first message, not the rest of the chunk.
        assert_eq!(framing.advance(&stream[7..], true), 1);
        assert!(framing.at_boundary());
        assert_eq!(framing.advance(&stream[8..], false), stream.len() - 8);
        assert!(framing.at_boundary());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_mid_message_ends_after_that_message() {
        let first = message(4, 1);
        let second = message(6, 2);
        // The second message arrives in two chunks, the deadline passing in between.
        let chunks = [
            [first.clone(), second[..3].to_vec()].concat(),
            [second[3..].to_vec(), message(2, 3)].concat(),
        ];
        let due = Instant::now() + Duration::from_secs(5);
        let frames = futures::stream::iter(chunks.into_iter().enumerate())
            .then(|(i, chunk)| async move {
                if i == 1 {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                Ok::<_, Status>(http_body::Frame::data(bytes::Bytes::from(chunk)))
            })
            .chain(futures::stream::pending());
        let body = EndsWithStatus::new(
            Body::new(http_body_util::StreamBody::new(frames)),
            Some((due, Status::deadline_exceeded("too slow"))),
        );
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "4");
        // Both whole messages, not the third, and no part of one.
        assert_eq!(collected.to_bytes(), [first, second].concat());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_has_ended_stays_ended_after_its_deadline() {
        let mut ok = http::HeaderMap::new();
        ok.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = futures::stream::iter([Ok::<_, Status>(http_body::Frame::trailers(ok))]);
        let due = Instant::now() + Duration::from_secs(5);
        let mut body = EndsWithStatus::new(
            Body::new(http_body_util::StreamBody::new(frames)),
            Some((due, Status::deadline_exceeded("too slow"))),
        );
        let trailers = body.frame().await.unwrap().unwrap();
        assert!(trailers.is_trailers());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_ends_in_time_keeps_its_own_status() {
        let mut ok = http::HeaderMap::new();
        ok.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = futures::stream::iter([Ok::<_, Status>(http_body::Frame::trailers(ok))]);
        let due = Instant::now() + Duration::from_secs(5);
        let body = EndsWithStatus::new(
            Body::new(http_body_util::StreamBody::new(frames)),
            Some((due, Status::deadline_exceeded("too slow"))),
        );
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    }
}
