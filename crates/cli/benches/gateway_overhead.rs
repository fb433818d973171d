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
//! when it is not saturated. Each path's run is cut into slices taken in turns with the other
//! paths', so a burst of other work on the machine lands on all of them rather than on one
//! (ratios between paths are what these numbers are good for). The mesh runs as `palisade dev`; the gateway measured is a
//! separate `palisade serve gateway` process in front of it, so its RSS (`VmRSS`, and the peak
//! `VmHWM`) is the gateway's alone, and so is the CPU time per call reported for it (the mesh's
//! is the `palisade dev` process: identity and the rest). CPU per call is the steadiest figure on
//! a busy machine; latencies move with whatever else runs. Everything shares one machine, so the
//! load generator competes with the processes it measures. Run with
//! `cargo bench -p palisade --bench gateway_overhead`.

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
use support::{KillOnDrop, cpu_time, us, wait_for_key, with_context, write_syscalls};
use tonic::transport::Channel;

mod support;

const CONCURRENCY: usize = 16;
const WARMUP: Duration = Duration::from_secs(2);
const RUN: Duration = Duration::from_secs(5);
/// `RUN` is taken in this many slices per path, the paths in turns.
const ROUNDS: usize = 5;

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
    let gateway_port = free_port_base();
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let gateway = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["serve", "gateway", "--listen"])
            .arg(format!("127.0.0.1:{gateway_port}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", gateway_port + 10))
            .arg("--certs-dir")
            .arg(&certs)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--identity-url", &url(base + 1)])
            .args(["--compliance-url", &url(base + 2)])
            .args(["--observability-url", &url(base + 3)])
            .args(["--gateway-url", &url(gateway_port)])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let gateway_pid = gateway.0.id();
    let pids = [gateway_pid, _mesh.0.id()];

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

    let direct_call: Call = {
        let (channel, context) = (direct.clone(), context.clone());
        Arc::new(move |_| Box::pin(direct_call(channel.clone(), context.clone())))
    };
    let gateway_call: Call = {
        let (channel, key) = (via_gateway.clone(), key.clone());
        Arc::new(move |_| Box::pin(gateway_call(channel.clone(), key.clone())))
    };
    let rest_call = rest_call(&format!("127.0.0.1:{gateway_port}"), &key).await?;

    let names = ["direct (mTLS)", "gateway gRPC", "gateway REST"];
    let rows = interleaved(
        &[direct_call.clone(), gateway_call.clone(), rest_call],
        None,
        pids,
    )
    .await?;
    for (name, sample) in names.iter().zip(&rows) {
        eprintln!(
            "{name}: {:.0} calls/s p50 {:?} p99 {:?}",
            sample.throughput, sample.p50, sample.p99
        );
    }
    let rss = proc_status(gateway_pid, "VmRSS:");
    let hwm = proc_status(gateway_pid, "VmHWM:");

    // The floor any separate proxy process pays on this machine: the direct call through a
    // bare TCP relay (one more hop, no gateway code; the mTLS session passes through it).
    let relay_port = spawn_tcp_relay(base + 1)?;
    let relayed = palisade_tls::channel(&url(relay_port), &tls, "identity")?;
    let relayed_call: Call = {
        let context = context.clone();
        Arc::new(move |_| Box::pin(crate::direct_call(relayed.clone(), context.clone())))
    };
    let half_rate = rows[1].throughput / 2.0;
    let half = interleaved(
        &[direct_call, gateway_call, relayed_call],
        Some(half_rate),
        pids,
    )
    .await?;
    let (half_direct, half_gateway, half_relayed) = (&half[0], &half[1], &half[2]);

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
        us(half_gateway.p50.saturating_sub(half_direct.p50)),
        us(half_direct.p99),
        us(half_gateway.p99),
    );
    println!(
        "  a bare TCP relay hop at the same rate adds {} (p50 {}): the share of the added p50 that \
         any separate proxy process pays here",
        us(half_relayed.p50.saturating_sub(half_direct.p50)),
        us(half_relayed.p50),
    );
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
        us(half_gateway.p50.saturating_sub(half_direct.p50)),
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
/// on every path alike. Closed loop (`rate` `None`), or paced at `rate` calls a second.
async fn interleaved(
    calls: &[Call],
    rate: Option<f64>,
    pids: [u32; 2],
) -> anyhow::Result<Vec<Sample>> {
    let slice = RUN / ROUNDS as u32;
    let mut runs: Vec<(Vec<Duration>, [Duration; 2], [u64; 2])> =
        vec![Default::default(); calls.len()];
    for call in calls {
        load(call, rate, WARMUP).await?;
    }
    for _ in 0..ROUNDS {
        for (call, (latencies, cpu, writes)) in calls.iter().zip(&mut runs) {
            let before = (pids.map(cpu_time), pids.map(write_syscalls));
            latencies.extend(load(call, rate, slice).await?);
            let after = (pids.map(cpu_time), pids.map(write_syscalls));
            for i in 0..2 {
                cpu[i] += after.0[i].saturating_sub(before.0[i]);
                writes[i] += after.1[i].saturating_sub(before.1[i]);
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

/// A TCP relay to `127.0.0.1:target` on a thread of its own (as a proxy process would have its
/// own), returning the port it listens on.
fn spawn_tcp_relay(target: u16) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    std::thread::spawn(move || runtime.block_on(relay(listener, target)));
    Ok(port)
}

/// Accepts connections on `listener` and copies each, both ways, to `127.0.0.1:target`.
async fn relay(listener: std::net::TcpListener, target: u16) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        let (mut inbound, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut outbound = tokio::net::TcpStream::connect(("127.0.0.1", target)).await?;
            let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
            tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await?;
            anyhow::Ok(())
        });
    }
}
