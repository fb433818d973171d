//! Context accepted by the server layer is carried on calls the handler makes, and refused when
//! an untrusted peer asserts it.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use http::{HeaderMap, Request, Response};
use palisade_tenancy::{PropagateContext, TenantContextLayer, TrustPolicy};
use palisade_tls::{PeerIdentity, SpiffeId};
use tonic::body::Body;
use tower::{Layer, ServiceExt, service_fn};

fn request_from(peer: &str, headers: &[(&'static str, &str)]) -> Request<Body> {
    let mut request = Request::new(Body::empty());
    for (key, value) in headers {
        request.headers_mut().insert(*key, value.parse().unwrap());
    }
    let spiffe_id = Some(SpiffeId::parse(peer).unwrap());
    request.extensions_mut().insert(PeerIdentity {
        remote_addr: None,
        spiffe_id,
    });
    request
}

/// A server whose handler makes one outgoing call and records the headers it carried.
async fn call_through(request: Request<Body>) -> (Response<Body>, Option<HeaderMap>) {
    call_through_with(request, &[]).await
}

/// As [`call_through`], the handler's outgoing call carrying `outgoing` headers of its own.
async fn call_through_with(
    request: Request<Body>,
    outgoing_headers: &'static [(&'static str, &'static str)],
) -> (Response<Body>, Option<HeaderMap>) {
    let seen = Arc::new(Mutex::new(None));
    let outgoing = {
        let seen = seen.clone();
        PropagateContext::new(service_fn(move |request: Request<Body>| {
            *seen.lock().unwrap() = Some(request.headers().clone());
            async { Ok::<_, Infallible>(Response::new(Body::empty())) }
        }))
    };
    let handler = service_fn(move |_request: Request<Body>| {
        let outgoing = outgoing.clone();
        async move {
            let mut request = Request::new(Body::empty());
            for (key, value) in outgoing_headers {
                request.headers_mut().insert(*key, value.parse().unwrap());
            }
            outgoing.oneshot(request).await
        }
    });
    let server = TenantContextLayer::new(TrustPolicy::mesh("palisade.local")).layer(handler);
    let response = server.oneshot(request).await.unwrap();
    let headers = seen.lock().unwrap().take();
    (response, headers)
}

#[tokio::test]
async fn context_from_the_gateway_rides_along_on_outgoing_calls() {
    let request = request_from(
        "spiffe://palisade.local/component/gateway",
        &[
            ("palisade-tenant-id", "acme"),
            ("palisade-principal-id", "key-1"),
            ("palisade-principal-type", "api-key"),
            ("x-request-id", "req-42"),
        ],
    );
    let (_, headers) = call_through(request).await;
    let headers = headers.expect("the handler called out");
    assert_eq!(headers["palisade-tenant-id"], "acme");
    assert_eq!(headers["palisade-principal-id"], "key-1");
    assert_eq!(headers["palisade-principal-type"], "api-key");
    assert_eq!(headers["x-request-id"], "req-42");
}

/// A handler that states another tenant context for its outgoing call keeps that context, and
/// the call still carries the request's id and client origin.
#[tokio::test]
async fn a_context_set_by_the_caller_keeps_the_request_id_and_origin() {
    let request = request_from(
        "spiffe://palisade.local/component/gateway",
        &[
            ("palisade-tenant-id", "acme"),
            ("palisade-principal-id", "key-1"),
            ("palisade-principal-type", "api-key"),
            ("palisade-client-ip", "203.0.113.7"),
            ("x-request-id", "req-42"),
        ],
    );
    let (_, headers) = call_through_with(request, &[("palisade-tenant-id", "system")]).await;
    let headers = headers.expect("the handler called out");
    assert_eq!(headers["palisade-tenant-id"], "system");
    assert!(!headers.contains_key("palisade-principal-id"));
    assert_eq!(headers["x-request-id"], "req-42");
    assert_eq!(headers["palisade-client-ip"], "203.0.113.7");
}

#[tokio::test]
async fn calls_without_context_still_carry_a_request_id() {
    let (_, headers) = call_through(request_from(
        "spiffe://palisade.local/component/compliance",
        &[],
    ))
    .await;
    let headers = headers.expect("the handler called out");
    assert!(!headers.contains_key("palisade-tenant-id"));
    assert!(!headers["x-request-id"].is_empty());
}

#[tokio::test]
async fn untrusted_peers_are_refused_before_the_handler_runs() {
    let request = request_from(
        "spiffe://palisade.local/workload/batch",
        &[("palisade-tenant-id", "acme")],
    );
    let (response, headers) = call_through(request).await;
    assert!(headers.is_none(), "the handler must not run");
    assert_eq!(response.headers()["grpc-status"], "7");
}
