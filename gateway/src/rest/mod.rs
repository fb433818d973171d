//! REST/JSON → gRPC transcoding from the `google.api.http` rules of the descriptor set.
//!
//! A REST request is matched to its method ([`routes`]), its JSON, query and path are turned
//! into the protobuf request ([`transcode`]), and that request is sent as an ordinary gRPC
//! call through the gateway's one request path (policy, authentication, tenant context, request
//! id, backend), so REST can do nothing native gRPC cannot. The gRPC answer comes back as
//! proto3 JSON; a server stream as newline-delimited JSON, one `{"result": …}` per message and a
//! final `{"error": …}` if the stream fails (grpc-gateway's shape; before its first message,
//! with the failure's HTTP status) ([`response`]).
//! Errors are grpc-gateway's ([`errors`]), and so is the metadata mapping ([`metadata`]):
//! `Grpc-Metadata-*` headers in, the backend's custom metadata out.

pub mod errors;
pub mod metadata;
pub mod openapi;
mod response;
pub mod routes;
pub mod transcode;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use palisade_proto::google::api::{HttpRule, http_rule::Pattern};
use prost_reflect::{DescriptorPool, FieldDescriptor, MessageDescriptor, MethodDescriptor, Value};
use serde_json::json;
use tonic::{Code, Status, body::Body};

use self::{
    errors::{error_response, json_response},
    response::respond,
    routes::{NoRoute, Router, Template},
    transcode::BodyRule,
};
use palisade_grpc::ApiError;
use palisade_telemetry::LabeledCounter;
use palisade_tenancy::{ClientOrigin, HEADER_REQUEST_ID};

use crate::{
    edge::Edge,
    frames,
    tenants::ClientHost,
    whole_bodies::{self, WholeBody},
};

const HTTP_EXTENSION: &str = "google.api.http";

/// One REST binding of a gRPC method.
#[derive(Debug)]
pub struct Binding {
    /// `/package.Service/Method`.
    grpc_path: String,
    input: MessageDescriptor,
    output: MessageDescriptor,
    body: BodyRule,
    implied_mask: Option<FieldDescriptor>,
    /// `response_body`: the JSON name of the one response field sent instead of the message.
    response_body: Option<String>,
    server_streaming: bool,
}

/// Every REST route of the API, built once at start.
pub struct Rest {
    router: Router<Arc<Binding>>,
    /// Requests refused before they became a gRPC call, by reason (see [`Rest::refused`]).
    refusals: Option<LabeledCounter>,
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
    /// A PATCH's field mask, filled from the body when the request sends none
    /// ([`transcode::implied_update_mask`]).
    pub implied_mask: Option<FieldDescriptor>,
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
            let body = BodyRule::from_rule(&rule.body);
            let implied_mask = transcode::implied_update_mask(&http_method, &method.input(), &body);
            bindings.push(HttpBinding {
                method: method.clone(),
                grpc_path: grpc_path.clone(),
                http_method,
                template,
                body,
                response_body,
                implied_mask,
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
                implied_mask: rule.implied_mask,
                response_body: rule.response_body.map(|f| f.json_name().to_owned()),
                server_streaming: rule.method.is_server_streaming(),
            };
            router.add(rule.http_method, rule.template, Arc::new(binding));
        }
        Ok(Rest {
            router,
            refusals: None,
        })
    }

    /// Counts the requests refused before they became a gRPC call in `refusals`, by reason.
    pub fn counting_refusals(self, refusals: LabeledCounter) -> Rest {
        Rest {
            refusals: Some(refusals),
            ..self
        }
    }

    /// How many routes there are (for the start-up log).
    pub fn route_count(&self) -> usize {
        self.router.len()
    }

    /// Answers one REST request. Answers are never stored by HTTP caches (they carry tokens,
    /// key secrets and one principal's data; RFC 6749 §5.1 asks as much of token responses),
    /// and a 401 says which scheme to authenticate with (RFC 6750 §3): `invalid_token` when
    /// the request brought a bearer token that did not verify.
    pub async fn serve<B>(&self, edge: &Edge, request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let sent_bearer = (request.headers().get(http::header::AUTHORIZATION))
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.len() > 7 && value[..7].eq_ignore_ascii_case("bearer "));
        let mut response = self.answer(edge, request).await;
        let headers = response.headers_mut();
        if !headers.contains_key(http::header::CACHE_CONTROL) {
            headers.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
        }
        if response.status() == StatusCode::UNAUTHORIZED {
            let challenge = if sent_bearer {
                r#"Bearer realm="palisade", error="invalid_token""#
            } else {
                r#"Bearer realm="palisade""#
            };
            (response.headers_mut()).insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }

    async fn answer<B>(&self, edge: &Edge, request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        let (binding, bindings) = match self.router.find(&parts.method, parts.uri.path()) {
            Ok(found) => found,
            // grpc-gateway's routing errors: the HTTP status kept, the body a google.rpc.Status.
            Err(NoRoute::NotFound) => {
                let refusal = routing_error(StatusCode::NOT_FOUND, Code::NotFound);
                return self.refused(&parts, "not_found", refusal);
            }
            Err(NoRoute::MethodNotAllowed(allowed)) => {
                let mut refusal =
                    routing_error(StatusCode::METHOD_NOT_ALLOWED, Code::Unimplemented);
                // RFC 9110 §15.5.6: a 405 says which methods the resource takes.
                let allow = allowed
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                if let Ok(allow) = HeaderValue::from_str(&allow) {
                    refusal.headers_mut().insert(http::header::ALLOW, allow);
                }
                return self.refused(&parts, "method_not_allowed", refusal);
            }
            Err(NoRoute::MalformedValue(field)) => {
                let bad = ApiError::invalid(field, "has a bad percent-escape or is not UTF-8");
                return self.refused(&parts, "malformed_path", error_response(&Status::from(bad)));
            }
        };
        let client = whole_bodies::client_of(&parts.extensions);
        let read = edge.bodies().read(body, frames::MAX_MESSAGE, client).await;
        // Its share of the gateway's body budget is held until the call's answer has begun.
        let WholeBody {
            bytes: body,
            held: _held,
        } = match read {
            Ok(body) => body,
            Err(status) => return self.refused(&parts, "body", body_refusal(&status)),
        };
        let message = match transcode::request_message(
            &binding.input,
            &binding.body,
            binding.implied_mask.as_ref(),
            &bindings,
            parts.uri.query().unwrap_or(""),
            &body,
        ) {
            Ok(message) => message,
            Err(error) => {
                return self.refused(&parts, "bad_request", error_response(&Status::from(error)));
            }
        };
        let frame = frames::encode(0, &message);
        // Only the frame goes on: the JSON and the message it became are not kept for the call.
        drop((body, message));
        let mut request = Request::new(Body::new(http_body_util::Full::new(frame)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = binding
            .grpc_path
            .parse()
            .expect("a method path is a valid uri");
        *request.version_mut() = http::Version::HTTP_2;
        *request.headers_mut() = metadata::request_metadata(&parts.headers);
        if let Some(host) = parts.extensions.get::<ClientHost>() {
            request.extensions_mut().insert(host.clone());
        }
        if let Some(origin) = parts.extensions.get::<ClientOrigin>() {
            request.extensions_mut().insert(origin.clone());
        }
        let response = edge.grpc(request).await;
        respond(binding, response).await
    }

    /// `refusal`, counted by `reason` and logged as the access log logs a finished call: a
    /// request refused before it became a gRPC call is seen by neither. The path is cut short
    /// and the query left out (it may carry anything).
    fn refused(
        &self,
        request: &http::request::Parts,
        reason: &'static str,
        refusal: Response<Body>,
    ) -> Response<Body> {
        if let Some(refusals) = &self.refusals {
            refusals.inc(reason);
        }
        let request_id = (request.headers.get(HEADER_REQUEST_ID))
            .and_then(|id| id.to_str().ok())
            .unwrap_or_default();
        tracing::info!(
            target: "palisade::access",
            // An extension method may be any token, as long as the client likes.
            method = %palisade_grpc::echoed(request.method.as_str()),
            path = ?palisade_grpc::echoed(request.uri.path()),
            status = refusal.status().as_u16(),
            reason,
            request_id,
            "rest request refused"
        );
        refusal
    }
}

fn routing_error(http: StatusCode, code: Code) -> Response<Body> {
    let message = http.canonical_reason().unwrap_or_default();
    json_response(
        http,
        &json!({"code": code as i32, "message": message, "details": []}),
    )
}

/// The answer to a body [`BodyBudget::read`] refused. Two refusals are the client's doing, so
/// their HTTP statuses say so rather than grpc-gateway's: too large is 413, not 429 ("slow
/// down", which invites sending the same body again); too slow is 408, not 504. A spent budget
/// is the gateway's: UNAVAILABLE, 503.
///
/// [`BodyBudget::read`]: crate::whole_bodies::BodyBudget::read
fn body_refusal(status: &Status) -> Response<Body> {
    let mut response = error_response(status);
    match status.code() {
        Code::ResourceExhausted => *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE,
        Code::DeadlineExceeded => *response.status_mut() = StatusCode::REQUEST_TIMEOUT,
        _ => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
