//! What the gateway costs: a cheap unary RPC (`TenantService.GetTenant`) called
//!
//! - **direct** on identity over mTLS with the gateway's mesh certificate and the tenant
//!   context headers the gateway would send (the baseline);
//! - through the gateway over **gRPC** (h2c, one HTTP/2 connection, API key);
//! - through the gateway over **REST** (`GET /v1/tenants/bench`, one HTTP/1.1 keep-alive
//!   connection per client, API key);
//!
//! at `CONCURRENCY` closed-loop clients (throughput, p50, p99), then direct and gateway gRPC
//! again at half the gateway's throughput, paced (open loop), for the p50 the gateway adds
//! when it is not saturated. Beside them at half load, the floors that added p50 is read
//! against (`gateway_overhead/floors.rs`): the direct call through a bare TCP relay, and
//! through a minimal HTTP/2 proxy (hyper and a tonic channel, no gateway code), and the same
//! proxy on hyper's HTTP/2 client without the tonic channel. Each path's
//! run is cut into slices taken in turns with the other paths', so a burst of other work on the
//! machine lands on all of them rather than on one (ratios between paths are what these
//! numbers are good for). The mesh runs as `palisade dev`; the gateway measured is a separate
//! `palisade serve gateway` process in front of it, so its RSS (`VmRSS`, and the peak `VmHWM`)
//! is the gateway's alone, and so is the CPU time per call reported for it (the mesh's is the
//! `palisade dev` process: identity and the rest; a floor's is its thread's). CPU per call is
//! the steadiest figure on a busy machine; latencies move with whatever else runs. Everything
//! shares one machine, so the load generator competes with the processes it measures. Run
//! with `cargo bench -p palisade --bench gateway_overhead`; with
//! `PALISADE_BENCH_OTHER_BUILD=<path to another palisade binary>`, that build's gateway is
//! measured at half load too, in the same run.

use std::{
    future::Future,
    pin::Pin,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use palisade_proto::palisade::identity::v1::{
    CreateTenantRequest, GetTenantRequest, Tenant, VerifyApiKeyRequest,
    api_key_service_client::ApiKeyServiceClient, tenant_service_client::TenantServiceClient,
};
use palisade_testkit::{free_port_base, with_api_key};
use palisade_tls::{CertPaths, MeshTls};
use support::{KillOnDrop, cpu_time_of, us, wait_for_key, with_context, write_syscalls_of};
use tonic::transport::Channel;

#[path = "gateway_overhead/floors.rs"]
mod floors;
mod support;

const CONCURRENCY: usize = 16;
const WARMUP: Duration = Duration::from_secs(2);
const RUN: Duration = Duration::from_secs(5);
/// `RUN` is taken in this many slices per path, the paths in turns.
const ROUNDS: usize = 5;
/// Names another `palisade` binary whose gateway is measured at half load beside this build's,
/// for an A/B comparison within one run (latencies move between runs more than most changes
/// move them).
const OTHER_BUILD: &str = "PALISADE_BENCH_OTHER_BUILD";

struct Sample {
    throughput: f64,
    p50: Duration,
    p99: Duration,
    /// CPU time (user + system) per call of the gateway and of the mesh during the run.
    cpu: [Duration; 2],
    /// Write system calls per call of the gateway and of the mesh during the run.
    writes: [f64; 2],
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let base = free_port_base();
    let _mesh = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["dev", "--data-dir"])
            .arg(dir.path())
            .args(["--port-base", &base.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let key = wait_for_key(dir.path()).await?;
    let certs = dir.path().join("certs");
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let gateway_of = |binary: &std::path::Path| -> anyhow::Result<(KillOnDrop, u16)> {
        let port = free_port_base();
        let child = Command::new(binary)
            .args(["serve", "gateway", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", port + 10))
            .arg("--certs-dir")
            .arg(&certs)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--identity-url", &url(base + 1)])
            .args(["--compliance-url", &url(base + 2)])
            .args(["--observability-url", &url(base + 3)])
            .args(["--gateway-url", &url(port)])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok((KillOnDrop(child), port))
    };
    let (gateway, gateway_port) = gateway_of(env!("CARGO_BIN_EXE_palisade").as_ref())?;
    // A/B within one run: a gateway of another build (say, main's) measured beside this one.
    let other_build = std::env::var_os(OTHER_BUILD)
        .map(|binary| gateway_of(binary.as_ref()))
        .transpose()?;
    let gateway_proc = Some(format!("/proc/{}", gateway.0.id()));
    let mesh_proc = format!("/proc/{}", _mesh.0.id());

    let via_gateway = connect(&url(gateway_port)).await?;
    let create = CreateTenantRequest {
        tenant: Some(Tenant {
            display_name: "Bench".into(),
            ..Tenant::default()
        }),
        tenant_id: "bench".into(),
    };
    TenantServiceClient::new(via_gateway.clone())
        .create_tenant(with_api_key(create, &key))
        .await?;

    // Direct: the gateway's certificate and the context the gateway would write.
    let tls = MeshTls::load(CertPaths::in_dir(&certs, "gateway")).await?;
    let direct = palisade_tls::channel(&url(base + 1), &tls, "identity")?;
    let principal = ApiKeyServiceClient::new(direct.clone())
        .verify_api_key(VerifyApiKeyRequest { key: key.clone() })
        .await?
        .into_inner()
        .principal
        .ok_or_else(|| anyhow::anyhow!("no principal"))?;
    let context = Arc::new((principal.tenant_id, principal.id, "api-key"));

    let direct = Path {
        call: direct_path(direct, &context),
        proxy: None,
    };
    let gateway_grpc = Path {
        call: gateway_path(via_gateway, &key),
        proxy: gateway_proc.clone(),
    };
    let gateway_rest = Path {
        call: rest_call(&format!("127.0.0.1:{gateway_port}"), &key).await?,
        proxy: gateway_proc,
    };

    let names = ["direct (mTLS)", "gateway gRPC", "gateway REST"];
    let rows = interleaved(
        &[direct.clone(), gateway_grpc.clone(), gateway_rest],
        None,
        &mesh_proc,
    )
    .await?;
    for (name, sample) in names.iter().zip(&rows) {
        eprintln!(
            "{name}: {:.0} calls/s p50 {:?} p99 {:?}",
            sample.throughput, sample.p50, sample.p99
        );
    }
    let rss = proc_status(gateway.0.id(), "VmRSS:");
    let hwm = proc_status(gateway.0.id(), "VmHWM:");

    // At half load, beside direct and the gateway: the floors (floors.rs), the same direct
    // call through a bare TCP relay and through a minimal HTTP/2 proxy.
    let through_floor = |floor: floors::Floor, channel: Channel| Path {
        call: direct_path(channel, &context),
        proxy: Some(floor.proc_dir),
    };
    let relay = floors::tcp_relay(base + 1)?;
    let relayed = palisade_tls::channel(&url(relay.port), &tls, "identity")?;
    let h2_proxy = floors::h2_proxy(url(base + 1), tls.clone())?;
    let h2_proxied = connect(&url(h2_proxy.port)).await?;
    let bare = floors::h2_proxy_bare_client(url(base + 1), tls.clone())?;
    let bare_proxied = connect(&url(bare.port)).await?;
    let mut paths = vec![
        direct,
        gateway_grpc,
        through_floor(relay, relayed),
        through_floor(h2_proxy, h2_proxied),
        through_floor(bare, bare_proxied),
    ];
    if let Some((other, port)) = &other_build {
        paths.push(Path {
            call: gateway_path(connect(&url(*port)).await?, &key),
            proxy: Some(format!("/proc/{}", other.0.id())),
        });
    }
    let half_rate = rows[1].throughput / 2.0;
    let half = interleaved(&paths, Some(half_rate), &mesh_proc).await?;
    let [
        half_direct,
        half_gateway,
        half_relayed,
        half_h2_proxied,
        half_bare,
    ] = &half[..5]
    else {
        unreachable!("one sample per path")
    };
    let added = |sample: &Sample| us(sample.p50.saturating_sub(half_direct.p50));

    let baseline = rows[0].throughput;
    println!(
        "\ngateway overhead: GetTenant, {CONCURRENCY} closed-loop clients, {RUN:?} per path after {WARMUP:?} warm-up, in {ROUNDS} interleaved slices"
    );
    println!(
        "  {:<15} {:>10} {:>10} {:>10} {:>12} {:>14} {:>14}",
        "path", "calls/s", "p50", "p99", "vs direct", "gateway CPU", "mesh CPU"
    );
    for (name, s) in names.iter().zip(&rows) {
        println!(
            "  {name:<15} {:>10.0} {:>10} {:>10} {:>11.2}x {:>9}/call {:>9}/call",
            s.throughput,
            us(s.p50),
            us(s.p99),
            s.throughput / baseline,
            us(s.cpu[0]),
            us(s.cpu[1]),
        );
    }
    println!(
        "  half load ({half_rate:.0} calls/s paced): p50 direct {}, gateway gRPC {}, added {} (p99 {} vs {})",
        us(half_direct.p50),
        us(half_gateway.p50),
        added(half_gateway),
        us(half_direct.p99),
        us(half_gateway.p99),
    );
    println!(
        "  a bare TCP relay hop at the same rate adds {} (p50 {}, relay CPU {}/call): the share \
         of the added p50 that any separate proxy process pays here",
        added(half_relayed),
        us(half_relayed.p50),
        us(half_relayed.cpu[0]),
    );
    println!(
        "  a minimal HTTP/2 proxy hop (hyper server, tonic mTLS channel, nothing else) adds {} \
         (p50 {}, proxy CPU {}/call): what proxying costs before any gateway code runs",
        added(half_h2_proxied),
        us(half_h2_proxied.p50),
        us(half_h2_proxied.cpu[0]),
    );
    println!(
        "  the same minimal proxy on hyper's HTTP/2 client, without the tonic channel, adds {} \
         (p50 {}, proxy CPU {}/call)",
        added(half_bare),
        us(half_bare.p50),
        us(half_bare.cpu[0]),
    );
    if let Some(other) = half.get(5) {
        println!(
            "  the gateway of the other build ({OTHER_BUILD}) adds {} (p50 {}, gateway CPU {}/call)",
            added(other),
            us(other.p50),
            us(other.cpu[0]),
        );
    }
    println!(
        "  half load CPU per call: gateway {}, mesh {} direct / {} through the gateway",
        us(half_gateway.cpu[0]),
        us(half_direct.cpu[1]),
        us(half_gateway.cpu[1]),
    );
    println!(
        "  half load write syscalls per call: gateway {:.2}, mesh {:.2} direct / {:.2} through the gateway",
        half_gateway.writes[0], half_direct.writes[1], half_gateway.writes[1],
    );
    println!(
        "  gateway process (palisade serve gateway) RSS after the load: {} (peak {})",
        rss.as_deref().unwrap_or("?"),
        hwm.as_deref().unwrap_or("?")
    );
    println!(
        "  targets: gRPC >= 0.6x direct ({:.2}x), REST >= 0.5x ({:.2}x), added p50 <= 150 µs at half load ({}), RSS <= 40 MiB",
        rows[1].throughput / baseline,
        rows[2].throughput / baseline,
        added(half_gateway),
    );
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<Channel> {
    let started = Instant::now();
    loop {
        match tonic::transport::Endpoint::from_shared(url.to_owned())?
            .connect()
            .await
        {
            Ok(channel) => return Ok(channel),
            Err(error) if started.elapsed() > Duration::from_secs(30) => return Err(error.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn get_tenant() -> GetTenantRequest {
    GetTenantRequest {
        name: "tenants/bench".into(),
    }
}

async fn gateway_call(channel: Channel, key: String) -> anyhow::Result<()> {
    TenantServiceClient::new(channel)
        .get_tenant(with_api_key(get_tenant(), &key))
        .await?;
    Ok(())
}

async fn direct_call(
    channel: Channel,
    context: Arc<(String, String, &'static str)>,
) -> anyhow::Result<()> {
    TenantServiceClient::new(channel)
        .get_tenant(with_context(get_tenant(), &context)?)
        .await?;
    Ok(())
}

/// The direct call (`context` in its headers) over `channel`.
fn direct_path(channel: Channel, context: &Arc<(String, String, &'static str)>) -> Call {
    let context = context.clone();
    Arc::new(move |_| Box::pin(direct_call(channel.clone(), context.clone())))
}

/// A gateway call (with `key`) over `channel`.
fn gateway_path(channel: Channel, key: &str) -> Call {
    let key = key.to_owned();
    Arc::new(move |_| Box::pin(gateway_call(channel.clone(), key.clone())))
}

/// A path measured: how a call is made on it, and the `/proc` directory of the proxy on it (a
/// gateway process, a floor's thread), if any.
#[derive(Clone)]
struct Path {
    call: Call,
    proxy: Option<String>,
}

/// One call on a path, made by client number `client` (`0..CONCURRENCY`).
type Call =
    Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

/// GetTenant over REST, each client on its own HTTP/1.1 keep-alive connection.
async fn rest_call(addr: &str, key: &str) -> anyhow::Result<Call> {
    let mut senders = Vec::new();
    for _ in 0..CONCURRENCY {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        senders.push(tokio::sync::Mutex::new(sender));
    }
    let senders = Arc::new(senders);
    let (addr, auth) = (addr.to_owned(), format!("ApiKey {key}"));
    Ok(Arc::new(move |client| {
        let (senders, addr, auth) = (senders.clone(), addr.clone(), auth.clone());
        Box::pin(async move {
            let request = http::Request::get("/v1/tenants/bench")
                .header("host", &addr)
                .header("authorization", &auth)
                .body(Empty::<Bytes>::new())?;
            let response = senders[client].lock().await.send_request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            anyhow::ensure!(status == 200, "REST call answered {status}");
            Ok(())
        })
    }))
}

/// Each path in turn: a warm-up of `WARMUP`, then `RUN` each in `ROUNDS` slices taken in turns
/// (direct, gateway, direct, …), so that whatever else the machine is doing meanwhile weighs
/// on every path alike. Closed loop (`rate` `None`), or paced at `rate` calls a second. The
/// CPU time and write system calls counted for a path are those of its proxy and of the mesh
/// (`mesh` is its `/proc` directory) during the path's slices.
async fn interleaved(paths: &[Path], rate: Option<f64>, mesh: &str) -> anyhow::Result<Vec<Sample>> {
    let slice = RUN / ROUNDS as u32;
    let mut runs: Vec<(Vec<Duration>, [Duration; 2], [u64; 2])> =
        vec![Default::default(); paths.len()];
    for path in paths {
        load(&path.call, rate, WARMUP).await?;
    }
    for _ in 0..ROUNDS {
        for (path, (latencies, cpu, writes)) in paths.iter().zip(&mut runs) {
            let procs = [path.proxy.as_deref(), Some(mesh)];
            let read = || {
                procs.map(|dir| {
                    dir.map_or((Duration::ZERO, 0), |dir| {
                        (cpu_time_of(dir), write_syscalls_of(dir))
                    })
                })
            };
            let before = read();
            latencies.extend(load(&path.call, rate, slice).await?);
            let after = read();
            for i in 0..2 {
                cpu[i] += after[i].0.saturating_sub(before[i].0);
                writes[i] += after[i].1.saturating_sub(before[i].1);
            }
        }
    }
    Ok(runs
        .into_iter()
        .map(|(latencies, cpu, writes)| sample(latencies, RUN, cpu, writes))
        .collect())
}

/// `CONCURRENCY` clients for `duration`: calling as fast as they can (`rate` `None`), or
/// starting calls at a fixed total `rate` spread over the clients, so latency is measured below
/// saturation (a client that falls behind starts its next call at once).
async fn load(call: &Call, rate: Option<f64>, duration: Duration) -> anyhow::Result<Vec<Duration>> {
    let interval = rate.map(|rate| Duration::from_secs_f64(CONCURRENCY as f64 / rate));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|client| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                // Paced clients start spread over one interval, not all at once.
                let mut next = interval
                    .map(|interval| start + interval.mul_f64(client as f64 / CONCURRENCY as f64));
                while next.unwrap_or_else(Instant::now) < start + duration {
                    if let Some(at) = next {
                        tokio::time::sleep_until(at.into()).await;
                    }
                    let started = Instant::now();
                    call(client).await?;
                    latencies.push(started.elapsed());
                    next = next.zip(interval).map(|(at, interval)| at + interval);
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    collect(tasks).await
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<Duration>>>>,
) -> anyhow::Result<Vec<Duration>> {
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

fn sample(
    mut latencies: Vec<Duration>,
    run: Duration,
    cpu: [Duration; 2],
    writes: [u64; 2],
) -> Sample {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let calls = latencies.len().max(1) as u32;
    Sample {
        throughput: latencies.len() as f64 / run.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        cpu: cpu.map(|cpu| cpu / calls),
        writes: writes.map(|writes| writes as f64 / f64::from(calls)),
    }
}

/// A line of `/proc/<pid>/status`, e.g. `VmRSS:` → `23456 kB`.
fn proc_status(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.1} MiB", kb / 1024.0))
}
