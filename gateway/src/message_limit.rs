//! The size limit on a gRPC call's request message, at the edge. Every public method takes one
//! request message (the only client-streaming method, the internal `ImportTenantData`, is
//! never routed), so the gateway reads the message's 5-byte prefix before it calls a backend
//! and refuses one declared larger than [`frames::MAX_MESSAGE`] as `RESOURCE_EXHAUSTED`, the
//! code gRPC gives an exceeded message size (and that a REST body over the limit gets: 413).
//! Left to the component, tonic would answer `OUT_OF_RANGE`, after receiving all of it.
//!
//! What was read to find the prefix goes on to the backend unchanged, ahead of the rest. A
//! request's trailers do not: gRPC gives a request none (its end is the stream's end), so
//! trailers a client sends mean nothing to the mesh, and passed on they would carry whatever
//! `palisade-*` metadata the gateway stripped from the headers.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use palisade_grpc::ApiError;
use tonic::{Status, body::Body};

use crate::frames::{self, HEADER as PREFIX, MAX_MESSAGE};

/// `request` once its first message's declared length is known to be within the limit; its
/// body is the same bytes. A body that ends before a whole prefix goes on as it is: the
/// component says what is wrong with it.
pub async fn within_limit(request: Request<Body>) -> Result<Request<Body>, Status> {
    let (parts, mut body) = request.into_parts();
    let read = read_prefix(&mut body).await?;
    if let Some(length) = declared_length(&read).filter(|length| *length > MAX_MESSAGE) {
        return Err(too_large(length).into());
    }
    let body = Body::new(Replayed { read, rest: body });
    Ok(Request::from_parts(parts, body))
}

/// The frames that hold the first message's prefix: at most one per prefix byte, and trailers
/// if they came first. Empty data frames are dropped: HTTP/2 lets a client send them without
/// end, and kept they would grow this queue for as long as the client likes.
async fn read_prefix(body: &mut Body) -> Result<VecDeque<Frame<Bytes>>, Status> {
    let mut read = VecDeque::new();
    let mut buffered = 0;
    while buffered < PREFIX {
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    buffered += data.len();
                    read.push_back(Frame::data(data));
                }
                Err(trailers) => {
                    read.push_back(trailers);
                    break;
                }
            },
            Some(Err(error)) => return Err(error),
            None => break,
        }
    }
    Ok(read)
}

/// The length in the first message's prefix, once the data read holds a whole one.
fn declared_length(read: &VecDeque<Frame<Bytes>>) -> Option<usize> {
    let mut prefix = [0; PREFIX];
    let mut filled = 0;
    for data in read.iter().filter_map(Frame::data_ref) {
        let take = (PREFIX - filled).min(data.len());
        prefix[filled..filled + take].copy_from_slice(&data[..take]);
        filled += take;
        if filled == PREFIX {
            return Some(frames::declared_length(&prefix));
        }
    }
    None
}

fn too_large(length: usize) -> ApiError {
    let limit = format!("{} MiB", MAX_MESSAGE >> 20);
    ApiError::ResourceExhausted {
        reason: "MESSAGE_TOO_LARGE",
        message: format!("the request message is {length} bytes; the limit is {limit}"),
        subject: "request".to_owned(),
        description: format!("a request message holds at most {limit}"),
        retry_after: None,
    }
}

/// A body whose first frames were read already: those, then the rest, less any trailers.
struct Replayed {
    read: VecDeque<Frame<Bytes>>,
    rest: Body,
}

impl HttpBody for Replayed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = match self.read.pop_front() {
            Some(frame) => Some(Ok(frame)),
            None => ready!(Pin::new(&mut self.rest).poll_frame(cx)),
        };
        // Trailers come last: the body ends where they would have been.
        Poll::Ready(frame.filter(|frame| !frame.as_ref().is_ok_and(Frame::is_trailers)))
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = (self.read.iter())
            .filter_map(Frame::data_ref)
            .map(|data| data.remaining() as u64)
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + read);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + read);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::StreamBody;

    use super::*;
    use crate::frames;

    /// A request whose body arrives in `chunks`.
    fn request(chunks: Vec<Bytes>) -> Request<Body> {
        let frames = chunks
            .into_iter()
            .map(|chunk| Ok::<_, Status>(Frame::data(chunk)));
        Request::new(Body::new(StreamBody::new(futures::stream::iter(frames))))
    }

    async fn body_of(request: Request<Body>) -> Bytes {
        request.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_message_within_the_limit_goes_on_whole_however_it_was_split() {
        let message = frames::encode(0, b"hello");
        for split in 0..message.len() {
            let chunks = vec![message.slice(..split), message.slice(split..)];
            let passed = within_limit(request(chunks)).await.unwrap();
            assert_eq!(body_of(passed).await, message, "split at {split}");
        }
    }

    #[tokio::test]
    async fn a_message_declared_over_the_limit_is_refused_before_it_arrives() {
        let mut prefix = vec![0];
        prefix.extend_from_slice(&((MAX_MESSAGE + 1) as u32).to_be_bytes());
        let chunks = vec![
            Bytes::from(prefix[..2].to_vec()),
            Bytes::from(prefix[2..].to_vec()),
        ];
        let refused = within_limit(request(chunks)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        let exactly = frames::encode(0, &vec![0; MAX_MESSAGE]);
        assert!(within_limit(request(vec![exactly])).await.is_ok());
    }

    #[tokio::test]
    async fn empty_frames_before_the_prefix_are_not_kept() {
        let message = frames::encode(0, b"hello");
        let mut chunks = vec![Bytes::new(); 100_000];
        chunks.push(message.clone());
        let mut body = request(chunks).into_body();
        let read = read_prefix(&mut body).await.unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].data_ref(), Some(&message));
    }

    #[tokio::test]
    async fn a_clients_request_trailers_are_dropped() {
        let message = frames::encode(0, b"hello");
        let mut trailers = http::HeaderMap::new();
        trailers.insert("palisade-tenant-id", "other".parse().unwrap());
        // Trailers read with the prefix (a body shorter than one), and after it.
        for data in [message.slice(..2), message.clone()] {
            let frames = vec![Frame::data(data.clone()), Frame::trailers(trailers.clone())];
            let body = StreamBody::new(futures::stream::iter(
                frames.into_iter().map(Ok::<_, Status>),
            ));
            let passed = within_limit(Request::new(Body::new(body))).await.unwrap();
            let collected = passed.into_body().collect().await.unwrap();
            assert_eq!(collected.trailers(), None);
            assert_eq!(collected.to_bytes(), data);
        }
    }

    #[tokio::test]
    async fn a_body_shorter_than_a_prefix_goes_on_as_it_is() {
        for body in [vec![], vec![Bytes::from_static(b"\0\0")]] {
            let passed = within_limit(request(body.clone())).await.unwrap();
            assert_eq!(body_of(passed).await, body.concat());
        }
    }
}
