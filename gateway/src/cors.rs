//! CORS for browsers calling REST or gRPC-Web from another origin, configured per deployment
//! (`cors_allowed_origins`; empty = no CORS headers at all, so browsers stay same-origin).

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use tonic::body::Body;

/// Headers a browser script may always read from a response: the call's status and the
/// request id. The response's own metadata headers are added per response (see
/// [`Cors::decorate`]).
const EXPOSED: &str =
    "grpc-status, grpc-message, grpc-status-details-bin, x-request-id, retry-after";
/// The methods the REST routes and gRPC-Web use (no route takes PUT).
const METHODS: &str = "GET, HEAD, POST, PATCH, DELETE, OPTIONS";
const ALLOWED_HEADERS: &str = "authorization, x-api-key, content-type, x-grpc-web, x-user-agent, \
                               grpc-timeout, x-request-id, traceparent, tracestate";
/// How long a browser may cache a preflight answer, in seconds.
const MAX_AGE: &str = "600";

#[derive(Debug, Default)]
pub struct Cors {
    origins: Vec<String>,
}

impl Cors {
    /// `origins` are exact origins (`https://app.example.com`) or `*` for any.
    pub fn new(origins: &[String]) -> Cors {
        Cors {
            origins: origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
        }
    }

    /// The request's `Origin`, if it is allowed (echoed rather than `*`, so the answer is
    /// right also for credentialed requests).
    pub fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|allowed| allowed == "*" || allowed == text)
            .then(|| origin.clone())
    }

    /// The answer to a preflight `OPTIONS` from an allowed origin; `None` for anything else.
    pub fn preflight(
        &self,
        method: &Method,
        headers: &HeaderMap,
        origin: Option<&HeaderValue>,
    ) -> Option<Response<Body>> {
        let origin = origin?;
        if method != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(METHODS),
        );
        let requested = headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static(ALLOWED_HEADERS));
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE),
        );
        // The answer echoes the requested headers: a cache must key on them too.
        out.insert(
            header::VARY,
            HeaderValue::from_static(
                "origin, access-control-request-method, access-control-request-headers",
            ),
        );
        Some(response)
    }

    /// Marks an actual response as readable by `origin`, with its metadata: the response
    /// metadata a component sent (`Grpc-Metadata-*` over REST, plain names over gRPC-Web) is
    /// readable too, as it would be to a client that is not a browser.
    /// Where CORS is on, every answer varies on `Origin`, also one for an origin that is not
    /// allowed, so that a shared cache never hands it to an allowed origin or the reverse.
    pub fn decorate(&self, origin: Option<HeaderValue>, headers: &mut HeaderMap) {
        if self.origins.is_empty() {
            return;
        }
        headers.append(header::VARY, HeaderValue::from_static("origin"));
        let Some(origin) = origin else {
            return;
        };
        let mut exposed = EXPOSED.to_owned();
        for name in headers.keys() {
            if !is_transport_header(name) && !EXPOSED.split(", ").any(|e| e == name.as_str()) {
                exposed.push_str(", ");
                exposed.push_str(name.as_str());
            }
        }
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if let Ok(exposed) = HeaderValue::from_str(&exposed) {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, exposed);
        }
    }
}

/// Headers about the HTTP exchange itself rather than the call's metadata: browsers expose the
/// safelisted ones anyway, and the rest are none of a script's business.
fn is_transport_header(name: &header::HeaderName) -> bool {
    [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::CONTENT_LANGUAGE,
        header::CACHE_CONTROL,
        header::DATE,
        header::EXPIRES,
        header::LAST_MODIFIED,
        header::PRAGMA,
        header::SERVER,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
        header::VARY,
    ]
    .contains(name)
        || name.as_str().starts_with("access-control-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origin(origin: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, origin.parse().unwrap());
        headers
    }

    #[test]
    fn only_listed_origins_are_allowed() {
        let cors = Cors::new(&["https://app.example.com/".to_owned()]);
        assert!(
            cors.allowed_origin(&with_origin("https://app.example.com"))
                .is_some()
        );
        assert!(
            cors.allowed_origin(&with_origin("https://evil.example.com"))
                .is_none()
        );
        assert!(cors.allowed_origin(&HeaderMap::new()).is_none());
        let none = Cors::new(&[]);
        assert!(
            none.allowed_origin(&with_origin("https://app.example.com"))
                .is_none()
        );
        let any = Cors::new(&["*".to_owned()]);
        assert!(
            any.allowed_origin(&with_origin("http://localhost:3000"))
                .is_some()
        );
    }

    #[test]
    fn responses_expose_their_metadata_but_not_transport_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        headers.insert("grpc-metadata-palisade-page", "2".parse().unwrap());
        headers.insert("x-request-id", "r-1".parse().unwrap());
        headers.insert("custom-bin", "AAEC".parse().unwrap());
        let cors = Cors::new(&["https://app.example.com".to_owned()]);
        cors.decorate(
            Some("https://app.example.com".parse().unwrap()),
            &mut headers,
        );
        let exposed = headers[header::ACCESS_CONTROL_EXPOSE_HEADERS]
            .to_str()
            .unwrap();
        let names: Vec<&str> = exposed.split(", ").collect();
        assert!(names.contains(&"grpc-metadata-palisade-page"), "{exposed}");
        assert!(names.contains(&"custom-bin"), "{exposed}");
        assert!(names.contains(&"grpc-status"), "{exposed}");
        assert_eq!(names.iter().filter(|n| **n == "x-request-id").count(), 1);
        assert!(!names.contains(&"content-type"), "{exposed}");

        // An origin that is not allowed reads nothing, but the answer still varies on it.
        let mut refused = HeaderMap::new();
        cors.decorate(None, &mut refused);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[header::VARY], "origin");
        // Without CORS, nothing is added.
        let mut untouched = HeaderMap::new();
        Cors::new(&[]).decorate(None, &mut untouched);
        assert!(untouched.is_empty());
    }
}
