//! The gateway: the mesh's one public port. It strips client-sent `palisade-*` metadata,
//! assigns a request id, authenticates API keys through identity, injects the tenant context,
//! and proxies native gRPC (unary and streaming) to the component that owns the method's proto
//! package over mTLS. It serves health and reflection for the whole mesh itself.

mod auth;
mod backends;
mod proxy;
mod server;

use std::{sync::Arc, time::Duration};

use palisade_grpc::{BoxError, MeshAddresses, Running};
use palisade_tls::MeshTls;
use tokio::net::TcpListener;

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
}

/// Serves the public port on `listener` until stopped.
pub async fn start(listener: TcpListener, config: GatewayConfig) -> Result<Running, BoxError> {
    let backends = backends::Backends::connect(&config.mesh, &config.tls)?;
    let verifier = auth::ApiKeyVerifier::new(backends.identity(), config.api_key_cache_ttl);
    let proxy = proxy::Proxy::new(Arc::new(backends), Arc::new(verifier)).await?;
    let local_addr = listener.local_addr()?;
    Ok(Running::spawn(
        COMPONENT,
        local_addr,
        move |shutdown| async move {
            server::serve(listener, proxy, shutdown.wait()).await;
            Ok(())
        },
    ))
}
