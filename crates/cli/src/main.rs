//! `palisade`: run the dev mesh, serve one component, make the dev PKI, migrate a database, and
//! list or requeue an outbox's dead letters.

mod banner;
mod dead_letters;
mod serve;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use palisade::{LocalMesh, MeshOptions, Ports};
use palisade_telemetry::{LogFormat, TelemetryConfig, init_logging};

#[derive(Parser)]
#[command(name = "palisade", version, about = "A multi-tenant gRPC service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole mesh on loopback: dev PKI, SQLite files and an operator key in the data dir.
    Dev {
        #[arg(long, env = "PALISADE_DATA_DIR", default_value = ".palisade")]
        data_dir: PathBuf,
        /// The gateway listens here; identity, compliance and observability on the next three
        /// ports; their admin HTTP ports (metrics, health, readiness) ten above each (1 to
        /// 65522, so the last admin port, 13 above, is a port).
        #[arg(
            long,
            env = "PALISADE_PORT_BASE",
            default_value_t = Ports::DEV.gateway,
            value_parser = clap::value_parser!(u16).range(1..=65522)
        )]
        port_base: u16,
        /// Browser origins (comma-separated, `*` for any) allowed to call the gateway's REST
        /// and gRPC-Web routes, e.g. a web app's dev server; none by default.
        #[arg(long, env = "PALISADE_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
        cors_allowed_origins: Vec<String>,
    },
    /// Serve one component (identity, compliance, observability or gateway).
    // Boxed: the flags make it far larger than the other commands (clippy's large_enum_variant).
    Serve(Box<serve::ServeArgs>),
    /// Manage the dev PKI.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Apply a component's database migrations and exit.
    Migrate(serve::MigrateArgs),
    /// List the outbox messages a component's sink rejected (dead letters), or put them back.
    DeadLetters(dead_letters::DeadLetterArgs),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a CA and one certificate per component (SPIFFE URI SANs), keeping existing files.
    Init {
        #[arg(long, env = "PALISADE_CERTS_DIR", default_value = ".palisade/certs")]
        dir: PathBuf,
        #[arg(long, env = "PALISADE_TRUST_DOMAIN", default_value = palisade_tls::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Components to issue certificates for.
        #[arg(long = "component", default_values = ["gateway", "identity", "compliance", "observability"])]
        components: Vec<String>,
        /// Extra DNS names for every certificate (e.g. Kubernetes service names).
        #[arg(long = "dns")]
        dns: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Dev {
            data_dir,
            port_base,
            cors_allowed_origins,
        } => {
            let telemetry =
                palisade_telemetry::init(TelemetryConfig::new(LogFormat::Pretty, "palisade"));
            let mut options = MeshOptions::new(data_dir);
            options.ports = Ports::starting_at(port_base)?;
            options.admin_ports = Some(Ports::starting_at(port_base.saturating_add(10))?);
            options.cors_allowed_origins = cors_allowed_origins;
            let mut mesh = LocalMesh::start(options)
                .await
                .context("starting the mesh")?;
            banner::print(&mesh)?;
            let failed = tokio::select! {
                () = serve::shutdown_signal() => None,
                failed = async { loop {
                    if let Some(failed) = mesh.take_failed().await { break failed; }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                } } => Some(failed),
            };
            match &failed {
                None => tracing::info!("shutting down"),
                Some((component, error)) => {
                    tracing::error!(
                        component = component.name(),
                        error = format!("{error:#}"),
                        "component failed; stopping the mesh"
                    );
                }
            }
            let stopped = mesh.stop().await;
            telemetry.shutdown();
            // A mesh that stopped because a component failed exits with that failure, so
            // scripts and supervisors see it.
            match failed {
                Some((_, error)) => Err(error),
                None => stopped,
            }
        }
        Command::Serve(args) => {
            let service = format!("palisade-{}", args.component_name());
            let telemetry =
                palisade_telemetry::init(TelemetryConfig::new(LogFormat::Json, &service));
            let served = serve::serve(*args).await;
            telemetry.shutdown();
            served
        }
        Command::Certs {
            command:
                CertsCommand::Init {
                    dir,
                    trust_domain,
                    components,
                    dns,
                },
        } => {
            let names: Vec<&str> = components.iter().map(String::as_str).collect();
            palisade_tls::pki::init(&dir, &trust_domain, &names, &dns)?;
            println!("dev PKI in {} for {}", dir.display(), names.join(", "));
            Ok(())
        }
        Command::Migrate(args) => {
            init_logging(LogFormat::Pretty);
            serve::migrate(args).await
        }
        Command::DeadLetters(args) => {
            init_logging(LogFormat::Pretty);
            dead_letters::run(args).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_base_leaves_room_for_every_admin_port() {
        for bad in ["0", "65523", "65535"] {
            let parsed = Cli::try_parse_from(["palisade", "dev", "--port-base", bad]);
            assert!(parsed.is_err(), "{bad}");
        }
        assert!(Cli::try_parse_from(["palisade", "dev", "--port-base", "65522"]).is_ok());
    }
}
