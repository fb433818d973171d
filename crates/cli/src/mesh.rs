//! The whole mesh in one process: four components on their own ports with their own
//! certificates and databases, talking real gRPC over mTLS — the same code paths as a cluster.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, bail};
use palisade_db::DbConfig;
use palisade_grpc::{Listeners, MeshAddresses, Running};
use palisade_identity::LockoutPolicy;
use palisade_tls::{CertPaths, MeshTls};
use tokio::net::TcpListener;

/// The mesh's components, in start order (identity first: the others ask it for permissions).
pub const COMPONENTS: [Component; 4] = [
    Component::Identity,
    Component::Compliance,
    Component::Observability,
    Component::Gateway,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Identity,
    Compliance,
    Observability,
    Gateway,
}

impl Component {
    pub fn name(self) -> &'static str {
        match self {
            Component::Identity => "identity",
            Component::Compliance => "compliance",
            Component::Observability => "observability",
            Component::Gateway => "gateway",
        }
    }

    pub fn parse(name: &str) -> anyhow::Result<Component> {
        COMPONENTS
            .into_iter()
            .find(|c| c.name() == name)
            .with_context(|| format!("unknown component {name:?}; expected identity, compliance, observability or gateway"))
    }

    /// Whether the component keeps state in its own database.
    pub fn has_database(self) -> bool {
        matches!(self, Component::Identity | Component::Compliance)
    }
}

/// Where the components keep their data.
#[derive(Clone, Debug)]
pub enum DatabaseChoice {
    /// One SQLite file per component under the data dir.
    Sqlite,
    /// One schema per component, `<schema_prefix>_<component>`, in the database at `url`.
    Postgres { url: String, schema_prefix: String },
}

/// The ports to listen on; 0 picks a free one.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub gateway: u16,
    pub identity: u16,
    pub compliance: u16,
    pub observability: u16,
}

impl Ports {
    pub const DEV: Ports = Ports {
        gateway: 7900,
        identity: 7901,
        compliance: 7902,
        observability: 7903,
    };
    pub const DEV_ADMIN: Ports = Ports {
        gateway: 7910,
        identity: 7911,
        compliance: 7912,
        observability: 7913,
    };
    pub const ANY: Ports = Ports {
        gateway: 0,
        identity: 0,
        compliance: 0,
        observability: 0,
    };

    /// The gateway on `base`, then identity, compliance and observability.
    pub fn starting_at(base: u16) -> anyhow::Result<Ports> {
        if base == 0 || base > u16::MAX - 3 {
            bail!("port base must be between 1 and {}", u16::MAX - 3);
        }
        Ok(Ports {
            gateway: base,
            identity: base + 1,
            compliance: base + 2,
            observability: base + 3,
        })
    }

    /// The port of `component`.
    pub fn of(&self, component: Component) -> u16 {
        match component {
            Component::Identity => self.identity,
            Component::Compliance => self.compliance,
            Component::Observability => self.observability,
            Component::Gateway => self.gateway,
        }
    }
}

#[derive(Clone, Debug)]
pub struct MeshOptions {
    pub data_dir: PathBuf,
    pub trust_domain: String,
    pub database: DatabaseChoice,
    pub ports: Ports,
    /// Admin HTTP ports (`/metrics`, `/healthz`, `/readyz`); `None` runs without them.
    pub admin_ports: Option<Ports>,
    pub host: IpAddr,
    pub api_key_cache_ttl: Duration,
    /// How old the gateway lets identity's JWKS grow before fetching it again.
    pub jwks_refresh: Duration,
    /// The gateway's deadline for unary calls whose client sets none.
    pub default_deadline: Duration,
    /// How long the gateway keeps a public connection on which nothing happens.
    pub idle_timeout: Duration,
    /// Public calls per client address, credential or not; `None` is unlimited.
    pub public_call_rate: Option<palisade_gateway::PublicCallRate>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<palisade_gateway::IpBlock>,
    /// Open gateway connections per client address; 0 is no cap.
    pub max_connections_per_address: usize,
    /// Browser origins allowed to call the gateway's REST and gRPC-Web routes (CORS).
    pub cors_allowed_origins: Vec<String>,
    /// PEM certificate chain and key for TLS on the gateway's public port; `None`: h2c.
    pub public_tls: Option<(PathBuf, PathBuf)>,
    /// When identity locks a user out after failed logins.
    pub login_lockout: LockoutPolicy,
    /// How long the gateway trusts identity's answer about a tenant (state, limits, usage).
    pub tenant_cache_ttl: Duration,
    /// The gateway maps `<tenant_id>.<base domain>` host names to tenants.
    pub tenant_base_domain: Option<String>,
    /// The longest lifetime identity gives an API key.
    pub api_key_max_lifetime: Duration,
    /// The longest a sign-in session lasts, however often it is refreshed.
    pub session_max_lifetime: Duration,
}

impl MeshOptions {
    pub fn new(data_dir: PathBuf) -> MeshOptions {
        MeshOptions {
            data_dir,
            trust_domain: palisade_tls::DEFAULT_TRUST_DOMAIN.to_owned(),
            database: DatabaseChoice::Sqlite,
            ports: Ports::DEV,
            admin_ports: Some(Ports::DEV_ADMIN),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            api_key_cache_ttl: Duration::from_secs(30),
            jwks_refresh: Duration::from_secs(60),
            default_deadline: palisade_gateway::DEFAULT_DEADLINE,
            idle_timeout: palisade_gateway::IDLE_TIMEOUT,
            public_call_rate: Some(palisade_gateway::PublicCallRate::DEFAULT),
            trusted_proxies: Vec::new(),
            max_connections_per_address: palisade_gateway::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            cors_allowed_origins: Vec::new(),
            public_tls: None,
            login_lockout: LockoutPolicy::default(),
            tenant_cache_ttl: Duration::from_secs(5),
            tenant_base_domain: None,
            api_key_max_lifetime: palisade_identity::DEFAULT_API_KEY_MAX_LIFETIME,
            session_max_lifetime: palisade_identity::DEFAULT_SESSION_MAX_LIFETIME,
        }
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.data_dir.join("certs")
    }

    /// The key-encryption key that seals identity's token-signing keys, made with the PKI.
    pub fn signing_key_kek(&self) -> PathBuf {
        self.certs_dir().join("identity-signing.kek")
    }

    /// A KEK being rotated away from, if there is one: to rotate the dev KEK, rename it to
    /// this and restart; a new KEK is made and the keys are sealed again under it.
    pub fn signing_key_previous_kek(&self) -> Option<PathBuf> {
        Some(self.certs_dir().join("identity-signing.previous.kek")).filter(|path| path.exists())
    }

    /// Where `component` keeps its data (for PostgreSQL: as the role the services connect as).
    pub fn db_config(&self, component: Component) -> DbConfig {
        match &self.database {
            DatabaseChoice::Sqlite => DbConfig::sqlite_in(&self.data_dir, component.name()),
            DatabaseChoice::Postgres { url, schema_prefix } => {
                DbConfig::postgres(url, Some(format!("{schema_prefix}_{}", component.name())))
            }
        }
    }
}

/// A mesh running in this process.
pub struct LocalMesh {
    pub options: MeshOptions,
    pub addresses: MeshAddresses,
    /// The bootstrap operator key, when this start created it.
    pub operator_key: Option<String>,
    /// Whether that key was saved to the dev data directory ([`crate::operator_key`]) as soon
    /// as identity made it, before the other components started: a start that fails later
    /// must not lose it, as no later start makes another.
    pub operator_key_saved: bool,
    bound: BTreeMap<Component, SocketAddr>,
    bound_admin: BTreeMap<Component, SocketAddr>,
    running: BTreeMap<Component, Running>,
}

impl LocalMesh {
    /// Makes the dev PKI if absent, binds every port, then starts the components in order.
    pub async fn start(options: MeshOptions) -> anyhow::Result<LocalMesh> {
        let names: Vec<_> = COMPONENTS.iter().map(|c| c.name()).collect();
        // On a blocking thread: it may wait on the PKI's file lock while another `palisade
        // dev` writes the same certs, which would stall this runtime's worker.
        let (certs, trust_domain) = (options.certs_dir(), options.trust_domain.clone());
        tokio::task::spawn_blocking(move || {
            palisade_tls::pki::init(&certs, &trust_domain, &names, &[])
        })
        .await?
        .context("creating the dev PKI")?;
        palisade_identity::KeySealer::create_kek_file(&options.signing_key_kek())
            .context("creating the signing-key KEK")?;
        // Bind everything first so each component knows its peers' real addresses.
        let mut listeners = BTreeMap::new();
        let mut bound = BTreeMap::new();
        let mut bound_admin = BTreeMap::new();
        for component in COMPONENTS {
            let grpc = bind(options.host, options.ports.of(component), component).await?;
            bound.insert(component, grpc.local_addr()?);
            let admin = match &options.admin_ports {
                Some(ports) => {
                    let admin = bind(options.host, ports.of(component), component).await?;
                    bound_admin.insert(component, admin.local_addr()?);
                    Some(admin)
                }
                None => None,
            };
            listeners.insert(component, Listeners { grpc, admin });
        }
        let url = |c: Component| format!("http://{}", bound[&c]);
        let addresses = MeshAddresses {
            identity: url(Component::Identity),
            compliance: url(Component::Compliance),
            observability: url(Component::Observability),
            // The status page probes the public port as clients reach it: over TLS when it has
            // a public certificate.
            gateway: match options.public_tls {
                Some(_) => format!("https://{}", bound[&Component::Gateway]),
                None => url(Component::Gateway),
            },
        };
        let mut mesh = LocalMesh {
            options,
            addresses,
            operator_key: None,
            operator_key_saved: false,
            bound,
            bound_admin,
            running: BTreeMap::new(),
        };
        for (component, listener) in listeners {
            mesh.launch(component, listener).await?;
        }
        Ok(mesh)
    }

    pub fn addr(&self, component: Component) -> SocketAddr {
        self.bound[&component]
    }

    /// The component's admin HTTP address, if admin ports are on.
    pub fn admin_addr(&self, component: Component) -> Option<SocketAddr> {
        self.bound_admin.get(&component).copied()
    }

    pub fn is_running(&self, component: Component) -> bool {
        self.running.contains_key(&component)
    }

    /// Drains and stops one component; its port stays reserved for [`LocalMesh::restart`].
    pub async fn stop_component(&mut self, component: Component) -> anyhow::Result<()> {
        if let Some(running) = self.running.remove(&component) {
            running
                .stop()
                .await
                .map_err(|e| anyhow::anyhow!(e))
                .with_context(|| format!("stopping {}", component.name()))?;
        }
        Ok(())
    }

    /// Starts a stopped component again on its old port.
    pub async fn restart(&mut self, component: Component) -> anyhow::Result<()> {
        if self.is_running(component) {
            bail!("{} is already running", component.name());
        }
        let grpc = TcpListener::bind(self.bound[&component]).await?;
        let admin = match self.bound_admin.get(&component) {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        self.launch(component, Listeners { grpc, admin }).await
    }

    /// Stops every component: the gateway first (no new calls), compliance last, so identity's
    /// relay can still make its final flush to it. One that fails to stop does not keep the
    /// rest from stopping; the first failure is the answer.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let order = [
            Component::Gateway,
            Component::Observability,
            Component::Identity,
            Component::Compliance,
        ];
        let mut first_failure = None;
        for component in order {
            if let Err(error) = self.stop_component(component).await {
                tracing::error!(
                    component = component.name(),
                    error = format!("{error:#}"),
                    "stopping failed"
                );
                first_failure.get_or_insert(error);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// A component whose task ended without being asked to (it failed), with its error.
    pub async fn take_failed(&mut self) -> Option<(Component, anyhow::Error)> {
        let component = *self
            .running
            .iter()
            .find(|(_, running)| running.is_finished())?
            .0;
        let running = self.running.remove(&component)?;
        let error = match running.join().await {
            Ok(()) => anyhow::anyhow!("{} stopped unexpectedly", component.name()),
            Err(error) => anyhow::anyhow!(error).context(format!("{} failed", component.name())),
        };
        Some((component, error))
    }

    async fn launch(&mut self, component: Component, listeners: Listeners) -> anyhow::Result<()> {
        let options = &self.options;
        let tls = MeshTls::load(CertPaths::in_dir(&options.certs_dir(), component.name())).await?;
        let settings = ComponentSettings {
            tls,
            db: options.db_config(component),
            mesh: self.addresses.clone(),
            api_key_cache_ttl: options.api_key_cache_ttl,
            jwks_refresh: options.jwks_refresh,
            default_deadline: options.default_deadline,
            idle_timeout: options.idle_timeout,
            public_call_rate: options.public_call_rate,
            trusted_proxies: options.trusted_proxies.clone(),
            max_connections_per_address: options.max_connections_per_address,
            cors_allowed_origins: options.cors_allowed_origins.clone(),
            public_tls: options.public_tls.clone(),
            login_lockout: options.login_lockout,
            tenant_cache_ttl: options.tenant_cache_ttl,
            tenant_base_domain: options.tenant_base_domain.clone(),
            api_key_max_lifetime: options.api_key_max_lifetime,
            session_max_lifetime: options.session_max_lifetime,
            signing_key_kek: Some(options.signing_key_kek()),
            signing_key_previous_kek: options.signing_key_previous_kek(),
            gateway_workers: 0,
            hashing_threads: 0,
        };
        let (running, operator_key) = start_component(component, listeners, settings).await?;
        if let Some(key) = operator_key {
            let data_dir = &self.options.data_dir;
            self.operator_key_saved = match crate::operator_key::save(data_dir, &key) {
                Ok(()) => true,
                Err(error) => {
                    let path = crate::operator_key::path(data_dir);
                    tracing::warn!(path = %path.display(), %error, "the operator key could not be saved");
                    false
                }
            };
            self.operator_key = Some(key);
        }
        tracing::info!(component = component.name(), addr = %running.local_addr, "component started");
        self.running.insert(component, running);
        Ok(())
    }
}

/// What any one component is started with.
pub struct ComponentSettings {
    pub tls: MeshTls,
    pub db: DbConfig,
    pub mesh: MeshAddresses,
    pub api_key_cache_ttl: Duration,
    pub jwks_refresh: Duration,
    pub default_deadline: Duration,
    pub idle_timeout: Duration,
    pub public_call_rate: Option<palisade_gateway::PublicCallRate>,
    pub trusted_proxies: Vec<palisade_gateway::IpBlock>,
    pub max_connections_per_address: usize,
    pub cors_allowed_origins: Vec<String>,
    /// The gateway's public-port certificate and key (PEM), if it speaks TLS.
    pub public_tls: Option<(PathBuf, PathBuf)>,
    pub login_lockout: LockoutPolicy,
    pub tenant_cache_ttl: Duration,
    pub tenant_base_domain: Option<String>,
    pub api_key_max_lifetime: Duration,
    pub session_max_lifetime: Duration,
    /// identity: the KEK file sealing token-signing keys at rest (`None`: stored plain).
    pub signing_key_kek: Option<PathBuf>,
    /// identity: a KEK being rotated away from (opens keys, never seals).
    pub signing_key_previous_kek: Option<PathBuf>,
    /// The gateway's connection workers; 0 means one per available core.
    pub gateway_workers: usize,
    /// identity's password hashing threads; 0 means half the available cores.
    pub hashing_threads: usize,
}

/// Starts one component on `listeners`; identity also returns the operator key when its
/// bootstrap created one.
pub async fn start_component(
    component: Component,
    listeners: Listeners,
    settings: ComponentSettings,
) -> anyhow::Result<(Running, Option<String>)> {
    let ComponentSettings {
        tls,
        db,
        mesh,
        api_key_cache_ttl,
        jwks_refresh,
        default_deadline,
        idle_timeout,
        public_call_rate,
        trusted_proxies,
        max_connections_per_address,
        cors_allowed_origins,
        public_tls,
        login_lockout,
        tenant_cache_ttl,
        tenant_base_domain,
        api_key_max_lifetime,
        session_max_lifetime,
        signing_key_kek,
        signing_key_previous_kek,
        gateway_workers,
        hashing_threads,
    } = settings;
    let started = match component {
        Component::Identity => {
            let config = palisade_identity::IdentityConfig {
                tls,
                db,
                mesh,
                lockout: login_lockout,
                api_key_max_lifetime,
                session_max_lifetime,
                signing_key_kek,
                signing_key_previous_kek,
                hashing_threads,
            };
            palisade_identity::start(listeners, config)
                .await
                .map(|s| (s.running, s.operator_key))
        }
        Component::Compliance => {
            let config = palisade_compliance::ComplianceConfig { tls, db, mesh };
            palisade_compliance::start(listeners, config)
                .await
                .map(|r| (r, None))
        }
        Component::Observability => {
            let config = palisade_observability::ObservabilityConfig { tls, mesh };
            palisade_observability::start(listeners, config)
                .await
                .map(|r| (r, None))
        }
        Component::Gateway => {
            let config = palisade_gateway::GatewayConfig {
                tls,
                mesh,
                api_key_cache_ttl,
                jwks_refresh,
                default_deadline,
                idle_timeout,
                cors_allowed_origins,
                public_tls,
                tenant_cache_ttl,
                tenant_base_domain,
                workers: gateway_workers,
                public_call_rate,
                trusted_proxies,
                max_connections_per_address,
            };
            palisade_gateway::start(listeners, config)
                .await
                .map(|r| (r, None))
        }
    };
    started
        .map_err(|e| anyhow::anyhow!(e))
        .with_context(|| format!("starting {}", component.name()))
}

async fn bind(host: IpAddr, port: u16, component: Component) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(host, port);
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {} to {addr}", component.name()))
}
