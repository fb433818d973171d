//! The REST answer to a gRPC response: proto3 JSON for a unary call, newline-delimited JSON
//! for a server stream, grpc-gateway's error bodies, and the backend's custom metadata as
//! `Grpc-Metadata-*` / `Grpc-Trailer-*` headers ([`metadata`]).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use tonic::{Code, Status, body::Body};

use super::{
    Binding,
    errors::{error_response, json_response, status_json, stream_error_response},
    metadata::{self, HEADER_PREFIX, TRAILER_PREFIX},
    transcode,
};
use crate::frames;

/// The REST response for a gRPC response, with the backend's custom metadata as
/// `Grpc-Metadata-*` (its headers) and `Grpc-Trailer-*` (its trailers) headers.
pub(super) async fn respond(binding: &Binding, response: Response<Body>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    // Trailers-only: the call failed before any message (the proxy's own refusals, too), or
    // (from servers that answer so) a stream ended empty; its one header block is its
    // trailers.
    let trailers_only = Status::from_header_map(&parts.headers);
    if let Some(status) = &trailers_only
        && status.code() != Code::Ok
    {
        if binding.server_streaming {
            return stream_failed_at_once(status, &parts.headers);
        }
        let mut response = error_response(status);
        metadata::forward_response(&parts.headers, TRAILER_PREFIX, response.headers_mut());
        return response;
    }
    let mut reader = GrpcReader::new(body);
    if trailers_only.is_some() {
        reader.trailers = parts.headers.clone();
    }
    let mut response = if binding.server_streaming {
        stream_response(binding, reader).await
    } else {
        let mut response = unary_response(binding, &mut reader).await;
        // The call is over before its answer goes out, so its trailers can be headers, which
        // every HTTP/1.1 client reads (grpc-gateway sends HTTP trailers, to `TE: trailers`
        // clients only).
        metadata::forward_response(&reader.trailers, TRAILER_PREFIX, response.headers_mut());
        response
    };
    if trailers_only.is_none() {
        metadata::forward_response(&parts.headers, HEADER_PREFIX, response.headers_mut());
    }
    response
}

async fn unary_response(binding: &Binding, reader: &mut GrpcReader) -> Response<Body> {
    let mut message = None;
    let status = loop {
        match reader.next().await {
            Item::Message(payload) if message.is_none() => message = Some(payload),
            Item::Message(_) => break Status::internal("a unary call answered twice"),
            Item::End(status) => break status,
        }
    };
    if status.code() != Code::Ok {
        return error_response(&status);
    }
    let Some(message) = message else {
        return error_response(&Status::internal("the call ended without a response"));
    };
    match transcode::response_json(&binding.output, &message, binding.response_body.as_deref()) {
        Ok(json) => json_response(StatusCode::OK, &json),
        Err(error) => error_response(&Status::from(error)),
    }
}

/// Where a streamed REST answer is.
#[derive(Clone, Copy)]
enum Phase {
    Messages,
    /// The last line is out; the backend's trailer metadata (if any) follows as HTTP trailers.
    Trailers,
    Done,
}

async fn stream_response(binding: &Binding, mut reader: GrpcReader) -> Response<Body> {
    // Once a message is out, the status is 200 and a failure becomes the last line.
    let (first, phase) = match reader.next().await {
        Item::Message(payload) => (Some(payload), Phase::Messages),
        Item::End(status) if status.code() != Code::Ok => {
            return stream_failed_at_once(&status, &reader.trailers);
        }
        Item::End(_) => (None, Phase::Trailers),
    };
    let output = binding.output.clone();
    let field = binding.response_body.clone();
    let frames =
        futures::stream::unfold((reader, first, phase), move |(mut reader, first, phase)| {
            let output = output.clone();
            let field = field.clone();
            async move {
                match phase {
                    Phase::Done => return None,
                    Phase::Trailers => {
                        let frame = trailers_frame(&reader)?;
                        return Some((Ok(frame), (reader, None, Phase::Done)));
                    }
                    Phase::Messages => {}
                }
                let item = match first {
                    Some(payload) => Item::Message(payload),
                    None => reader.next().await,
                };
                let (line, next) = match item {
                    Item::Message(payload) => {
                        match transcode::response_json(&output, &payload, field.as_deref()) {
                            Ok(json) => (json!({ "result": json }), Phase::Messages),
                            Err(error) => {
                                (json!({ "error": status_json(&error.into()) }), Phase::Done)
                            }
                        }
                    }
                    Item::End(status) if status.code() == Code::Ok => {
                        let frame = trailers_frame(&reader)?;
                        return Some((Ok(frame), (reader, None, Phase::Done)));
                    }
                    Item::End(status) => {
                        (json!({ "error": status_json(&status) }), Phase::Trailers)
                    }
                };
                let mut line = serde_json::to_vec(&line).expect("a json value serializes");
                line.push(b'\n');
                let frame = http_body::Frame::data(Bytes::from(line));
                Some((Ok::<_, Status>(frame), (reader, None, next)))
            }
        });
    let mut response = Response::new(Body::new(http_body_util::StreamBody::new(frames)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// A stream that failed before its first message, refused outright (trailers-only) or after
/// it opened: as grpc-gateway answers (its first `Recv` fails either way), the failure's HTTP
/// status and the failure as the one line, `{"error": …}`. Errors of the REST layer itself (no
/// route, a bad body) come before any call and are plain error responses.
fn stream_failed_at_once(status: &Status, trailers: &HeaderMap) -> Response<Body> {
    let mut response = stream_error_response(status);
    metadata::forward_response(trailers, TRAILER_PREFIX, response.headers_mut());
    response
}

/// The backend's custom trailer metadata as an HTTP trailers frame, if there is any.
fn trailers_frame(reader: &GrpcReader) -> Option<http_body::Frame<Bytes>> {
    let mut trailers = HeaderMap::new();
    metadata::forward_response(&reader.trailers, TRAILER_PREFIX, &mut trailers);
    (!trailers.is_empty()).then(|| http_body::Frame::trailers(trailers))
}

enum Item {
    Message(Bytes),
    /// The call's status, from the trailers (or the reason the stream broke).
    End(Status),
}

/// Reads the messages and final status of a gRPC response body.
struct GrpcReader {
    body: Body,
    decoder: frames::Decoder,
    finished: bool,
    /// The call's trailers, once they arrived (for a trailers-only response, its headers:
    /// its body then ends without trailers of its own).
    trailers: HeaderMap,
}

impl GrpcReader {
    fn new(body: Body) -> GrpcReader {
        GrpcReader {
            body,
            decoder: frames::Decoder::default(),
            finished: false,
            trailers: HeaderMap::new(),
        }
    }

    async fn next(&mut self) -> Item {
        loop {
            if self.finished {
                return Item::End(Status::internal("read past the end of the call"));
            }
            match self.decoder.next_frame() {
                Ok(Some((flag, _))) if flag & frames::COMPRESSED_FLAG != 0 => {
                    // The gateway never offers compression, so a compressed answer is a bug.
                    return self.end(Status::internal("unexpected compressed message"));
                }
                Ok(Some((_, payload))) => return Item::Message(payload),
                Ok(None) => {}
                Err(frames::TooLarge(size)) => {
                    return self.end(Status::resource_exhausted(format!(
                        "a response message of {size} bytes is too large"
                    )));
                }
            }
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.decoder.push(&data),
                    Err(frame) => {
                        self.trailers = frame.into_trailers().unwrap_or_default();
                        return self.end_with_trailers();
                    }
                },
                Some(Err(status)) => return self.end(status),
                None => return self.end_with_trailers(),
            }
        }
    }

    /// The end, with the status `trailers` hold (none when the body ended without them).
    fn end_with_trailers(&mut self) -> Item {
        let status = Status::from_header_map(&self.trailers)
            .unwrap_or_else(|| Status::unknown("the call ended without a grpc-status"));
        self.end(status)
    }

    fn end(&mut self, status: Status) -> Item {
        self.finished = true;
        Item::End(status)
    }
}

#[cfg(test)]
mod tests {
    use http_body::Frame;
    use palisade_proto::palisade::compliance::v1::AuditEvent;
    use prost::Message;

    use super::*;
    use crate::rest::transcode::BodyRule;

    /// The binding of `method` of `service` in `palisade.<service>`, as the router builds it.
    fn binding(service: &str, method: &str) -> Binding {
        let pool = palisade_proto::descriptor_pool();
        let method = pool
            .get_service_by_name(&format!("palisade.{service}"))
            .unwrap()
            .methods()
            .find(|m| m.name() == method)
            .unwrap();
        Binding {
            grpc_path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
            input: method.input(),
            output: method.output(),
            body: BodyRule::None,
            implied_mask: None,
            response_body: None,
            server_streaming: method.is_server_streaming(),
        }
    }

    fn export_binding() -> Binding {
        binding("compliance.v1.AuditService", "ExportAuditEvents")
    }

    fn grpc_response(frames: Vec<Frame<Bytes>>) -> Response<Body> {
        let stream = futures::stream::iter(frames.into_iter().map(Ok::<_, Status>));
        Response::new(Body::new(http_body_util::StreamBody::new(stream)))
    }

    fn trailers(code: Code, message: &str) -> Frame<Bytes> {
        trailers_with(code, message, &[])
    }

    fn trailers_with(
        code: Code,
        message: &str,
        metadata: &[(&'static str, &'static str)],
    ) -> Frame<Bytes> {
        let mut map = HeaderMap::new();
        Status::new(code, message).add_header(&mut map).unwrap();
        for (key, value) in metadata {
            map.insert(*key, HeaderValue::from_static(value));
        }
        Frame::trailers(map)
    }

    /// A backend's response headers: gRPC's content type and some custom metadata.
    fn with_header_metadata(mut response: Response<Body>) -> Response<Body> {
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("x-served-by", HeaderValue::from_static("identity-2"));
        response
    }

    async fn read_lines(response: Response<Body>) -> (StatusCode, Vec<serde_json::Value>) {
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let lines = String::from_utf8(body.to_vec())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        (status, lines)
    }

    #[tokio::test]
    async fn a_stream_that_fails_midway_ends_with_an_error_line() {
        let event = AuditEvent {
            action: "identity.tenants.create".into(),
            sequence: 7,
            ..Default::default()
        };
        let response = grpc_response(vec![
            Frame::data(frames::encode(0, &event.encode_to_vec())),
            Frame::data(frames::encode(0, &event.encode_to_vec())),
            trailers(Code::Unavailable, "compliance went away"),
        ]);
        let (status, lines) = read_lines(respond(&export_binding(), response).await).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["result"]["action"], "identity.tenants.create");
        assert_eq!(lines[1]["result"]["sequence"], "7");
        assert_eq!(
            lines[2],
            json!({"error": {"code": 14, "message": "compliance went away", "details": []}})
        );
    }

    #[tokio::test]
    async fn a_stream_that_fails_at_once_is_an_http_error() {
        // Opened (its headers came), then failed: grpc-gateway's error line, with the
        // failure's HTTP status.
        let response = grpc_response(vec![trailers(Code::NotFound, "no such tenant")]);
        let (status, lines) = read_lines(respond(&export_binding(), response).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            lines,
            vec![json!({"error": {"code": 5, "message": "no such tenant", "details": []}})]
        );
        // Refused outright (trailers-only): the same.
        let mut refused = Response::new(Body::empty());
        Status::not_found("no such tenant")
            .add_header(refused.headers_mut())
            .unwrap();
        let (status, lines) = read_lines(respond(&export_binding(), refused).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            lines,
            vec![json!({"error": {"code": 5, "message": "no such tenant", "details": []}})]
        );
        let empty = grpc_response(vec![trailers(Code::Ok, "")]);
        let (status, lines) = read_lines(respond(&export_binding(), empty).await).await;
        assert_eq!((status, lines.len()), (StatusCode::OK, 0));
    }

    #[tokio::test]
    async fn backend_metadata_comes_back_as_grpc_metadata_and_grpc_trailer_headers() {
        let tenant = palisade_proto::palisade::identity::v1::Tenant {
            name: "tenants/acme".into(),
            ..Default::default()
        };
        let response = with_header_metadata(grpc_response(vec![
            Frame::data(frames::encode(0, &tenant.encode_to_vec())),
            trailers_with(Code::Ok, "", &[("x-cost", "3")]),
        ]));
        let get = binding("identity.v1.TenantService", "GetTenant");
        let response = respond(&get, response).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["grpc-metadata-x-served-by"], "identity-2");
        assert_eq!(headers["grpc-trailer-x-cost"], "3");
        assert_eq!(headers["content-type"], "application/json");
        assert!(headers.get("grpc-metadata-content-type").is_none());
        assert!(headers.get("grpc-trailer-grpc-status").is_none());

        // A failure keeps both: trailers-only, and after the headers.
        let mut refused = HeaderMap::new();
        Status::not_found("no such tenant")
            .add_header(&mut refused)
            .unwrap();
        refused.insert("x-cost", HeaderValue::from_static("1"));
        let mut trailers_only = grpc_response(vec![]);
        *trailers_only.headers_mut() = refused;
        let response = respond(&get, trailers_only).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["grpc-trailer-x-cost"], "1");
        let failed = with_header_metadata(grpc_response(vec![trailers_with(
            Code::NotFound,
            "no such tenant",
            &[("x-cost", "2")],
        )]));
        let response = respond(&get, failed).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            response.headers()["grpc-metadata-x-served-by"],
            "identity-2"
        );
        assert_eq!(response.headers()["grpc-trailer-x-cost"], "2");
    }

    #[tokio::test]
    async fn a_stream_sends_header_metadata_first_and_trailer_metadata_as_http_trailers() {
        let event = AuditEvent::default();
        let response = with_header_metadata(grpc_response(vec![
            Frame::data(frames::encode(0, &event.encode_to_vec())),
            trailers_with(Code::Ok, "", &[("x-cost", "9")]),
        ]));
        let response = respond(&export_binding(), response).await;
        assert_eq!(
            response.headers()["grpc-metadata-x-served-by"],
            "identity-2"
        );
        let collected = response.into_body().collect().await.unwrap();
        let sent = collected.trailers().cloned().unwrap_or_default();
        assert_eq!(sent["grpc-trailer-x-cost"], "9");
        assert_eq!(sent.len(), 1, "{sent:?}");
        let line: serde_json::Value = serde_json::from_slice(&collected.to_bytes()).unwrap();
        assert_eq!(line["result"]["sequence"], "0");

        // Nothing to send, no trailers frame.
        let plain = grpc_response(vec![trailers(Code::Ok, "")]);
        let collected = respond(&export_binding(), plain)
            .await
            .into_body()
            .collect()
            .await
            .unwrap();
        assert!(collected.trailers().is_none());
    }

    /// grpc-go and grpc-java end an empty stream trailers-only, with `OK`: an empty answer,
    /// as when the status comes in trailers after empty headers.
    #[tokio::test]
    async fn an_empty_stream_answered_trailers_only_is_an_empty_answer() {
        let mut ended = HeaderMap::new();
        Status::ok("").add_header(&mut ended).unwrap();
        ended.insert("content-type", HeaderValue::from_static("application/grpc"));
        ended.insert("x-cost", HeaderValue::from_static("0"));
        let mut trailers_only = grpc_response(vec![]);
        *trailers_only.headers_mut() = ended;
        let response = respond(&export_binding(), trailers_only).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("grpc-metadata-x-cost").is_none());
        let collected = response.into_body().collect().await.unwrap();
        let sent = collected.trailers().cloned().unwrap_or_default();
        assert_eq!(sent["grpc-trailer-x-cost"], "0");
        assert!(collected.to_bytes().is_empty());
    }
}
