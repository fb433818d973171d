//! The observability service. For now: the status page, built from standard `grpc.health.v1`
//! probes of every component — over mTLS for the mesh components, over the public port for
//! the gateway (the path real clients take).

mod probe;
mod status;

use std::sync::Arc;

use palisade_grpc::{
    BoxError, ComponentKit, Listeners, MeshAddresses, MeshServer, RemoteAuthorizer, Running,
};
use palisade_proto::palisade::observability::v1::status_service_server::StatusServiceServer;
use palisade_tls::MeshTls;
use tonic::codec::CompressionEncoding::Gzip;

pub const COMPONENT: &str = "observability";

const AUTHZ_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// What the observability service needs to run.
#[derive(Clone)]
pub struct ObservabilityConfig {
    pub tls: MeshTls,
    pub mesh: MeshAddresses,
}

/// Serves on `listener` until stopped.
pub async fn start(listeners: Listeners, config: ObservabilityConfig) -> Result<Running, BoxError> {
    // No database of its own: ready whenever it runs (the prober reports on the others).
    let kit = ComponentKit::start(COMPONENT, config.tls.clone(), listeners.admin);
    let identity = kit.channel(&config.mesh.identity, "identity")?;
    let authorizer = Arc::new(RemoteAuthorizer::new(identity, AUTHZ_CACHE_TTL));
    let prober = probe::Prober::for_mesh(&config.mesh, &config.tls)?;
    let server = MeshServer::new(
        COMPONENT,
        config.tls.clone(),
        authorizer,
        kit.metrics.clone(),
    )?
    .add_service(
        StatusServiceServer::new(status::StatusApi::new(prober))
            .accept_compressed(Gzip)
            .send_compressed(Gzip),
    );
    let listener = listeners.grpc;
    let local_addr = listener.local_addr()?;
    Ok(Running::spawn(
        COMPONENT,
        local_addr,
        move |shutdown| async move {
            let (_health, serving) = server
                .serve(listener, kit.draining_after(shutdown.wait()))
                .await?;
            kit.ready();
            let served = serving.await;
            kit.stop().await;
            Ok(served?)
        },
    ))
}
