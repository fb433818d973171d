//! What arrives on the public port, told apart and sent down the one request path:
//! native gRPC (`application/grpc…`) goes to the proxy as it is; gRPC-Web
//! (`application/grpc-web…`) and REST/JSON (anything else) are translated into gRPC calls
//! and go through the same proxy, observed as the gRPC method they became. CORS preflights
//! are answered here, before any routing.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header::CONTENT_TYPE};
use palisade_grpc::ServerObserveLayer;
use palisade_tenancy::{ClientOrigin, HEADER_REQUEST_ID};
use tonic::body::Body;
use tower::{Layer, ServiceExt};

use crate::{
    backends::Backends,
    cors::Cors,
    forwarded::TrustedProxies,
    proxy::{Proxy, request_id},
    rest::Rest,
    tenants::{ClientHost, request_host},
    web,
    whole_bodies::BodyBudget,
};

/// The public port's service; cheap to clone (one per connection).
#[derive(Clone)]
pub struct Edge {
    proxy: Proxy,
    observe: ServerObserveLayer,
    rest: Arc<Rest>,
    cors: Arc<Cors>,
    /// The OpenAPI document, served at [`OPENAPI_PATH`].
    openapi: Bytes,
    /// The address of the client on this connection (see [`Edge::for_peer`]).
    peer: Option<std::net::IpAddr>,
    /// Peers believed about the client behind them.
    trusted_proxies: Arc<TrustedProxies>,
    /// What REST and gRPC-Web text bodies read whole may hold at once, across workers.
    bodies: BodyBudget,
}

/// Where the OpenAPI document of the REST API is served, without a credential.
pub const OPENAPI_PATH: &str = "/openapi.json";

impl Edge {
    pub fn new(
        proxy: Proxy,
        observe: ServerObserveLayer,
        rest: Arc<Rest>,
        cors: Arc<Cors>,
        openapi: Bytes,
        trusted_proxies: Arc<TrustedProxies>,
        bodies: BodyBudget,
    ) -> Edge {
        Edge {
            proxy,
            observe,
            rest,
            cors,
            openapi,
            peer: None,
            trusted_proxies,
            bodies,
        }
    }

    /// The same edge, proxying over `backends` (a connection worker's own).
    pub fn with_backends(&self, backends: Arc<Backends>) -> Edge {
        Edge {
            proxy: self.proxy.with_backends(backends),
            ..self.clone()
        }
    }

    /// The service for one accepted connection: calls on it record where they came from.
    pub fn for_peer(&self, peer: std::net::SocketAddr) -> Edge {
        Edge {
            peer: Some(peer.ip()),
            ..self.clone()
        }
    }

    /// The budget of bodies read whole, which every worker's clone shares.
    pub fn bodies(&self) -> &BodyBudget {
        &self.bodies
    }

    /// One gRPC call through the proxy, observed (span, metrics) as that call.
    pub async fn grpc<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let response = self
            .observe
            .layer(self.proxy.clone())
            .oneshot(request)
            .await;
        response.unwrap_or_else(|never: Infallible| match never {})
    }

    fn openapi_response(&self) -> Response<Body> {
        let mut response =
            Response::new(Body::new(http_body_util::Full::new(self.openapi.clone())));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    async fn handle<B>(self, mut request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Audit events record where a call came from, and public calls are limited per
        // client address; translation keeps extensions.
        let client = self
            .peer
            .map(|peer| self.trusted_proxies.client(peer, request.headers()));
        let origin = ClientOrigin {
            ip: client.map(|ip| ip.to_string()),
            user_agent: request
                .headers()
                .get(http::header::USER_AGENT)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
        };
        request.extensions_mut().insert(origin);
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        // Answered as any other response below, so a browser can read it (CORS).
        let refusal = web::Mode::refuse_unsupported(content_type);
        let web = web::Mode::of(content_type);
        // Media types are case-insensitive (RFC 9110 8.3.1), as `web::Mode::of` reads them.
        let grpc =
            (content_type.get(..16)).is_some_and(|t| t.eq_ignore_ascii_case("application/grpc"));
        if refusal.is_none() && web.is_none() && grpc {
            return self.grpc(request).await;
        }
        let origin = self.cors.allowed_origin(request.headers());
        if let Some(answer) =
            self.cors
                .preflight(request.method(), request.headers(), origin.as_ref())
        {
            return answer;
        }
        // Fixed here, before translation, so that errors found while translating carry the
        // same id as the call the proxy would have made.
        let id = request_id(request.headers());
        let id = HeaderValue::from_str(&id.0).expect("request ids are visible ascii");
        request.headers_mut().insert(HEADER_REQUEST_ID, id.clone());
        // Translation loses `Host`; the proxy resolves public calls' tenant from it.
        if let Some(host) = request_host(&request).map(str::to_owned) {
            request.extensions_mut().insert(ClientHost(host));
        }
        let head = request.method() == http::Method::HEAD;
        let mut response = match (refusal, web) {
            (Some(refusal), _) => refusal,
            (None, Some(mode)) => web::serve(&self, request, mode).await,
            (None, None)
                if matches!(*request.method(), http::Method::GET | http::Method::HEAD)
                    && request.uri().path() == OPENAPI_PATH =>
            {
                self.openapi_response()
            }
            (None, None) => self.rest.serve(&self, request).await,
        };
        response.headers_mut().insert(HEADER_REQUEST_ID, id);
        self.cors.decorate(origin, response.headers_mut());
        if head {
            // A HEAD answer has no content (RFC 9110 §9.3.2). HTTP/1.1 drops it on the wire,
            // but HTTP/2 would send it as DATA, which a client must treat as an error.
            let (parts, _content) = response.into_parts();
            return Response::from_parts(parts, Body::empty());
        }
        response
    }
}

impl<B> tower::Service<Request<B>> for Edge
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}
