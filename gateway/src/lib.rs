//! The gateway: the mesh's one public port. It strips client-sent `palisade-*` metadata,
//! assigns a request id, authenticates API keys through identity, injects the tenant context,
//! and proxies native gRPC (unary and streaming) to the component that owns the method's proto
//! package over mTLS. REST/JSON (from the `google.api.http` rules) and gRPC-Web (binary and
//! text) on the same port are translated into gRPC calls down that same path. It serves health
//! and reflection for the whole mesh itself.

mod auth;
mod backends;
mod cors;
mod edge;
pub mod frames;
pub mod fuzzing;
mod proxy;
mod public_tls;
pub mod rest;
mod server;
pub mod web;

use std::{path::PathBuf, sync::Arc, time::Duration};

use palisade_grpc::{
    BoxError, ComponentKit, Listeners, MeshAddresses, Running, ServerObserveLayer,
};
use palisade_tls::MeshTls;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub const COMPONENT: &str = "gateway";

/// What the gateway needs to run.
#[derive(Clone)]
pub struct GatewayConfig {
    /// The gateway's mesh certificate, used for its calls into the mesh.
    pub tls: MeshTls,
    pub mesh: MeshAddresses,
    /// How long a verified API key is trusted without asking identity again; a revoked key
    /// keeps working for at most this long.
    pub api_key_cache_ttl: Duration,
    /// Origins (`https://app.example.com`, or `*`) whose browser scripts may call REST and
    /// gRPC-Web; empty means no CORS headers at all.
    pub cors_allowed_origins: Vec<String>,
    /// A PEM certificate chain and key for TLS on the public port (ALPN `h2` and `http/1.1`);
    /// `None` serves h2c and plain HTTP/1.1.
    pub public_tls: Option<(PathBuf, PathBuf)>,
}

/// Serves the public port until stopped. Readiness follows identity, without which no
/// credential can be verified.
pub async fn start(listeners: Listeners, config: GatewayConfig) -> Result<Running, BoxError> {
    // First, so that a bad certificate stops the start before anything runs.
    let public_tls = match &config.public_tls {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(public_tls::server_config(
            cert, key,
        )?)),
        None => None,
    };
    let mut kit = ComponentKit::start(COMPONENT, config.tls.clone(), listeners.admin);
    let backends = backends::Backends::connect(&config.mesh, &kit)?;
    let identity = backends.identity();
    let verifier = auth::ApiKeyVerifier::new(backends.identity(), config.api_key_cache_ttl);
    let (proxy, serving) = proxy::Proxy::new(Arc::new(backends), Arc::new(verifier)).await?;
    kit.watch_readiness(serving, move || {
        let mut health = HealthClient::new(identity.clone());
        async move {
            match health.check(HealthCheckRequest::default()).await {
                Ok(answer) if answer.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
                Ok(_) => Err("identity is not serving".to_owned()),
                Err(status) => Err(format!("identity unreachable: {}", status.message())),
            }
        }
    });
    let observe = ServerObserveLayer::new(COMPONENT, kit.metrics.rpc.server.clone())
        .counting_tenants(Arc::new(kit.metrics.clone()));
    let rest = rest::Rest::from_pool(palisade_proto::descriptor_pool())?;
    tracing::debug!(routes = rest.route_count(), "rest routes built");
    let openapi = rest::openapi::document(
        palisade_proto::descriptor_pool(),
        &palisade_grpc::MethodPolicies::palisade()?,
    )?;
    let openapi = bytes::Bytes::from(serde_json::to_vec(&openapi)?);
    let cors = cors::Cors::new(&config.cors_allowed_origins);
    let edge = edge::Edge::new(proxy, observe, Arc::new(rest), Arc::new(cors), openapi);
    let listener = listeners.grpc;
    let local_addr = listener.local_addr()?;
    Ok(Running::spawn(
        COMPONENT,
        local_addr,
        move |shutdown| async move {
            server::serve(listener, edge, public_tls, shutdown.wait()).await;
            kit.stop();
            Ok(())
        },
    ))
}
