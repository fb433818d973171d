//! The compliance service: a tamper-evident audit log. Events arrive from every component's
//! outbox relay, are appended to a per-tenant SHA-256 hash chain (idempotent on event id) and
//! are listed with AIP-160 filters.

mod api;
mod chain;
mod store;

use palisade_db::{Db, DbConfig, Migrations};
use palisade_grpc::{
    BoxError, ComponentKit, Listeners, MeshAddresses, MeshServer, RemoteAuthorizer, Running,
};
use palisade_proto::palisade::compliance::v1::audit_service_server::AuditServiceServer;
use palisade_tls::MeshTls;
use tonic::codec::CompressionEncoding::Gzip;

pub use chain::{GENESIS_HASH, canonical_bytes, chain_hash};

pub const COMPONENT: &str = "compliance";

/// How long a permission answer from identity is reused.
const AUTHZ_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// What the compliance service needs to run.
#[derive(Clone)]
pub struct ComplianceConfig {
    pub tls: MeshTls,
    pub db: DbConfig,
    pub mesh: MeshAddresses,
}

pub fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("./migrations/sqlite"),
        postgres: sqlx::migrate!("./migrations/postgres"),
    }
}

/// Connects and migrates the database, then serves until stopped.
pub async fn start(listeners: Listeners, config: ComplianceConfig) -> Result<Running, BoxError> {
    let mut kit = ComponentKit::start(COMPONENT, config.tls.clone(), listeners.admin);
    let db = Db::connect(&config.db).await?;
    db.migrate(&migrations()).await?;
    kit.watch_database(db.clone(), false);
    let identity = kit.channel(&config.mesh.identity, "identity")?;
    let authorizer = std::sync::Arc::new(RemoteAuthorizer::new(identity, AUTHZ_CACHE_TTL));
    let store = store::AuditStore::new(db.clone());
    let server = MeshServer::new(
        COMPONENT,
        config.tls.clone(),
        authorizer,
        kit.metrics.clone(),
    )?
    .add_service(
        AuditServiceServer::new(api::AuditApi::new(store))
            .accept_compressed(Gzip)
            .send_compressed(Gzip),
    );
    let listener = listeners.grpc;
    let local_addr = listener.local_addr()?;
    Ok(Running::spawn(
        COMPONENT,
        local_addr,
        move |shutdown| async move {
            let (health, serving) = server
                .serve(listener, kit.draining_after(shutdown.wait()))
                .await?;
            kit.watch_database_readiness(health, db.clone()).await;
            let served = serving.await;
            kit.stop().await;
            db.close().await;
            Ok(served?)
        },
    ))
}
