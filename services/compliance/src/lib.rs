//! The compliance service: a tamper-evident audit log. Events arrive from every component's
//! outbox relay, are appended to a per-tenant SHA-256 hash chain (idempotent on event id) and
//! are listed with AIP-160 filters.

mod api;
mod chain;
mod store;

use palisade_db::{Db, DbConfig, Migrations};
use palisade_grpc::{BoxError, MeshAddresses, MeshServer, RemoteAuthorizer, Running};
use palisade_proto::palisade::compliance::v1::audit_service_server::AuditServiceServer;
use palisade_tls::MeshTls;
use tokio::net::TcpListener;

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

/// Connects and migrates the database, then serves on `listener` until stopped.
pub async fn start(listener: TcpListener, config: ComplianceConfig) -> Result<Running, BoxError> {
    let db = Db::connect(&config.db).await?;
    db.migrate(&migrations()).await?;
    let identity = palisade_tls::channel(&config.mesh.identity, &config.tls, "identity")?;
    let authorizer = std::sync::Arc::new(RemoteAuthorizer::new(identity, AUTHZ_CACHE_TTL));
    let server = MeshServer::new(COMPONENT, config.tls.clone(), authorizer)?.add_service(
        AuditServiceServer::new(api::AuditApi::new(store::AuditStore::new(db.clone()))),
    );
    let local_addr = listener.local_addr()?;
    Ok(Running::spawn(
        COMPONENT,
        local_addr,
        move |shutdown| async move {
            let (_health, serving) = server.serve(listener, shutdown.wait()).await?;
            serving.await?;
            db.close().await;
            Ok(())
        },
    ))
}
