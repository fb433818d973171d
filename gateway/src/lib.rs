//! The gateway: the mesh's one public port. It strips client-sent `palisade-*` metadata,
//! assigns a request id, authenticates API keys through identity, enforces each tenant's state,
//! rate limit and monthly quota, injects the tenant context (for public calls, the tenant the
//! host name names), and proxies native gRPC (unary and streaming) to the component that owns the method's proto
//! package over mTLS. REST/JSON (from the `google.api.http` rules) and gRPC-Web (binary and
//! text) on the same port are translated into gRPC calls down that same path. It serves health
//! and reflection for the whole mesh itself.

mod access_tokens;
mod address_caps;
mod auth;
mod backends;
mod cors;
mod deadline;
mod edge;
mod forwarded;
pub mod frames;
pub mod fuzzing;
mod idle;
mod jwks;
mod limits;
mod lookups;
mod message_limit;
mod proxy;
mod public_tls;
mod response_end;
pub mod rest;
mod server;
mod sharded;
mod tenants;
#[cfg(test)]
mod test_identity;
mod usage;
pub mod web;
mod web_text;
mod whole_bodies;
mod workers;

use std::{path::PathBuf, sync::Arc, time::Duration};

use palisade_grpc::{
    BoxError, ComponentKit, Listeners, MeshAddresses, Running, ServerObserveLayer,
};
use palisade_tls::MeshTls;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub use address_caps::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS;
pub use forwarded::IpBlock;

pub const COMPONENT: &str = "gateway";

/// The deadline of a unary call whose client sets none: long enough for any unary RPC of the
/// mesh, short enough that a stuck backend frees the caller (Envoy's default route timeout is
/// 15 s). A client that needs longer sends its own `grpc-timeout`.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// How long a public connection may stay with nothing happening on it before it is closed
/// (`idle.rs`); nginx closes idle HTTP/2 connections after 3 minutes, Envoy after an hour.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How many public calls (`Login`, `RefreshToken`, ...) one client address may make:
/// `per_second` on average, `burst` at once. A public call with a credential pays its tenant's
/// rate as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicCallRate {
    pub per_second: u32,
    pub burst: u32,
}

impl PublicCallRate {
    /// Far above what a person signing in needs, low enough that one client cannot keep
    /// identity's password hashing busy for everyone else.
    pub const DEFAULT: PublicCallRate = PublicCallRate {
        per_second: 20,
        burst: 100,
    };
}

/// What the gateway needs to run.
#[derive(Clone)]
pub struct GatewayConfig {
    /// The gateway's mesh certificate, used for its calls into the mesh.
    pub tls: MeshTls,
    pub mesh: MeshAddresses,
    /// How long a verified API key is trusted without asking identity again; a revoked key
    /// keeps working for at most this long.
    pub api_key_cache_ttl: Duration,
    /// How often identity's JWKS is fetched: a signing key identity stops publishing stops
    /// verifying tokens here within about this long.
    pub jwks_refresh: Duration,
    /// The deadline of a unary call whose client sends no `grpc-timeout` (a client's own
    /// deadline wins, longer or shorter; streaming calls have none by default).
    pub default_deadline: Duration,
    /// How long a public connection may stay with nothing happening on it before it is closed.
    pub idle_timeout: Duration,
    /// Origins (`https://app.example.com`, or `*`) whose browser scripts may call REST and
    /// gRPC-Web; empty means no CORS headers at all.
    pub cors_allowed_origins: Vec<String>,
    /// A PEM certificate chain and key for TLS on the public port (ALPN `h2` and `http/1.1`);
    /// `None` serves h2c and plain HTTP/1.1.
    pub public_tls: Option<(PathBuf, PathBuf)>,
    /// How long identity's answer about a tenant (state, limits, usage) is trusted: a suspended
    /// tenant's credentials keep working for at most this long, or up to 30 s more while
    /// identity cannot answer (see `tenants.rs`).
    pub tenant_cache_ttl: Duration,
    /// With `tenants.example.com`, a public call to `acme.tenants.example.com` is made in
    /// tenant `acme` (besides tenants' own domains, which always work).
    pub tenant_base_domain: Option<String>,
    /// Connection workers (threads, each serving its connections on a runtime of its own);
    /// 0 means one per available core.
    pub workers: usize,
    /// The rate of public calls each client address may make, credential or not; `None`
    /// is unlimited (behind a proxy that hides clients' addresses, all share one rate).
    pub public_call_rate: Option<PublicCallRate>,
    /// Proxies in front of the gateway (load balancers) whose `X-Forwarded-For` names the
    /// client; a client's own address otherwise, whatever it sends.
    pub trusted_proxies: Vec<IpBlock>,
    /// Open connections one client address (IPv6: /64) may hold; trusted proxies are not
    /// capped; 0 is no cap.
    pub max_connections_per_address: usize,
}

/// Serves the public port until stopped. Readiness follows identity, without which no
/// credential can be verified.
pub async fn start(listeners: Listeners, config: GatewayConfig) -> Result<Running, BoxError> {
    // First, so that a bad certificate stops the start before anything runs.
    let public_tls = match &config.public_tls {
        Some((cert, key)) => Some(public_tls::PublicTls::load(cert.clone(), key.clone())?),
        None => None,
    };
    let mut kit = ComponentKit::start(COMPONENT, config.tls.clone(), listeners.admin);
    // The gateway's own calls to identity; proxied calls use each worker's backends.
    let backends = backends::Backends::connect(&config.mesh, &config.tls, &kit.metrics)?;
    let identity = backends.identity();
    let verifier = auth::ApiKeyVerifier::new(
        backends.identity(),
        config.api_key_cache_ttl,
        config.jwks_refresh,
    );
    let usage = Arc::new(usage::UsageMeter::new(backends.identity()));
    let throttled = kit.metrics.labeled_counter(
        "palisade_gateway_throttled",
        "Calls the gateway refused for their tenant's state, rate or monthly quota or their \
         client's rate, connections over their address's cap, and request bodies over the \
         memory for bodies read whole, by reason",
        "reason",
    );
    let limits = proxy::TenantLimits {
        directory: tenants::TenantDirectory::new(
            backends.identity(),
            config.tenant_cache_ttl,
            config.tenant_base_domain.as_deref(),
        ),
        rates: limits::RateLimiter::for_tenants(),
        public_rate: config.public_call_rate.map(|rate| limits::Rate {
            per_second: f64::from(rate.per_second),
            burst: f64::from(rate.burst.max(1)),
        }),
        clients: limits::RateLimiter::for_clients(),
        token_verifications: limits::RateLimiter::for_clients(),
        usage: usage.clone(),
        throttled: throttled.clone(),
    };
    let (stop_usage, usage_stopped) = tokio::sync::oneshot::channel::<()>();
    let usage_reports = tokio::spawn(usage.run(async {
        let _ = usage_stopped.await;
    }));
    let (proxy, serving) = proxy::Proxy::new(
        Arc::new(backends),
        Arc::new(verifier),
        Arc::new(limits),
        config.default_deadline,
    )
    .await?;
    kit.watch_readiness(serving.clone(), move || {
        let mut health = HealthClient::new(identity.clone());
        async move {
            match health.check(HealthCheckRequest::default()).await {
                Ok(answer) if answer.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
                Ok(_) => Err("identity is not serving".to_owned()),
                Err(status) => Err(format!("identity unreachable: {}", status.message())),
            }
        }
    })
    .await;
    let observe = ServerObserveLayer::new(COMPONENT, kit.metrics.rpc.server.clone())
        .counting_tenants(Arc::new(kit.metrics.clone()))
        .logging_access();
    let rest = rest::Rest::from_pool(palisade_proto::descriptor_pool())?.counting_refusals(
        kit.metrics.labeled_counter(
            "palisade_gateway_rest_refused",
            "REST requests refused before they became a gRPC call (no route, wrong method, \
             a malformed path, body or query), by reason",
            "reason",
        ),
    );
    tracing::debug!(routes = rest.route_count(), "rest routes built");
    let openapi = rest::openapi::document(
        palisade_proto::descriptor_pool(),
        &palisade_grpc::MethodPolicies::palisade()?,
    )?;
    let openapi = bytes::Bytes::from(serde_json::to_vec(&openapi)?);
    let cors = cors::Cors::new(&config.cors_allowed_origins);
    let trusted_proxies = Arc::new(forwarded::TrustedProxies::new(
        config.trusted_proxies.clone(),
    ));
    let bodies = whole_bodies::BodyBudget::new(
        whole_bodies::BODY_BUDGET_BYTES,
        whole_bodies::CLIENT_SHARE_BYTES,
        throttled.clone(),
    );
    let address_caps = address_caps::AddressCaps::new(
        config.max_connections_per_address,
        trusted_proxies.clone(),
        throttled,
    );
    let edge = edge::Edge::new(
        proxy,
        observe,
        Arc::new(rest),
        Arc::new(cors),
        openapi,
        trusted_proxies,
        bodies,
    );
    let (mesh, tls, metrics) = (config.mesh, config.tls, kit.metrics.clone());
    let workers = workers::Workers::start(
        config.workers,
        config.idle_timeout,
        || {
            let backends = backends::Backends::connect(&mesh, &tls, &metrics)?;
            Ok(edge.with_backends(Arc::new(backends)))
        },
        public_tls,
    )?;
    let listener = listeners.grpc;
    let local_addr = listener.local_addr()?;
    Ok(Running::spawn(
        COMPONENT,
        local_addr,
        move |shutdown| async move {
            let draining = kit.draining_after(shutdown.wait());
            let shutdown = async {
                draining.await;
                serving.drain().await;
            };
            server::serve(listener, workers, address_caps, shutdown).await;
            // The calls served are counted; report the last of them before going.
            let _ = stop_usage.send(());
            let _ = usage_reports.await;
            kit.stop().await;
            Ok(())
        },
    ))
}
