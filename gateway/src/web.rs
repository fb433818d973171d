//! gRPC-Web on the public port: `application/grpc-web(+proto)` (binary) and
//! `application/grpc-web-text(+proto)` (base64), over HTTP/1.1 or HTTP/2.
//!
//! The request becomes a gRPC request (same frames; text mode base64-decoded) and goes through
//! the gateway's one request path. On the way back the messages pass as they are and the
//! trailers, which browsers cannot read, become a final frame with flag `0x80` holding
//! `name: value\r\n` lines. A trailers-only answer keeps its status in the headers, as the
//! protocol allows.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, header};
use http_body::Frame;
use palisade_tenancy::HEADER_REQUEST_ID;
use tonic::{Status, body::Body};

use crate::{edge::Edge, frames, rest::errors::retry_after, web_text::TextDecoded, whole_bodies};

/// The most a text-mode body may hold once decoded: a message frame of the largest message
/// the gateway takes ([`frames::MAX_MESSAGE`] and its prefix), so text mode takes what binary
/// mode and native gRPC take (the message itself is then checked as theirs are).
const TEXT_BODY_LIMIT: usize = frames::MAX_MESSAGE + frames::HEADER;

/// The two encodings of gRPC-Web.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Text,
}

impl Mode {
    /// The mode of a request's `content-type`, if it is gRPC-Web.
    pub fn of(content_type: &str) -> Option<Mode> {
        let content_type = content_type.trim().to_ascii_lowercase();
        if content_type.starts_with("application/grpc-web-text") {
            Some(Mode::Text)
        } else if content_type.starts_with("application/grpc-web") {
            Some(Mode::Binary)
        } else {
            None
        }
    }

    /// A gRPC or gRPC-Web `content-type` whose message encoding is not protobuf
    /// (`application/grpc-web+json`, `application/grpc+thrift`): the mesh speaks protobuf
    /// only, so such a request is refused, with a status saying why, rather than misread. The
    /// refusal, in the request's own protocol where it can be read: a gRPC status for native
    /// gRPC, HTTP 415 for gRPC-Web (whose framing the client expects in another encoding).
    pub fn refuse_unsupported(content_type: &str) -> Option<Response<Body>> {
        let media = (content_type.split(';').next().unwrap_or_default())
            .trim()
            .to_ascii_lowercase();
        const SPOKEN: [&str; 6] = [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpc-web-text",
            "application/grpc-web-text+proto",
        ];
        if !media.starts_with("application/grpc") || SPOKEN.contains(&media.as_str()) {
            return None;
        }
        let status = Status::from(palisade_grpc::ApiError::Unimplemented {
            message: format!(
                "content-type {} is not supported: messages are protobuf \
                 (application/grpc, application/grpc-web or application/grpc-web-text, optionally +proto)",
                palisade_grpc::echoed(&media)
            ),
        });
        Some(if media.starts_with("application/grpc-web") {
            crate::rest::errors::json_response(
                http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &crate::rest::errors::status_json(&status),
            )
        } else {
            status.into_http()
        })
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Mode::Binary => "application/grpc-web+proto",
            Mode::Text => "application/grpc-web-text+proto",
        })
    }
}

/// Answers one gRPC-Web request.
pub async fn serve<B>(edge: &Edge, request: Request<B>, mode: Mode) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut parts, body) = request.into_parts();
    // gRPC-Web calls are POSTs (its protocol spec); a GET would reach the method with no
    // message at all.
    if parts.method != http::Method::POST {
        let mut refusal = error(
            Status::unimplemented("gRPC-Web calls are POST requests"),
            mode,
        );
        *refusal.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
        refusal
            .headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("POST"));
        return refusal;
    }
    // A text body read whole holds its share of the gateway's body budget until the call's
    // answer has begun.
    let (body, _held) = match mode {
        // The frames are gRPC's own: stream them through untouched.
        Mode::Binary => (Body::new(body), None),
        // Decoded as it arrives, so a body costs its decoded bytes only; read whole before
        // the call, so that text which is not base64 is refused as such.
        Mode::Text => {
            let client = whole_bodies::client_of(&parts.extensions);
            let read = edge
                .bodies()
                .read(TextDecoded::new(body), TEXT_BODY_LIMIT, client);
            match read.await {
                Ok(whole) => (
                    Body::new(http_body_util::Full::new(whole.bytes)),
                    Some(whole.held),
                ),
                Err(status) => return error(status, mode),
            }
        }
    };
    to_grpc_headers(&mut parts.headers);
    let version = parts.version;
    parts.version = http::Version::HTTP_2;
    let response = edge.grpc(Request::from_parts(parts, body)).await;

    let (mut parts, body) = response.into_parts();
    parts.version = version;
    parts
        .headers
        .insert(header::CONTENT_TYPE, mode.content_type());
    // A refusal (trailers-only) keeps HTTP 200 with its status in the headers, as gRPC-Web
    // clients expect: they read `grpc-status` and the details only from a 200 response. When
    // the status says when to retry, HTTP's `Retry-After` says it too.
    if let Some(status) = Status::from_header_map(&parts.headers)
        && let Some(seconds) = retry_after(&status)
    {
        parts.headers.insert(header::RETRY_AFTER, seconds);
    }
    Response::from_parts(parts, Body::new(WebBody { inner: body, mode }))
}

/// A gRPC-Web request's headers made those of the gRPC call it becomes.
fn to_grpc_headers(headers: &mut http::HeaderMap) {
    // Hop-by-hop and HTTP/1-only headers have no place in the HTTP/2 call to the backend
    // (h2 refuses a request carrying one), nor do those `Connection` names as hop-by-hop,
    // except the request id the edge set: the client was answered with that one.
    let named_hop_by_hop: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| name != HEADER_REQUEST_ID)
        .collect();
    for name in named_hop_by_hop {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
}

/// A refusal before any call was made, in the trailers-only form.
fn error(status: Status, mode: Mode) -> Response<Body> {
    let mut response: Response<Body> = status.into_http();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, mode.content_type());
    response
}

/// The backend's response body with trailers turned into a final frame, base64 in text mode.
struct WebBody {
    inner: Body,
    mode: Mode,
}

impl http_body::Body for WebBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let mode = self.mode;
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    frames::encode(frames::TRAILERS_FLAG, &frames::encode_trailers(&trailers))
                }
                Err(_) => return Poll::Ready(None),
            },
        };
        let data = match mode {
            Mode::Binary => data,
            // Each chunk padded on its own: clients decode 4 characters at a time.
            Mode::Text => Bytes::from(STANDARD.encode(&data)),
        };
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_the_content_type() {
        assert_eq!(Mode::of("application/grpc-web"), Some(Mode::Binary));
        assert_eq!(Mode::of("application/grpc-web+proto"), Some(Mode::Binary));
        assert_eq!(Mode::of("application/grpc-web-text"), Some(Mode::Text));
        assert_eq!(
            Mode::of("Application/gRPC-Web-Text+proto"),
            Some(Mode::Text)
        );
        assert_eq!(Mode::of("application/grpc"), None);
        assert_eq!(Mode::of("application/json"), None);
    }

    #[test]
    fn encodings_other_than_protobuf_are_refused_in_the_requests_protocol() {
        for spoken in [
            "application/grpc",
            "application/grpc+proto",
            "Application/gRPC-Web+proto",
            "application/grpc-web-text; charset=utf-8",
            "application/json",
            "",
        ] {
            assert!(Mode::refuse_unsupported(spoken).is_none(), "{spoken}");
        }
        let native = Mode::refuse_unsupported("application/grpc+json").unwrap();
        assert_eq!(native.status(), http::StatusCode::OK);
        assert_eq!(native.headers()["grpc-status"], "12");
        let web = Mode::refuse_unsupported("application/grpc-web+json").unwrap();
        assert_eq!(web.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn hop_by_hop_headers_go_but_the_request_id_stays() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            "keep-alive, x-request-id, x-extra".parse().unwrap(),
        );
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-extra", "1".parse().unwrap());
        headers.insert(HEADER_REQUEST_ID, "req-1".parse().unwrap());
        headers.insert(header::HOST, "gateway".parse().unwrap());
        to_grpc_headers(&mut headers);
        assert_eq!(headers[HEADER_REQUEST_ID], "req-1");
        for gone in ["connection", "keep-alive", "x-extra", "host"] {
            assert!(!headers.contains_key(gone), "{gone}");
        }
        assert_eq!(headers[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(headers[header::TE], "trailers");
    }
}
