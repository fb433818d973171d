//! REST/JSON → gRPC transcoding from the `google.api.http` rules of the descriptor set.
//!
//! A REST request is matched to its method ([`routes`]), its JSON, query and path are turned
//! into the protobuf request ([`transcode`]), and that request is sent as an ordinary gRPC
//! call through the gateway's one request path (policy, authentication, tenant context, request
//! id, backend), so REST can do nothing native gRPC cannot. The gRPC answer comes back as
//! proto3 JSON; a server stream as newline-delimited JSON, one `{"result": …}` per message and a
//! final `{"error": …}` if the stream fails midway (grpc-gateway's shape). Errors are
//! grpc-gateway's ([`errors`]).

pub mod errors;
pub mod openapi;
pub mod routes;
pub mod transcode;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use palisade_proto::google::api::{HttpRule, http_rule::Pattern};
use prost_reflect::{DescriptorPool, FieldDescriptor, MessageDescriptor, MethodDescriptor, Value};
use serde_json::json;
use tonic::{Code, Status, body::Body};

use self::{
    errors::{error_response, json_response, status_json},
    routes::{NoRoute, Router, Template},
    transcode::BodyRule,
};
use palisade_tenancy::ClientOrigin;

use crate::{edge::Edge, frames, tenants::ClientHost};

const HTTP_EXTENSION: &str = "google.api.http";

/// One REST binding of a gRPC method.
#[derive(Debug)]
pub struct Binding {
    /// `/package.Service/Method`.
    grpc_path: String,
    input: MessageDescriptor,
    output: MessageDescriptor,
    body: BodyRule,
    /// `response_body`: the JSON name of the one response field sent instead of the message.
    response_body: Option<String>,
    server_streaming: bool,
}

/// Every REST route of the API, built once at start.
pub struct Rest {
    router: Router<Arc<Binding>>,
}

/// One `google.api.http` rule (or additional binding) of a `palisade.*` method, parsed.
#[derive(Clone, Debug)]
pub struct HttpBinding {
    pub method: MethodDescriptor,
    /// `/package.Service/Method`.
    pub grpc_path: String,
    pub http_method: Method,
    pub template: Template,
    pub body: BodyRule,
    /// `response_body`: the response field sent instead of the message.
    pub response_body: Option<FieldDescriptor>,
}

/// Every `google.api.http` rule (and additional binding) of the `palisade.*` services, in
/// declaration order. Client-streaming methods have none (a stream has no place in one HTTP
/// request body). A malformed rule is an error: the gateway must not start with a route that
/// silently does not work.
pub fn http_bindings(pool: &DescriptorPool) -> Result<Vec<HttpBinding>, String> {
    let extension = pool
        .get_extension_by_name(HTTP_EXTENSION)
        .ok_or_else(|| format!("extension {HTTP_EXTENSION} is missing"))?;
    let mut bindings = Vec::new();
    let services = pool
        .services()
        .filter(|s| s.full_name().starts_with("palisade."));
    for method in services.flat_map(|s| s.methods().collect::<Vec<_>>()) {
        let options = method.options();
        if !options.has_extension(&extension) || method.is_client_streaming() {
            continue;
        }
        let grpc_path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let Value::Message(rule) = options.get_extension(&extension).as_ref().clone() else {
            continue;
        };
        let rule: HttpRule = rule
            .transcode_to()
            .map_err(|e| format!("{grpc_path}: {e}"))?;
        for rule in std::iter::once(&rule).chain(&rule.additional_bindings) {
            let (http_method, template) = match &rule.pattern {
                Some(Pattern::Get(t)) => (Method::GET, t.as_str()),
                Some(Pattern::Put(t)) => (Method::PUT, t.as_str()),
                Some(Pattern::Post(t)) => (Method::POST, t.as_str()),
                Some(Pattern::Delete(t)) => (Method::DELETE, t.as_str()),
                Some(Pattern::Patch(t)) => (Method::PATCH, t.as_str()),
                Some(Pattern::Custom(custom)) => (
                    Method::from_bytes(custom.kind.as_bytes())
                        .map_err(|e| format!("{grpc_path}: {e}"))?,
                    custom.path.as_str(),
                ),
                None => continue,
            };
            let template = Template::parse(template).map_err(|e| format!("{grpc_path}: {e}"))?;
            let response_body = match rule.response_body.as_str() {
                "" => None,
                field => Some(
                    method
                        .output()
                        .get_field_by_name(field)
                        .ok_or_else(|| format!("{grpc_path}: no response field `{field}`"))?,
                ),
            };
            bindings.push(HttpBinding {
                method: method.clone(),
                grpc_path: grpc_path.clone(),
                http_method,
                template,
                body: BodyRule::from_rule(&rule.body),
                response_body,
            });
        }
    }
    Ok(bindings)
}

impl Rest {
    /// Routes for every rule of [`http_bindings`].
    pub fn from_pool(pool: &DescriptorPool) -> Result<Rest, String> {
        let mut router = Router::default();
        for rule in http_bindings(pool)? {
            let binding = Binding {
                grpc_path: rule.grpc_path,
                input: rule.method.input(),
                output: rule.method.output(),
                body: rule.body,
                response_body: rule.response_body.map(|f| f.json_name().to_owned()),
                server_streaming: rule.method.is_server_streaming(),
            };
            router.add(rule.http_method, rule.template, Arc::new(binding));
        }
        Ok(Rest { router })
    }

    /// How many routes there are (for the start-up log).
    pub fn route_count(&self) -> usize {
        self.router.len()
    }

    /// Answers one REST request.
    pub async fn serve<B>(&self, edge: &Edge, request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        let (binding, bindings) = match self.router.find(&parts.method, parts.uri.path()) {
            Ok(found) => found,
            // grpc-gateway's routing errors: the HTTP status kept, the body a google.rpc.Status.
            Err(NoRoute::NotFound) => return routing_error(StatusCode::NOT_FOUND, Code::NotFound),
            Err(NoRoute::MethodNotAllowed) => {
                return routing_error(StatusCode::METHOD_NOT_ALLOWED, Code::Unimplemented);
            }
        };
        let body = match read_limited(body).await {
            Ok(body) => body,
            Err(status) => return error_response(&status),
        };
        let message = match transcode::request_message(
            &binding.input,
            &binding.body,
            &bindings,
            parts.uri.query().unwrap_or(""),
            &body,
        ) {
            Ok(message) => message,
            Err(error) => return error_response(&Status::from(error)),
        };
        let mut request = Request::new(Body::new(http_body_util::Full::new(frames::encode(
            0, &message,
        ))));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = binding
            .grpc_path
            .parse()
            .expect("a method path is a valid uri");
        *request.version_mut() = http::Version::HTTP_2;
        *request.headers_mut() = grpc_headers(&parts.headers);
        if let Some(host) = parts.extensions.get::<ClientHost>() {
            request.extensions_mut().insert(host.clone());
        }
        if let Some(origin) = parts.extensions.get::<ClientOrigin>() {
            request.extensions_mut().insert(origin.clone());
        }
        let response = edge.grpc(request).await;
        respond(binding, response).await
    }
}

fn routing_error(http: StatusCode, code: Code) -> Response<Body> {
    let message = http.canonical_reason().unwrap_or_default();
    json_response(
        http,
        &json!({"code": code as i32, "message": message, "details": []}),
    )
}

/// Reads a request body of at most [`frames::MAX_MESSAGE`] bytes.
pub async fn read_limited<B>(body: B) -> Result<Bytes, Status>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match http_body_util::Limited::new(body, frames::MAX_MESSAGE)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(Status::resource_exhausted(format!(
                "the request body is larger than {} bytes",
                frames::MAX_MESSAGE
            )))
        }
        Err(error) => Err(Status::cancelled(format!(
            "reading the request failed: {error}"
        ))),
    }
}

/// The gRPC metadata of a REST call: the credential and tracing headers as they are, and
/// `Grpc-Metadata-<name>` as `<name>` (the proxy then strips `palisade-*`, whichever way it came).
fn grpc_headers(rest: &HeaderMap) -> HeaderMap {
    const PASSED: [&str; 6] = [
        "authorization",
        "x-api-key",
        "x-request-id",
        "traceparent",
        "tracestate",
        "grpc-timeout",
    ];
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    for (name, value) in rest {
        if PASSED.contains(&name.as_str()) {
            headers.append(name.clone(), value.clone());
        } else if let Some(key) = name.as_str().strip_prefix("grpc-metadata-") {
            // gRPC's own and HTTP's connection headers are the gateway's to set, not the
            // client's (an HTTP/2 connection header would even break the call).
            const RESERVED: [&str; 9] = [
                "content-type",
                "content-length",
                "te",
                "host",
                "connection",
                "keep-alive",
                "proxy-connection",
                "transfer-encoding",
                "upgrade",
            ];
            if key.starts_with("grpc-") || RESERVED.contains(&key) {
                continue;
            }
            if let Ok(key) = HeaderName::from_bytes(key.as_bytes()) {
                headers.append(key, value.clone());
            }
        }
    }
    headers
}

/// The REST response for a gRPC response.
async fn respond(binding: &Binding, response: Response<Body>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    // Trailers-only: the call failed before any message (the proxy's own refusals, too).
    if let Some(status) = Status::from_header_map(&parts.headers)
        && status.code() != Code::Ok
    {
        return error_response(&status);
    }
    let mut reader = GrpcReader::new(body);
    if !binding.server_streaming {
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
        return match transcode::response_json(
            &binding.output,
            &message,
            binding.response_body.as_deref(),
        ) {
            Ok(json) => json_response(StatusCode::OK, &json),
            Err(error) => error_response(&Status::from(error)),
        };
    }
    // Like grpc-gateway, a stream that fails before its first message is a plain error
    // response with its HTTP status; once a message is out, the status is 200 and a failure
    // becomes the last line.
    let first = match reader.next().await {
        Item::Message(payload) => Some(payload),
        Item::End(status) if status.code() != Code::Ok => return error_response(&status),
        Item::End(_) => None,
    };
    let output = binding.output.clone();
    let field = binding.response_body.clone();
    let lines =
        futures::stream::unfold((reader, first, false), move |(mut reader, first, ended)| {
            let output = output.clone();
            let field = field.clone();
            async move {
                if ended {
                    return None;
                }
                let item = match first {
                    Some(payload) => Item::Message(payload),
                    None if reader.finished() => return None,
                    None => reader.next().await,
                };
                let (line, ended) = match item {
                    Item::Message(payload) => {
                        match transcode::response_json(&output, &payload, field.as_deref()) {
                            Ok(json) => (json!({ "result": json }), false),
                            Err(error) => (json!({ "error": status_json(&error.into()) }), true),
                        }
                    }
                    Item::End(status) if status.code() == Code::Ok => return None,
                    Item::End(status) => (json!({ "error": status_json(&status) }), true),
                };
                let mut line = serde_json::to_vec(&line).expect("a json value serializes");
                line.push(b'\n');
                let frame = http_body::Frame::data(Bytes::from(line));
                Some((Ok::<_, Status>(frame), (reader, None, ended)))
            }
        });
    let mut response = Response::new(Body::new(http_body_util::StreamBody::new(lines)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
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
}

impl GrpcReader {
    fn new(body: Body) -> GrpcReader {
        GrpcReader {
            body,
            decoder: frames::Decoder::default(),
            finished: false,
        }
    }

    fn finished(&self) -> bool {
        self.finished
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
                        let trailers = frame.into_trailers().unwrap_or_default();
                        let status = Status::from_header_map(&trailers).unwrap_or_else(|| {
                            Status::unknown("the call ended without a grpc-status")
                        });
                        return self.end(status);
                    }
                },
                Some(Err(status)) => return self.end(status),
                None => {
                    return self.end(Status::unknown("the call ended without a grpc-status"));
                }
            }
        }
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

    fn export_binding() -> Binding {
        let pool = palisade_proto::descriptor_pool();
        let method = pool
            .get_service_by_name("palisade.compliance.v1.AuditService")
            .unwrap()
            .methods()
            .find(|m| m.name() == "ExportAuditEvents")
            .unwrap();
        Binding {
            grpc_path: "/palisade.compliance.v1.AuditService/ExportAuditEvents".into(),
            input: method.input(),
            output: method.output(),
            body: BodyRule::None,
            response_body: None,
            server_streaming: true,
        }
    }

    fn grpc_response(frames: Vec<Frame<Bytes>>) -> Response<Body> {
        let stream = futures::stream::iter(frames.into_iter().map(Ok::<_, Status>));
        Response::new(Body::new(http_body_util::StreamBody::new(stream)))
    }

    fn trailers(code: Code, message: &str) -> Frame<Bytes> {
        let mut map = HeaderMap::new();
        Status::new(code, message).add_header(&mut map).unwrap();
        Frame::trailers(map)
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

    #[test]
    fn every_rule_of_the_api_becomes_a_route() {
        let rest = Rest::from_pool(palisade_proto::descriptor_pool()).unwrap();
        let (binding, bindings) = rest
            .router
            .find(&Method::GET, "/v1/tenants/acme/auditEvents:export")
            .unwrap();
        assert_eq!(
            binding.grpc_path,
            "/palisade.compliance.v1.AuditService/ExportAuditEvents"
        );
        assert!(binding.server_streaming);
        assert_eq!(
            bindings,
            vec![("parent".to_owned(), "tenants/acme".to_owned())]
        );
        let (binding, _) = rest.router.find(&Method::POST, "/v1/tenants").unwrap();
        assert_eq!(binding.body, BodyRule::Field("tenant".into()));
        let (binding, _) = rest.router.find(&Method::GET, "/v1/tenants/acme").unwrap();
        assert_eq!(
            binding.grpc_path,
            "/palisade.identity.v1.TenantService/GetTenant"
        );
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
        let response = grpc_response(vec![trailers(Code::NotFound, "no such tenant")]);
        let (status, lines) = read_lines(respond(&export_binding(), response).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            lines,
            vec![json!({"code": 5, "message": "no such tenant", "details": []})]
        );
        let empty = grpc_response(vec![trailers(Code::Ok, "")]);
        let (status, lines) = read_lines(respond(&export_binding(), empty).await).await;
        assert_eq!((status, lines.len()), (StatusCode::OK, 0));
    }
}
