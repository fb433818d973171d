//! gRPC status → HTTP error, exactly as grpc-gateway maps it: the HTTP status from the
//! standard code table, and the body `{"code": <int>, "message": "...", "details": [Any…]}`,
//! i.e. `google.rpc.Status` in proto3 JSON, with each detail rendered with its `@type`.

use bytes::Bytes;
use http::{
    HeaderValue, Response, StatusCode,
    header::{CONTENT_TYPE, RETRY_AFTER},
};
use prost_reflect::{DynamicMessage, Value};
use tonic::{Code, Status, body::Body};
use tonic_types::StatusExt;

/// grpc-gateway's `HTTPStatusFromCode`.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        // Not in `http`'s list: nginx's "client closed request", which grpc-gateway uses.
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // grpc-gateway deliberately uses 400, not 412: the client must fix the state first.
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The `google.rpc.Status` JSON of `status`. Details come from `grpc-status-details-bin`;
/// code and message from `grpc-status`/`grpc-message`, which are authoritative.
pub fn status_json(status: &Status) -> serde_json::Value {
    let descriptor = palisade_proto::descriptor_pool()
        .get_message_by_name("google.rpc.Status")
        .expect("google.rpc.Status is in the descriptor set");
    let mut message = DynamicMessage::decode(descriptor.clone(), status.details())
        .unwrap_or_else(|_| DynamicMessage::new(descriptor.clone()));
    message.set_field_by_name("code", Value::I32(status.code() as i32));
    message.set_field_by_name("message", Value::String(status.message().to_owned()));
    // Written as answers are, as grpc-gateway renders errors with the same marshaler:
    // `code`, `message` and `details` are always there, and so is a detail's `"reason": ""`.
    let options = super::transcode::json_options();
    match message.serialize_with_options(serde_json::value::Serializer, &options) {
        Ok(json @ serde_json::Value::Object(_)) => json,
        other => {
            // A detail whose type the gateway does not know cannot be rendered as JSON;
            // the code and message still reach the client.
            tracing::warn!(error = ?other.err(), "dropping error details that cannot be rendered");
            serde_json::json!({
                "code": status.code() as i32,
                "message": status.message(),
                "details": [],
            })
        }
    }
}

/// The complete HTTP error response for `status`, with `Retry-After` when it says when to
/// retry.
pub fn error_response(status: &Status) -> Response<Body> {
    let response = json_response(http_status(status.code()), &status_json(status));
    with_retry_after(response, status)
}

/// The HTTP response of a server stream that failed before its first message, as
/// grpc-gateway answers it: the failure's status (and `Retry-After`), and the failure as the
/// stream's one line, `{"error": …}`.
pub fn stream_error_response(status: &Status) -> Response<Body> {
    let mut line = serde_json::to_vec(&serde_json::json!({ "error": status_json(status) }))
        .expect("a json value serializes");
    line.push(b'\n');
    let response = json_bytes_response(http_status(status.code()), line);
    with_retry_after(response, status)
}

fn with_retry_after(mut response: Response<Body>, status: &Status) -> Response<Body> {
    if let Some(seconds) = retry_after(status) {
        response.headers_mut().insert(RETRY_AFTER, seconds);
    }
    response
}

/// `Retry-After` for a status carrying `RetryInfo`: whole seconds, rounded up (HTTP has no
/// finer unit, and retrying early would only be refused again).
pub fn retry_after(status: &Status) -> Option<HeaderValue> {
    let delay = status.get_details_retry_info()?.retry_delay?;
    let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    Some(HeaderValue::from(seconds))
}

pub fn json_response(status: StatusCode, json: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(json).expect("a json value serializes");
    json_bytes_response(status, body)
}

fn json_bytes_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Body::new(http_body_util::Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use palisade_proto::google::rpc;
    use prost::Message;
    use serde_json::json;

    use super::*;

    /// A status with a `BadRequest` detail, as services send them.
    fn status_with_details(code: Code, message: &str) -> Status {
        let bad = rpc::BadRequest {
            field_violations: vec![rpc::bad_request::FieldViolation {
                field: "tenant.display_name".into(),
                description: "must not be empty".into(),
                ..Default::default()
            }],
        };
        let details = rpc::Status {
            code: code as i32,
            message: message.into(),
            details: vec![prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.BadRequest".into(),
                value: bad.encode_to_vec(),
            }],
        };
        Status::with_details(code, message, details.encode_to_vec().into())
    }

    #[test]
    fn every_code_maps_as_grpc_gateway_maps_it() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        assert_eq!(table.len(), 17);
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
            let body = status_json(&Status::new(code, "why"));
            assert_eq!(
                body,
                json!({"code": code as i32, "message": "why", "details": []}),
                "{code:?}"
            );
        }
    }

    #[test]
    fn retry_info_becomes_retry_after_in_whole_seconds() {
        let exhausted = |retry_after| {
            Status::from(palisade_grpc::ApiError::ResourceExhausted {
                reason: "RATE_LIMITED",
                message: "slow down".into(),
                subject: "tenants/acme".into(),
                description: "requests_per_second: 2".into(),
                retry_after,
            })
        };
        let response = error_response(&exhausted(Some(std::time::Duration::from_millis(1_200))));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        let exact = error_response(&exhausted(Some(std::time::Duration::from_secs(3))));
        assert_eq!(exact.headers()[RETRY_AFTER], "3");
        let never = error_response(&exhausted(None));
        assert!(never.headers().get(RETRY_AFTER).is_none());
        let body = status_json(&exhausted(Some(std::time::Duration::from_millis(500))));
        assert_eq!(
            body["details"][1]["@type"],
            "type.googleapis.com/google.rpc.QuotaFailure"
        );
    }

    #[test]
    fn details_are_rendered_as_any_with_their_type() {
        let status = status_with_details(Code::InvalidArgument, "invalid argument: x");
        assert_eq!(
            status_json(&status),
            json!({
                "code": 3,
                "message": "invalid argument: x",
                "details": [{
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [
                        // Defaults are sent, as in answers.
                        {"field": "tenant.display_name", "description": "must not be empty", "reason": ""}
                    ]
                }]
            })
        );
    }
}
