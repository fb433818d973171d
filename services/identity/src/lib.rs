//! The identity service: tenants, users and their roles, password login with access and
//! refresh tokens, API keys and permission checks. Identity decides its own RPCs' permissions
//! locally and answers `AuthorizationService.Check` for everyone else. Every mutation writes
//! its audit event into the outbox in the same transaction.

mod api;
mod api_keys;
mod authz;
mod bootstrap;
mod display_names;
mod hashing_threads;
mod lockout;
mod passwords;
mod plans;
mod roles;
mod sealing;
mod signing;
mod store;
mod tenant_data;
mod tenants;
mod tokens;
mod users;

use std::sync::Arc;

use palisade_audit::ComplianceSink;
use palisade_db::{
    Db, DbConfig, Migrations,
    outbox::{Relay, RelayConfig},
};
use palisade_grpc::{
    BoxError, ComponentKit, Listeners, MeshAddresses, MeshServer, MethodPolicies, Running,
};
use palisade_proto::palisade::identity::v1::{
    api_key_service_server::ApiKeyServiceServer, auth_service_server::AuthServiceServer,
    authorization_service_server::AuthorizationServiceServer,
    edge_service_server::EdgeServiceServer, role_service_server::RoleServiceServer,
    tenant_data_service_server::TenantDataServiceServer,
    tenant_service_server::TenantServiceServer, user_service_server::UserServiceServer,
};
use palisade_tls::MeshTls;
use tokio::sync::oneshot;
use tonic::codec::CompressionEncoding::Gzip;

pub use api_keys::DEFAULT_MAX_LIFETIME as DEFAULT_API_KEY_MAX_LIFETIME;
pub use lockout::LockoutPolicy;
pub use passwords::{
    ARGON2_ITERATIONS, ARGON2_MEMORY_KIB, Passwords, default_threads as default_hashing_threads,
};
pub use sealing::KeySealer;
pub use tokens::DEFAULT_SESSION_MAX_LIFETIME;

pub const COMPONENT: &str = "identity";

/// What the identity service needs to run.
#[derive(Clone)]
pub struct IdentityConfig {
    pub tls: MeshTls,
    pub db: DbConfig,
    pub mesh: MeshAddresses,
    pub lockout: LockoutPolicy,
    /// The longest an API key may live (`api_keys::DEFAULT_MAX_LIFETIME` unless configured).
    pub api_key_max_lifetime: std::time::Duration,
    /// The longest a sign-in session lasts, however often its refresh token is used
    /// ([`DEFAULT_SESSION_MAX_LIFETIME`] unless configured).
    pub session_max_lifetime: std::time::Duration,
    /// The file of the key-encryption key that seals token-signing keys at rest; `None` stores
    /// them plain (see `sealing.rs`).
    pub signing_key_kek: Option<std::path::PathBuf>,
    /// A KEK being rotated away from: it opens keys, which are sealed again under the current.
    pub signing_key_previous_kek: Option<std::path::PathBuf>,
    /// Threads hashing passwords at the lowest CPU priority; 0 for
    /// [`default_hashing_threads`] (half the cores).
    pub hashing_threads: usize,
}

/// A running identity service, and the operator key if this start created it.
pub struct Started {
    pub running: Running,
    pub operator_key: Option<String>,
}

pub fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("./migrations/sqlite"),
        postgres: sqlx::migrate!("./migrations/postgres"),
    }
}

/// Connects, migrates and bootstraps the database, then serves on `listener` and relays audit
/// events to compliance until stopped.
pub async fn start(listeners: Listeners, config: IdentityConfig) -> Result<Started, BoxError> {
    let mut kit = ComponentKit::start(COMPONENT, config.tls.clone(), listeners.admin);
    let db = Db::connect(&config.db).await?;
    db.migrate(&migrations()).await?;
    let store = store::IdentityStore::new(db.clone());
    kit.watch_database(db.clone(), true);

    let relay = Relay::new(db.clone(), RelayConfig::new(palisade_audit::TOPIC));
    let compliance = kit.channel(&config.mesh.compliance, "compliance")?;
    let policies = MethodPolicies::palisade()?;
    let roles = Arc::new(roles::Roles::from_catalogue(&policies));
    let key_rules = api_keys::KeyRules::new(roles.clone(), config.api_key_max_lifetime);
    let passwords = passwords::Passwords::new(config.hashing_threads);
    let sealer = sealing::KeySealer::from_files(
        config.signing_key_kek.as_deref(),
        config.signing_key_previous_kek.as_deref(),
    )?;
    let keys = Arc::new(signing::Keyring::load(store.clone(), Default::default(), sealer).await?);
    let authz = Arc::new(authz::Authz::new(store.clone(), roles.clone()));
    let authorizer = Arc::new(authz::LocalAuthorizer(authz.clone()));
    let server = MeshServer::new(
        COMPONENT,
        config.tls.clone(),
        authorizer,
        kit.metrics.clone(),
    )?
    .with_denial_audit(Arc::new(api::AuditDenials::new(
        store.clone(),
        relay.clone(),
    )))
    // Every service takes and gives gzip, which clients ask for with `grpc-encoding` and
    // `grpc-accept-encoding`; the gateway passes both through (tonic's 4 MiB message limit
    // applies to a message once decompressed).
    .add_service(
        TenantServiceServer::new(api::TenantApi::new(store.clone(), relay.clone()))
            .accept_compressed(Gzip)
            .send_compressed(Gzip),
    )
    .add_service(
        UserServiceServer::new(api::UserApi::new(
            store.clone(),
            relay.clone(),
            authz.clone(),
            passwords.clone(),
            config.lockout,
        ))
        .accept_compressed(Gzip)
        .send_compressed(Gzip),
    )
    .add_service(
        RoleServiceServer::new(api::RoleApi::new(
            store.clone(),
            relay.clone(),
            authz.clone(),
        ))
        .accept_compressed(Gzip)
        .send_compressed(Gzip),
    )
    .add_service(
        EdgeServiceServer::new(api::EdgeApi::new(store.clone()))
            .accept_compressed(Gzip)
            .send_compressed(Gzip),
    )
    .add_service(
        TenantDataServiceServer::new(api::TenantDataApi::new(
            store.clone(),
            relay.clone(),
            roles.clone(),
        ))
        .accept_compressed(Gzip)
        .send_compressed(Gzip),
    )
    .add_service(
        AuthServiceServer::new(api::AuthApi::new(
            store.clone(),
            relay.clone(),
            passwords,
            keys.clone(),
            config.lockout,
            config.session_max_lifetime,
        ))
        .accept_compressed(Gzip)
        .send_compressed(Gzip),
    )
    .add_service(
        ApiKeyServiceServer::new(api::ApiKeyApi::new(
            store.clone(),
            relay.clone(),
            authz.clone(),
            key_rules,
        ))
        .accept_compressed(Gzip)
        .send_compressed(Gzip),
    )
    .add_service(
        AuthorizationServiceServer::new(api::AuthorizationApi::new(authz))
            .accept_compressed(Gzip)
            .send_compressed(Gzip),
    );

    let listener = listeners.grpc;
    let local_addr = listener.local_addr()?;
    // Last, once nothing else can fail: a key made now is shown only once (to whoever started
    // identity), and never made again, so a start that failed after making it would lose it.
    let operator_key = bootstrap::bootstrap(&store, config.api_key_max_lifetime).await?;
    let running = Running::spawn(COMPONENT, local_addr, move |shutdown| async move {
        let (stop_rotation, rotation_stopped) = oneshot::channel::<()>();
        let rotation = keys.spawn(async {
            let _ = rotation_stopped.await;
        });
        let (stop_sweeper, sweeper_stopped) = oneshot::channel::<()>();
        let sweeper = lockout::spawn_sweeper(store, config.lockout, async {
            let _ = sweeper_stopped.await;
        });
        let (stop_relay, relay_stopped) = oneshot::channel::<()>();
        let relay_task = relay.spawn(ComplianceSink::new(compliance), async {
            let _ = relay_stopped.await;
        });
        let (health, serving) = server
            .serve(listener, kit.draining_after(shutdown.wait()))
            .await?;
        kit.watch_database_readiness(health, db.clone()).await;
        let served = serving.await;
        // Not ready while the rest stops, also if the server ended without being asked.
        kit.readiness.drain();
        // The server has drained, so no new events can arrive: the relay makes a last flush.
        let _ = stop_rotation.send(());
        let _ = rotation.await;
        let _ = stop_sweeper.send(());
        let _ = sweeper.await;
        let _ = stop_relay.send(());
        let _ = relay_task.await;
        kit.stop().await;
        db.close().await;
        Ok(served?)
    });
    Ok(Started {
        running,
        operator_key,
    })
}
