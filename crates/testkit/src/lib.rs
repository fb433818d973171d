//! The test sandbox: boots the real mesh inside a test — real ports (all ephemeral), real mTLS
//! with a fresh dev PKI, real SQLite files in a temp dir or real PostgreSQL schemas — and hands
//! out clients for the gateway and for components directly.
//!
//! ```ignore
//! for builder in Mesh::each_backend() {
//!     let mesh = builder.start().await?;
//!     let mut tenants = TenantServiceClient::new(mesh.gateway());
//!     tenants.create_tenant(mesh.as_operator(request)).await?;
//!     mesh.stop().await?;
//! }
//! ```

mod http;
pub mod otlp;
mod sandbox_role;

use std::time::Duration;

use anyhow::Context;
pub use http::{HttpResponse, http_get, http_request};
pub use palisade::Component;
use palisade::{DatabaseChoice, LocalMesh, MeshOptions, Ports};
use palisade_db::{Db, DbConfig, ServiceRole};
use palisade_tls::{CertPaths, MeshTls, SpiffeId};
use sandbox_role::SandboxRole;
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};

/// The environment variable naming a PostgreSQL server for tests, e.g.
/// `postgres://postgres@127.0.0.1:5432/palisade_ci`. Each sandbox makes its own schemas there.
pub const POSTGRES_ENV: &str = "PALISADE_TEST_POSTGRES_URL";

/// Configures a sandbox before it starts.
#[derive(Clone, Debug, Default)]
pub struct MeshBuilder {
    postgres: Option<String>,
    api_key_cache_ttl: Option<Duration>,
    jwks_refresh: Option<Duration>,
    default_deadline: Option<Duration>,
    idle_timeout: Option<Duration>,
    public_call_rate: Option<palisade::PublicCallRate>,
    trusted_proxies: Vec<palisade::IpBlock>,
    max_connections_per_address: Option<usize>,
    cors_allowed_origins: Vec<String>,
    public_tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    login_lockout: Option<palisade::LockoutPolicy>,
    tenant_cache_ttl: Option<Duration>,
    tenant_base_domain: Option<String>,
    api_key_max_lifetime: Option<Duration>,
    session_max_lifetime: Option<Duration>,
}

impl MeshBuilder {
    /// Identity's login lockout (tests shorten the lock to watch it end).
    pub fn with_login_lockout(mut self, policy: palisade::LockoutPolicy) -> MeshBuilder {
        self.login_lockout = Some(policy);
        self
    }

    /// The longest lifetime identity gives an API key.
    pub fn with_api_key_max_lifetime(mut self, lifetime: Duration) -> MeshBuilder {
        self.api_key_max_lifetime = Some(lifetime);
        self
    }

    /// The longest a sign-in session lasts (tests shorten it to watch it end).
    pub fn with_session_max_lifetime(mut self, lifetime: Duration) -> MeshBuilder {
        self.session_max_lifetime = Some(lifetime);
        self
    }

    /// TLS on the gateway's public port with this PEM certificate chain and key; the sandbox's
    /// own gateway clients ([`Mesh::gateway`]) speak h2c, so a test brings its TLS client.
    pub fn with_public_tls(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> MeshBuilder {
        self.public_tls = Some((cert.into(), key.into()));
        self
    }

    /// How long the gateway trusts what identity said about a tenant (tests shorten it to
    /// watch a suspension take effect).
    pub fn with_tenant_cache_ttl(mut self, ttl: Duration) -> MeshBuilder {
        self.tenant_cache_ttl = Some(ttl);
        self
    }

    /// The gateway's base domain for `<tenant_id>.<base domain>` host names.
    pub fn with_tenant_base_domain(mut self, domain: &str) -> MeshBuilder {
        self.tenant_base_domain = Some(domain.to_owned());
        self
    }

    pub fn with_postgres(mut self, url: impl Into<String>) -> MeshBuilder {
        self.postgres = Some(url.into());
        self
    }

    pub fn with_api_key_cache_ttl(mut self, ttl: Duration) -> MeshBuilder {
        self.api_key_cache_ttl = Some(ttl);
        self
    }

    /// The gateway's deadline for unary calls whose client sets none.
    pub fn with_default_deadline(mut self, deadline: Duration) -> MeshBuilder {
        self.default_deadline = Some(deadline);
        self
    }

    /// How long the gateway keeps a public connection on which nothing happens.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> MeshBuilder {
        self.idle_timeout = Some(timeout);
        self
    }

    /// The gateway believes `X-Forwarded-For` from peers in `blocks` (`127.0.0.1` for tests).
    pub fn with_trusted_proxies(mut self, blocks: &[&str]) -> MeshBuilder {
        self.trusted_proxies = blocks
            .iter()
            .map(|block| block.parse().expect("an address block"))
            .collect();
        self
    }

    /// How many open connections the gateway lets one client address hold.
    pub fn with_max_connections_per_address(mut self, limit: usize) -> MeshBuilder {
        self.max_connections_per_address = Some(limit);
        self
    }

    /// How many public calls the gateway lets one client address make.
    pub fn with_public_call_rate(mut self, per_second: u32, burst: u32) -> MeshBuilder {
        self.public_call_rate = Some(palisade::PublicCallRate { per_second, burst });
        self
    }

    /// How often the gateway fetches identity's JWKS.
    pub fn with_jwks_refresh(mut self, refresh: Duration) -> MeshBuilder {
        self.jwks_refresh = Some(refresh);
        self
    }

    /// Browser origins the gateway answers CORS requests for.
    pub fn with_cors_allowed_origins(mut self, origins: &[&str]) -> MeshBuilder {
        self.cors_allowed_origins = origins.iter().map(|o| (*o).to_owned()).collect();
        self
    }

    /// `"sqlite"` or `"postgres"`, for test output.
    pub fn backend_name(&self) -> &'static str {
        if self.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    pub async fn start(self) -> anyhow::Result<Mesh> {
        init_test_logging();
        let dir = tempfile::tempdir()?;
        let mut options = MeshOptions::new(dir.path().to_path_buf());
        options.ports = Ports::ANY;
        options.admin_ports = Some(Ports::ANY);
        if let Some(ttl) = self.api_key_cache_ttl {
            options.api_key_cache_ttl = ttl;
        }
        if let Some(refresh) = self.jwks_refresh {
            options.jwks_refresh = refresh;
        }
        if let Some(deadline) = self.default_deadline {
            options.default_deadline = deadline;
        }
        if let Some(timeout) = self.idle_timeout {
            options.idle_timeout = timeout;
        }
        if let Some(rate) = self.public_call_rate {
            options.public_call_rate = Some(rate);
        }
        if let Some(policy) = self.login_lockout {
            options.login_lockout = policy;
        }
        if let Some(ttl) = self.tenant_cache_ttl {
            options.tenant_cache_ttl = ttl;
        }
        options.tenant_base_domain = self.tenant_base_domain.clone();
        options.trusted_proxies = self.trusted_proxies.clone();
        if let Some(limit) = self.max_connections_per_address {
            options.max_connections_per_address = limit;
        }
        if let Some(lifetime) = self.api_key_max_lifetime {
            options.api_key_max_lifetime = lifetime;
        }
        if let Some(lifetime) = self.session_max_lifetime {
            options.session_max_lifetime = lifetime;
        }
        options.cors_allowed_origins = self.cors_allowed_origins.clone();
        options.public_tls = self.public_tls.clone();
        let mut service_role = None;
        if let Some(url) = &self.postgres {
            let schema_prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            // The services connect as an ordinary role, as in production, so that row-level
            // security applies to them (a superuser would skip it).
            let admin = Db::connect(&DbConfig::postgres(url, None)).await?;
            let (role, service_url) =
                ServiceRole::create(&admin, url, &format!("palisade_svc_{schema_prefix}")).await?;
            admin.close().await;
            service_role = Some(SandboxRole::new(url.clone(), role));
            options.database = DatabaseChoice::Postgres {
                url: service_url,
                schema_prefix,
            };
        }
        let inner = LocalMesh::start(options)
            .await
            .context("starting the sandbox mesh")?;
        let operator_key = inner
            .operator_key
            .clone()
            .context("a fresh mesh creates an operator key")?;
        Ok(Mesh {
            inner,
            operator_key,
            service_role,
            _dir: dir,
        })
    }
}

/// A running sandbox mesh. Call [`Mesh::stop`] at the end of a test to drain it and drop its
/// PostgreSQL schemas.
pub struct Mesh {
    inner: LocalMesh,
    operator_key: String,
    /// PostgreSQL only: the ordinary role the services connect as (and the administrator URL
    /// it was made with), dropped by `stop`, or when the mesh is dropped without it.
    service_role: Option<SandboxRole>,
    _dir: TempDir,
}

impl Mesh {
    pub fn builder() -> MeshBuilder {
        MeshBuilder::default()
    }

    /// SQLite always, and PostgreSQL too when [`POSTGRES_ENV`] is set.
    pub fn each_backend() -> Vec<MeshBuilder> {
        let mut builders = vec![MeshBuilder::default()];
        if let Ok(url) = std::env::var(POSTGRES_ENV) {
            builders.push(MeshBuilder::default().with_postgres(url));
        }
        builders
    }

    /// A connection to `component`'s database as the services make it (on PostgreSQL: as the
    /// ordinary role, so row-level security applies), for tests that look beneath the API.
    pub async fn service_db(&self, component: Component) -> anyhow::Result<Db> {
        Ok(Db::connect(&self.inner.options.db_config(component)).await?)
    }

    /// PostgreSQL only: the same database as an administrator (row-level security skipped).
    pub async fn admin_db(&self, component: Component) -> anyhow::Result<Option<Db>> {
        let (Some(role), DatabaseChoice::Postgres { schema_prefix, .. }) =
            (&self.service_role, &self.inner.options.database)
        else {
            return Ok(None);
        };
        let schema = format!("{schema_prefix}_{}", component.name());
        Ok(Some(
            Db::connect(&DbConfig::postgres(role.admin_url(), Some(schema))).await?,
        ))
    }

    /// `component`'s database with row-level security out of the way, for tests that plant or
    /// change rows beneath the API: as administrator on PostgreSQL, as the service on SQLite
    /// (which has no row-level security).
    pub async fn unrestricted_db(&self, component: Component) -> anyhow::Result<Db> {
        match self.admin_db(component).await? {
            Some(admin) => Ok(admin),
            None => self.service_db(component).await,
        }
    }

    pub fn operator_key(&self) -> &str {
        &self.operator_key
    }

    /// `request` with the operator's credential attached.
    pub fn as_operator<T>(&self, message: T) -> tonic::Request<T> {
        with_api_key(message, &self.operator_key)
    }

    /// A client channel to the gateway's public port (h2c), as an outside client connects.
    pub fn gateway(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.inner.addr(Component::Gateway)))
            .expect("socket addresses are valid uris")
            .connect_lazy()
    }

    pub fn addr(&self, component: Component) -> std::net::SocketAddr {
        self.inner.addr(component)
    }

    /// The component's admin HTTP address (`/metrics`, `/healthz`, `/readyz`).
    pub fn admin_addr(&self, component: Component) -> std::net::SocketAddr {
        self.inner
            .admin_addr(component)
            .expect("the sandbox always runs admin ports")
    }

    /// `GET path` on the component's admin port: (status code, body).
    pub async fn admin_get(
        &self,
        component: Component,
        path: &str,
    ) -> anyhow::Result<(u16, String)> {
        http_get(self.admin_addr(component), path).await
    }

    /// How many unary calls of `service`/`method` (e.g. `palisade.identity.v1.AuthService`,
    /// `GetJwks`) `component` has answered with `code` (`OK`, `Unauthenticated`, ...), from its
    /// Prometheus metrics; 0 before the first.
    pub async fn unary_calls_handled(
        &self,
        component: Component,
        service: &str,
        method: &str,
        code: &str,
    ) -> anyhow::Result<u64> {
        let labels = format!(r#"grpc_method="{method}",grpc_code="{code}""#);
        let series = unary_series("handled", component, service, &labels);
        self.counter(component, &series).await
    }

    /// How many unary calls of `service`/`method` `component` has begun to handle since it
    /// started, from its Prometheus metrics; 0 before the first.
    pub async fn unary_calls_started(
        &self,
        component: Component,
        service: &str,
        method: &str,
    ) -> anyhow::Result<u64> {
        let labels = format!(r#"grpc_method="{method}""#);
        let series = unary_series("started", component, service, &labels);
        self.counter(component, &series).await
    }

    /// The value of the counter `series` (its name and labels) in `component`'s metrics.
    async fn counter(&self, component: Component, series: &str) -> anyhow::Result<u64> {
        let (_, metrics) = self.admin_get(component, "/metrics").await?;
        let prefix = format!("{series} ");
        Ok(metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .map_or(Ok(0), str::parse)?)
    }

    /// The data directory (certificates, SQLite files).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.inner.options.data_dir
    }

    pub fn certs_dir(&self) -> std::path::PathBuf {
        self.inner.options.certs_dir()
    }

    /// An mTLS channel to `component`, presenting the certificate named `as_cert` (a component
    /// name, or one made with [`Mesh::issue_cert`]).
    pub async fn direct(&self, component: Component, as_cert: &str) -> anyhow::Result<Channel> {
        let tls = MeshTls::load(CertPaths::in_dir(&self.certs_dir(), as_cert)).await?;
        let uri = format!("http://{}", self.inner.addr(component));
        Ok(palisade_tls::channel(&uri, &tls, component.name())?)
    }

    /// Issues a certificate from the mesh CA for an arbitrary SPIFFE path, e.g.
    /// `workload/batch-job`: a genuine mesh member that is not a trusted component.
    pub fn issue_cert(&self, name: &str, spiffe_path: &str) -> anyhow::Result<()> {
        let spiffe = SpiffeId::parse(&format!(
            "spiffe://{}/{spiffe_path}",
            self.inner.options.trust_domain
        ))?;
        palisade_tls::pki::issue(&self.certs_dir(), name, &spiffe, &[])?;
        Ok(())
    }

    pub async fn stop_component(&mut self, component: Component) -> anyhow::Result<()> {
        self.inner.stop_component(component).await
    }

    pub async fn restart(&mut self, component: Component) -> anyhow::Result<()> {
        self.inner.restart(component).await
    }

    /// Stops `component` and starts it again, on its data, with its settings changed by
    /// `change`: what an operator's redeploy with another configuration does.
    pub async fn reconfigure(
        &mut self,
        component: Component,
        change: impl FnOnce(&mut MeshOptions),
    ) -> anyhow::Result<()> {
        self.inner.stop_component(component).await?;
        change(&mut self.inner.options);
        self.inner.restart(component).await
    }

    /// Drains every component, then drops the sandbox's PostgreSQL schemas (also when
    /// draining failed, so a failing test leaves nothing behind).
    pub async fn stop(self) -> anyhow::Result<()> {
        let options = self.inner.options.clone();
        let stopped = self.inner.stop().await;
        if let (DatabaseChoice::Postgres { schema_prefix, .. }, Some(role)) =
            (&options.database, self.service_role)
        {
            for component in palisade::COMPONENTS
                .into_iter()
                .filter(|c| c.has_database())
            {
                let schema = format!("{schema_prefix}_{}", component.name());
                let config = DbConfig::postgres(role.admin_url(), Some(schema));
                let db = Db::connect(&config).await?;
                db.drop_schema().await?;
                db.close().await;
            }
            role.drop_now().await?;
        }
        stopped
    }
}

/// A port block for a `palisade dev` in a child process: the gateway and components on
/// `base..base+4`, their admin ports on `base+10..base+14`, all free right now.
pub fn free_port_base() -> u16 {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    loop {
        // A cheap xorshift: spread concurrent test processes over the range.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let base = 20_000 + (seed % 2_000) as u16 * 20;
        let free = (base..base + 4)
            .chain(base + 10..base + 14)
            .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return base;
        }
    }
}

/// `message` with `authorization: ApiKey <key>`.
pub fn with_api_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("ApiKey {key}").parse().expect("api keys are ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Polls `check` until it returns `Some`, for effects that arrive asynchronously (the outbox).
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn init_test_logging() {
    // The harness captures these per test and shows them only when a test fails.
    palisade_telemetry::init_test_logging();
}

/// `grpc_server_{counter}_total{…}` of `component`'s unary calls to `service`, ending with
/// `labels`.
fn unary_series(counter: &str, component: Component, service: &str, labels: &str) -> String {
    format!(
        r#"grpc_server_{counter}_total{{component="{}",grpc_type="unary",grpc_service="{service}",{labels}}}"#,
        component.name()
    )
}

/// A command running `program` (the `palisade` binary under test) without the `PALISADE_*`
/// settings of whoever runs the tests: a `PALISADE_DATABASE_URL` exported for real work
/// must not have a test migrate and write into that database.
pub fn palisade_command(program: &str) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PALISADE_") {
            command.env_remove(name);
        }
    }
    command
}
