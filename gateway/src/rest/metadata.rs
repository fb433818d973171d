//! gRPC metadata ⇄ HTTP headers for REST, as grpc-gateway passes them: a client's
//! `Grpc-Metadata-<key>` header becomes request metadata `<key>`; a backend's custom response
//! metadata comes back as `Grpc-Metadata-<key>` (from its headers) and `Grpc-Trailer-<key>`
//! (from its trailers). gRPC's own keys, HTTP's connection headers and the mesh's `palisade-*`
//! context never cross in either direction.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The prefix of header metadata on the HTTP side (grpc-gateway's `MetadataHeaderPrefix`).
pub const HEADER_PREFIX: &str = "grpc-metadata-";
/// The prefix of trailer metadata on the HTTP side (grpc-gateway's `MetadataTrailerPrefix`).
pub const TRAILER_PREFIX: &str = "grpc-trailer-";

/// Keys that belong to the transport, not to the application: gRPC's framing (`content-type`,
/// `te`) and HTTP's connection-level headers (an HTTP/2 connection header would even break the
/// call), plus what the HTTP server sets itself (`date`).
const TRANSPORT: [&str; 11] = [
    "content-type",
    "content-length",
    "te",
    "trailer",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "date",
];

/// Whether `key` is application metadata that may cross the gateway: not gRPC's own
/// (`grpc-*`), not a transport header, not the mesh's tenant context (`palisade-*`), which
/// only the gateway writes and only components read.
fn is_custom(key: &str) -> bool {
    !(key.starts_with("grpc-") || key.starts_with("palisade-") || TRANSPORT.contains(&key))
}

/// The gRPC metadata of a REST call: the credential and tracing headers as they are, and
/// `Grpc-Metadata-<name>` as `<name>` (the proxy then strips `palisade-*` again, whichever way
/// it came, so this is not the only wall). A header passed under its own name and given so
/// wins over its `Grpc-Metadata-` form: `Grpc-Metadata-X-Request-Id` beside the gateway's
/// `x-request-id` would give the call two ids, the component's log one and the client's
/// answer the other. Alone, the `Grpc-Metadata-` form stands for the header, as with
/// grpc-gateway.
pub fn request_metadata(rest: &HeaderMap) -> HeaderMap {
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
        } else if let Some(key) = name.as_str().strip_prefix(HEADER_PREFIX)
            && is_custom(key)
            && !(PASSED.contains(&key) && rest.contains_key(key))
            && let Ok(key) = HeaderName::from_bytes(key.as_bytes())
        {
            headers.append(key, value.clone());
        }
    }
    headers
}

/// Adds a backend's custom metadata from `grpc` (its response headers or trailers) to the
/// REST response's `headers`, each key under `prefix`. `x-request-id` is not metadata here:
/// the gateway answers it under its own name on every response.
pub fn forward_response(grpc: &HeaderMap, prefix: &str, headers: &mut HeaderMap) {
    for (name, value) in grpc {
        let key = name.as_str();
        if !is_custom(key) || key == palisade_tenancy::HEADER_REQUEST_ID {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(format!("{prefix}{key}").as_bytes()) {
            headers.append(name, value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn custom_response_metadata_comes_back_prefixed_and_the_rest_stays_behind() {
        let grpc = map(&[
            ("content-type", "application/grpc"),
            ("date", "Tue, 14 Apr 2026 10:00:00 GMT"),
            ("grpc-status", "0"),
            ("grpc-accept-encoding", "gzip"),
            ("palisade-tenant-id", "acme"),
            ("x-request-id", "r-1"),
            ("x-cache", "hit"),
            ("x-cache", "fresh"),
            ("trace-bin", "AAEC"),
        ]);
        let mut headers = HeaderMap::new();
        forward_response(&grpc, HEADER_PREFIX, &mut headers);
        assert_eq!(
            names(&headers),
            ["grpc-metadata-trace-bin", "grpc-metadata-x-cache"]
        );
        let values: Vec<_> = headers.get_all("grpc-metadata-x-cache").iter().collect();
        assert_eq!(values, ["hit", "fresh"]);
        // Binary metadata stays base64, as it travels in gRPC.
        assert_eq!(headers["grpc-metadata-trace-bin"], "AAEC");

        let mut headers = HeaderMap::new();
        forward_response(&map(&[("x-cost", "3")]), TRAILER_PREFIX, &mut headers);
        assert_eq!(names(&headers), ["grpc-trailer-x-cost"]);
    }

    #[test]
    fn client_metadata_headers_become_metadata_but_never_grpc_transport_or_context_keys() {
        let rest = map(&[
            ("authorization", "ApiKey k"),
            ("grpc-metadata-x-client", "cli"),
            ("grpc-metadata-palisade-tenant-id", "forged"),
            ("grpc-metadata-grpc-timeout", "1S"),
            ("grpc-metadata-connection", "close"),
            ("grpc-metadata-content-type", "application/grpc+proto"),
            ("cookie", "not metadata"),
        ]);
        let grpc = request_metadata(&rest);
        assert_eq!(
            names(&grpc),
            ["authorization", "content-type", "te", "x-client"]
        );
        assert_eq!(grpc["content-type"], "application/grpc");
    }

    #[test]
    fn a_header_passed_by_its_own_name_wins_over_its_metadata_header_form() {
        let rest = map(&[
            ("x-request-id", "edge-1"),
            ("grpc-metadata-x-request-id", "forged"),
            ("grpc-metadata-authorization", "ApiKey alone"),
        ]);
        let grpc = request_metadata(&rest);
        let ids: Vec<_> = grpc.get_all("x-request-id").iter().collect();
        assert_eq!(ids, ["edge-1"]);
        assert_eq!(grpc["authorization"], "ApiKey alone");
        assert_eq!(
            names(&grpc),
            ["authorization", "content-type", "te", "x-request-id"]
        );
    }
}
