//! `palisade serve <component>` and `palisade migrate`: one component, configured by flags or
//! `PALISADE_*` environment variables (flags win), failing fast on bad configuration.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::Args;
use palisade::{Component, ComponentSettings, Ports, start_component};
use palisade_db::{Db, DbConfig};
use palisade_grpc::{Listeners, MeshAddresses};
use palisade_identity::LockoutPolicy;
use palisade_tls::{CertPaths, MeshTls};
use tokio::net::TcpListener;

#[derive(Args)]
pub struct ServeArgs {
    /// identity, compliance, observability or gateway.
    component: String,
    /// Where the component serves gRPC. Default: all addresses, on the port its peers dial by
    /// default (gateway 7900, identity 7901, compliance 7902, observability 7903).
    #[arg(long, env = "PALISADE_LISTEN")]
    listen: Option<SocketAddr>,
    #[arg(
        long,
        env = "PALISADE_CERTS_DIR",
        default_value = "/etc/palisade/certs"
    )]
    certs_dir: PathBuf,
    /// The admin HTTP port: `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, env = "PALISADE_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    admin_listen: SocketAddr,
    #[command(flatten)]
    database: DatabaseArgs,
    #[arg(
        long,
        env = "PALISADE_IDENTITY_URL",
        default_value = "http://identity:7901"
    )]
    identity_url: String,
    #[arg(
        long,
        env = "PALISADE_COMPLIANCE_URL",
        default_value = "http://compliance:7902"
    )]
    compliance_url: String,
    #[arg(
        long,
        env = "PALISADE_OBSERVABILITY_URL",
        default_value = "http://observability:7903"
    )]
    observability_url: String,
    /// The gateway's public port, as the status page probes it: `https://` when it serves TLS
    /// (the probe then does not verify the public certificate, like a kubelet's HTTPS probe).
    #[arg(
        long,
        env = "PALISADE_GATEWAY_URL",
        default_value = "http://gateway:7900"
    )]
    gateway_url: String,
    /// identity: wrong passwords within the failure window that lock a user out (1 to 1000).
    #[arg(
        long,
        env = "PALISADE_LOGIN_MAX_FAILURES",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    login_max_failures: u32,
    /// identity: seconds in which failed logins are counted (1 to 30 days).
    #[arg(long, env = "PALISADE_LOGIN_FAILURE_WINDOW", default_value_t = 900, value_parser = seconds(MONTH))]
    login_failure_window: u64,
    /// identity: seconds a locked-out user's logins are refused (1 to 30 days).
    #[arg(long, env = "PALISADE_LOGIN_LOCKOUT", default_value_t = 900, value_parser = seconds(MONTH))]
    login_lockout: u64,
    /// identity: threads hashing passwords (Argon2id) at the lowest CPU priority, so the most
    /// cores a login flood can keep busy (0: half the available cores, at least one).
    #[arg(long, env = "PALISADE_HASHING_THREADS", default_value_t = 0)]
    hashing_threads: usize,
    /// identity: the longest lifetime of an API key, in days (1 to 36500).
    #[arg(long, env = "PALISADE_API_KEY_MAX_LIFETIME", default_value_t = 365, value_parser = lifetime_days())]
    api_key_max_lifetime: u64,
    /// identity: the longest a sign-in session lasts, in days, however often its refresh
    /// token is used; then the user signs in again (1 to 36500).
    #[arg(long, env = "PALISADE_SESSION_MAX_LIFETIME", default_value_t = 90, value_parser = lifetime_days())]
    session_max_lifetime: u64,
    /// identity: a file holding the key-encryption key (32 random bytes, base64) that seals
    /// token-signing keys in the database; without it they are stored plain (with a warning).
    /// Make one with `head -c 32 /dev/urandom | base64`.
    #[arg(long, env = "PALISADE_SIGNING_KEY_KEK_FILE")]
    signing_key_kek_file: Option<PathBuf>,
    /// identity: the KEK being rotated away from. Keys sealed under it still open, and are
    /// sealed again under `--signing-key-kek-file` at start; drop it once every replica has
    /// started with the new KEK.
    #[arg(
        long,
        env = "PALISADE_SIGNING_KEY_PREVIOUS_KEK_FILE",
        requires = "signing_key_kek_file"
    )]
    signing_key_previous_kek_file: Option<PathBuf>,
    /// Seconds a verified API key is cached by the gateway (1 to 3600): a revoked key works
    /// for up to this long.
    #[arg(
        long,
        env = "PALISADE_API_KEY_CACHE_TTL",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    api_key_cache_ttl: u64,
    /// gateway: seconds between fetches of identity's JWKS (1 to 86400); a signing key
    /// identity stops publishing stops verifying access tokens within about this long.
    #[arg(long, env = "PALISADE_JWKS_REFRESH", default_value_t = 60, value_parser = seconds(DAY))]
    jwks_refresh: u64,
    /// gateway: seconds a unary call may take when its client sends no `grpc-timeout` (1 to
    /// 86400; a client's own deadline wins; streaming calls have none by default).
    #[arg(
        long,
        env = "PALISADE_DEFAULT_DEADLINE",
        default_value_t = palisade_gateway::DEFAULT_DEADLINE.as_secs(),
        value_parser = seconds(DAY)
    )]
    default_deadline: u64,
    /// gateway: seconds a public connection may stay with nothing happening on it before it is
    /// closed (1 to 86400; HTTP/2 GOAWAY; clients reconnect when they next call).
    #[arg(
        long,
        env = "PALISADE_IDLE_TIMEOUT",
        default_value_t = palisade_gateway::IDLE_TIMEOUT.as_secs(),
        value_parser = seconds(DAY)
    )]
    idle_timeout: u64,
    /// gateway: public calls (`Login`, `RefreshToken`, ...; credential or not) and reflection
    /// streams one client address may make per second; 0 is unlimited (for a gateway behind
    /// a proxy that hides clients' addresses, whose calls would all share one rate).
    #[arg(
        long,
        env = "PALISADE_PUBLIC_CALLS_PER_SECOND",
        default_value_t = palisade_gateway::PublicCallRate::DEFAULT.per_second
    )]
    public_calls_per_second: u32,
    /// gateway: public calls one client address may make at once.
    #[arg(
        long,
        env = "PALISADE_PUBLIC_CALL_BURST",
        default_value_t = palisade_gateway::PublicCallRate::DEFAULT.burst
    )]
    public_call_burst: u32,
    /// gateway: proxies in front of the gateway (comma-separated addresses or blocks such as
    /// `10.0.0.0/8`) whose `X-Forwarded-For` names the client, for per-client limits and
    /// audit records; from any other peer the header is ignored. None by default. List only
    /// proxies that append the address they saw to `X-Forwarded-For`: one that passes the
    /// client's header on untouched would let clients choose the address they are counted as.
    #[arg(long, env = "PALISADE_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<palisade_gateway::IpBlock>,
    /// gateway: open connections one client address (IPv6: one /64) may hold on the public
    /// port, so one client cannot take every connection; trusted proxies are not capped; 0 is
    /// no cap.
    #[arg(
        long,
        env = "PALISADE_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = palisade_gateway::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    )]
    max_connections_per_address: usize,
    /// Browser origins (comma-separated, `*` for any) allowed to call the gateway's REST and
    /// gRPC-Web routes; none by default, which sends no CORS headers.
    #[arg(long, env = "PALISADE_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    cors_allowed_origins: Vec<String>,
    /// PEM certificate chain for TLS on the gateway's public port (with --public-tls-key);
    /// without it the port speaks h2c and plain HTTP/1.1.
    #[arg(long, env = "PALISADE_PUBLIC_TLS_CERT", requires = "public_tls_key")]
    public_tls_cert: Option<PathBuf>,
    /// PEM private key of --public-tls-cert.
    #[arg(long, env = "PALISADE_PUBLIC_TLS_KEY", requires = "public_tls_cert")]
    public_tls_key: Option<PathBuf>,
    /// gateway: seconds a tenant's state, limits and usage are cached (1 to 3600; a suspended
    /// tenant's credentials keep working for at most this long, or up to 30 s more while
    /// identity cannot answer).
    #[arg(long, env = "PALISADE_TENANT_CACHE_TTL", default_value_t = 5, value_parser = seconds(3600))]
    tenant_cache_ttl: u64,
    /// gateway: a domain whose subdomains name tenants: with `tenants.example.com`, public
    /// calls to `acme.tenants.example.com` (e.g. Login) are made in tenant `acme`.
    #[arg(long, env = "PALISADE_TENANT_BASE_DOMAIN")]
    tenant_base_domain: Option<String>,
    /// gateway: connection workers, each a thread serving its connections start to end
    /// (0: one per available core, which respects a container's CPU limit).
    #[arg(long, env = "PALISADE_GATEWAY_WORKERS", default_value_t = 0)]
    gateway_workers: usize,
}

const DAY_SECS: u64 = 86_400;

/// A lifetime in days, refused when 0 or beyond a century (beyond which, in microseconds, the
/// arithmetic on expiry times would overflow long before anyone needs it).
fn lifetime_days() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(1..=36_500)
}

const DAY: u64 = 86_400;
const MONTH: u64 = 30 * DAY;

/// Whole seconds from 1 to `most`: no setting here means "off" at 0.
fn seconds(most: u64) -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(1..=most)
}

#[derive(Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL; without it the component uses SQLite under --data-dir. Its value is
    /// never shown in `--help`: it may hold a password.
    #[arg(long, env = "PALISADE_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// PostgreSQL schema to use (created if missing; `dead-letters` refuses a missing one);
    /// defaults to the component's name, so components sharing one database never share
    /// tables.
    #[arg(long, env = "PALISADE_DATABASE_SCHEMA")]
    database_schema: Option<String>,
    #[arg(long, env = "PALISADE_DATA_DIR", default_value = "/var/lib/palisade")]
    data_dir: PathBuf,
}

impl DatabaseArgs {
    pub fn config(&self, component: Component) -> DbConfig {
        match &self.database_url {
            Some(url) => {
                let schema = self
                    .database_schema
                    .clone()
                    .unwrap_or_else(|| component.name().to_owned());
                DbConfig::postgres(url, Some(schema))
            }
            None => DbConfig::sqlite_in(&self.data_dir, component.name()),
        }
    }
}

#[derive(Args)]
pub struct MigrateArgs {
    /// identity or compliance.
    component: String,
    #[command(flatten)]
    database: DatabaseArgs,
}

impl ServeArgs {
    pub fn component_name(&self) -> &str {
        &self.component
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let component = Component::parse(&args.component)?;
    let tls = MeshTls::load(CertPaths::in_dir(&args.certs_dir, component.name()))
        .await
        .with_context(|| {
            format!(
                "loading {} certificates from {}",
                component.name(),
                args.certs_dir.display()
            )
        })?;
    let listen = (args.listen).unwrap_or_else(|| default_listen(component));
    if component == Component::Gateway
        && args.public_tls_cert.is_none()
        && !listen.ip().is_loopback()
    {
        // Fine behind a proxy or load balancer that terminates TLS; otherwise passwords and
        // API keys cross the network in clear.
        tracing::warn!(%listen, "the public port speaks plaintext (h2c, HTTP/1.1): give it --public-tls-cert/--public-tls-key unless TLS ends in front of it");
    }
    let grpc = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let admin = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding the admin port {}", args.admin_listen))?;
    let settings = ComponentSettings {
        tls,
        db: args.database.config(component),
        mesh: MeshAddresses {
            identity: args.identity_url,
            compliance: args.compliance_url,
            observability: args.observability_url,
            gateway: args.gateway_url,
        },
        api_key_cache_ttl: Duration::from_secs(args.api_key_cache_ttl),
        jwks_refresh: Duration::from_secs(args.jwks_refresh),
        default_deadline: Duration::from_secs(args.default_deadline),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        public_call_rate: (args.public_calls_per_second > 0).then_some(
            palisade_gateway::PublicCallRate {
                per_second: args.public_calls_per_second,
                burst: args.public_call_burst,
            },
        ),
        trusted_proxies: args.trusted_proxies,
        max_connections_per_address: args.max_connections_per_address,
        cors_allowed_origins: args.cors_allowed_origins,
        public_tls: args.public_tls_cert.zip(args.public_tls_key),
        login_lockout: LockoutPolicy {
            max_failures: args.login_max_failures,
            window: Duration::from_secs(args.login_failure_window),
            lock_for: Duration::from_secs(args.login_lockout),
        },
        tenant_cache_ttl: Duration::from_secs(args.tenant_cache_ttl),
        tenant_base_domain: args.tenant_base_domain,
        api_key_max_lifetime: Duration::from_secs(args.api_key_max_lifetime * DAY_SECS),
        session_max_lifetime: Duration::from_secs(args.session_max_lifetime * DAY_SECS),
        signing_key_kek: args.signing_key_kek_file,
        signing_key_previous_kek: args.signing_key_previous_kek_file,
        gateway_workers: args.gateway_workers,
        hashing_threads: args.hashing_threads,
    };
    let listeners = Listeners {
        grpc,
        admin: Some(admin),
    };
    let (mut running, operator_key) = start_component(component, listeners, settings).await?;
    if let Some(key) = operator_key {
        // Printed once, to the operator's terminal or job log; only its hash is stored.
        println!("bootstrap operator api key (shown once): {key}");
    }
    tracing::info!(component = component.name(), addr = %running.local_addr, admin = %args.admin_listen, "serving");
    let ended = tokio::select! {
        () = shutdown_signal() => None,
        ended = running.wait_ended() => Some(ended),
    };
    match ended {
        None => running.stop().await.map_err(|e| anyhow::anyhow!(e)),
        // A component that ends by itself has failed: exit so the orchestrator restarts it.
        Some(ended) => anyhow::bail!("{} stopped unexpectedly: {ended:?}", component.name()),
    }
}

/// Where a component listens unless told: its `palisade dev` port, which the defaults of
/// `--identity-url` and its siblings dial.
fn default_listen(component: Component) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], Ports::DEV.of(component)))
}

pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let component = Component::parse(&args.component)?;
    let migrations = match component {
        Component::Identity => palisade_identity::migrations(),
        Component::Compliance => palisade_compliance::migrations(),
        _ => bail!("{} keeps no database", component.name()),
    };
    let db = Db::connect(&args.database.config(component)).await?;
    db.migrate(&migrations).await?;
    db.close().await;
    println!("{} database is up to date", component.name());
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn each_component_listens_where_its_peers_dial_it_by_default() {
        let args = Serve::parse_from(["serve", "identity"]).args;
        for (component, url) in [
            (Component::Identity, &args.identity_url),
            (Component::Compliance, &args.compliance_url),
            (Component::Observability, &args.observability_url),
            (Component::Gateway, &args.gateway_url),
        ] {
            let port = url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
            assert_eq!(default_listen(component).port(), port, "{url}");
        }
    }

    #[test]
    fn lifetimes_in_days_are_refused_when_zero_or_absurd() {
        for flag in ["--api-key-max-lifetime", "--session-max-lifetime"] {
            for bad in ["0", "36501", "18446744073709551615"] {
                let parsed = Serve::try_parse_from(["serve", "identity", flag, bad]);
                assert!(parsed.is_err(), "{flag} {bad}");
            }
            assert!(Serve::try_parse_from(["serve", "identity", flag, "36500"]).is_ok());
        }
    }

    #[test]
    fn durations_and_counts_are_refused_when_zero_or_absurd() {
        // Zero would not mean "off" but a cut after a second, or a lockout at the first
        // wrong password; the largest values would overflow the clocks they are added to.
        for (component, flag, most) in [
            ("identity", "--login-max-failures", "1000"),
            ("identity", "--login-failure-window", "2592000"),
            ("identity", "--login-lockout", "2592000"),
            ("gateway", "--jwks-refresh", "86400"),
            ("gateway", "--default-deadline", "86400"),
            ("gateway", "--idle-timeout", "86400"),
            ("gateway", "--tenant-cache-ttl", "3600"),
        ] {
            let too_many = (most.parse::<u64>().unwrap() + 1).to_string();
            for bad in ["0", too_many.as_str(), "18446744073709551615"] {
                let parsed = Serve::try_parse_from(["serve", component, flag, bad]);
                assert!(parsed.is_err(), "{flag} {bad}");
            }
            assert!(
                Serve::try_parse_from(["serve", component, flag, most]).is_ok(),
                "{flag}"
            );
        }
    }

    #[test]
    fn the_api_key_cache_ttl_is_refused_when_zero_or_absurd() {
        // Zero would trust no answer (each call asks again); an hour is as long as a revoked
        // key should go on working.
        let flag = "--api-key-cache-ttl";
        for bad in ["0", "3601", "18446744073709551615"] {
            assert!(
                Serve::try_parse_from(["serve", "gateway", flag, bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Serve::try_parse_from(["serve", "gateway", flag, "3600"]).is_ok());
    }

    #[test]
    fn help_never_shows_the_database_url() {
        let command = Serve::command();
        let database_url = (command.get_arguments())
            .find(|arg| arg.get_id() == "database_url")
            .expect("the argument");
        assert!(database_url.is_hide_env_values_set());
    }
}
