//! What tracing costs: the same load against `palisade dev` with tracing off
//! (`PALISADE_TRACING=off`) and on at the default sampler (parent-based, always on), exporting
//! every span over OTLP to a receiver in this process. Runs alternate (off, on, off, on, ...)
//! so drift on a noisy machine hits both sides; the report gives each side's median run and
//! the ratio. Run with `cargo bench -p palisade --bench tracing_overhead`.
//!
//! Load: `CONCURRENCY` clients calling `TenantService.GetTenant` through the gateway (gateway →
//! identity, with API-key verification cached), for `RUN` each.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use palisade_proto::palisade::identity::v1::{
    CreateTenantRequest, GetTenantRequest, Tenant, tenant_service_client::TenantServiceClient,
};
use palisade_testkit::{free_port_base, otlp::OtlpReceiver, with_api_key};
use support::KillOnDrop;
use tonic::transport::Channel;

mod support;

const CONCURRENCY: usize = 16;
const WARMUP: Duration = Duration::from_secs(2);
const RUN: Duration = Duration::from_secs(6);
const ROUNDS: usize = 3;

struct Sample {
    throughput: f64,
    p50: Duration,
    p99: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (receiver, endpoint) = OtlpReceiver::start().await?;
    let mut off = Vec::new();
    let mut on = Vec::new();
    for round in 0..ROUNDS {
        for tracing in [false, true] {
            let sample = measure(tracing, &endpoint).await?;
            eprintln!(
                "round {round} tracing {:<3}: {:>8.0} calls/s  p50 {:>7.0?}  p99 {:>7.0?}",
                if tracing { "on" } else { "off" },
                sample.throughput,
                sample.p50,
                sample.p99
            );
            if tracing {
                on.push(sample)
            } else {
                off.push(sample)
            }
        }
    }
    let (off, on) = (median(off), median(on));
    println!(
        "\ntracing overhead ({CONCURRENCY} clients, GetTenant through the gateway, {ROUNDS} alternating runs of {RUN:?}, median run)"
    );
    println!(
        "  {:<12} {:>12} {:>10} {:>10}",
        "tracing", "calls/s", "p50", "p99"
    );
    for (name, s) in [("off", &off), ("on (OTLP)", &on)] {
        println!(
            "  {name:<12} {:>12.0} {:>10.0?} {:>10.0?}",
            s.throughput, s.p50, s.p99
        );
    }
    println!(
        "  throughput on/off: {:.3}  (cost {:.1}%)",
        on.throughput / off.throughput,
        100.0 * (1.0 - on.throughput / off.throughput)
    );
    println!(
        "  p99 on/off:        {:.3}",
        on.p99.as_secs_f64() / off.p99.as_secs_f64()
    );
    let exported = receiver.spans().len();
    println!("  spans exported:    {exported}");
    anyhow::ensure!(
        exported > 0,
        "tracing was on but no span reached the receiver: the comparison is void"
    );
    Ok(())
}

fn median(mut samples: Vec<Sample>) -> Sample {
    samples.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
    samples.swap_remove(samples.len() / 2)
}

async fn measure(tracing: bool, endpoint: &str) -> anyhow::Result<Sample> {
    let dir = tempfile::tempdir()?;
    let base = free_port_base();
    let mut command = Command::new(env!("CARGO_BIN_EXE_palisade"));
    command
        .args(["dev", "--data-dir"])
        .arg(dir.path())
        .args(["--port-base", &base.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if tracing {
        command.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
    } else {
        command.env("PALISADE_TRACING", "off");
    }
    let child = KillOnDrop(command.spawn()?);
    let key_file = dir.path().join("operator-api-key");
    let started = Instant::now();
    while !key_file.exists() || std::fs::read_to_string(&key_file)?.trim().is_empty() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "palisade dev did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = std::fs::read_to_string(&key_file)?.trim().to_owned();
    let channel = loop {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{base}"))?;
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let tenant = Tenant {
        display_name: "Bench".into(),
        ..Tenant::default()
    };
    let create = CreateTenantRequest {
        tenant: Some(tenant),
        tenant_id: "bench".into(),
    };
    TenantServiceClient::new(channel.clone())
        .create_tenant(with_api_key(create, &key))
        .await?;

    load(&channel, &key, WARMUP).await?;
    let (calls, mut latencies) = load(&channel, &key, RUN).await?;
    drop(child);
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(Sample {
        throughput: calls as f64 / RUN.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    })
}

/// `CONCURRENCY` clients calling as fast as they can for `duration`.
async fn load(
    channel: &Channel,
    key: &str,
    duration: Duration,
) -> anyhow::Result<(usize, Vec<Duration>)> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let mut client = TenantServiceClient::new(channel.clone());
        let key = key.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let request = with_api_key(
                    GetTenantRequest {
                        name: "tenants/bench".into(),
                    },
                    &key,
                );
                client.get_tenant(request).await?;
                latencies.push(started.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok((all.len(), all))
}
