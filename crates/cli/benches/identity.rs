//! What identity costs, in one run against `palisade dev` (SQLite), all calls made directly to
//! the components over mTLS with a mesh certificate (no gateway in the path):
//!
//! 1. **permission checks** for a user holding only a custom role: `AuthorizationService.Check`
//!    on identity (internal; compliance's certificate), where every call reads the tenant, the
//!    user and the custom role from the store (uncached), against `AuditService.ListAuditEvents`
//!    on compliance with the same user's context (gateway certificate), whose policy layer asks
//!    identity's `Check` through `RemoteAuthorizer` and caches the answer for 5 s: closed-loop
//!    throughput, then the first call per principal (cache miss) against the second (hit);
//! 2. **Login** with identity's Argon2id parameters, closed loop;
//! 3. **p99 of other RPCs during a login flood**: `UserService.GetUser` (the user reading
//!    itself; identity decides the permission locally) and `Check`, each at a fixed paced rate,
//!    alone and while clients hammer `Login` with right and wrong passwords, in alternating
//!    rounds whose latencies are pooled per condition. Each flood client alternates on its own
//!    user, and a successful login clears the failure count, so the default lockout never
//!    triggers (a locked user's right password would fail the run). A third condition is the
//!    control: no logins, but identity's own password hashing (its Argon2id parameters, as many
//!    hashing threads at nice 19 as identity has) kept busy in the bench process. If the
//!    control's p99 matches the flood's, the tail is what Argon2id costs the machine (a busy
//!    core, and its memory traffic through the cache the cores share), not anything else a
//!    login does. (Being another process, it does not show what hashing does to identity's
//!    own memory map, such as unmapping memory, which interrupts the process's other threads.)
//!    A fourth condition keeps as many threads spinning at nice 19 (plain arithmetic, no
//!    memory traffic): where it leaves the p99 as it was alone but hashing does not, what
//!    costs is Argon2's work on memory, not a busy core.
//!
//! The tenant is on the enterprise plan (custom roles on, no user limit). Everything shares one
//! machine, so the load generator competes with the processes it measures; ratios are against
//! baselines measured in the same run. Run with `cargo bench -p palisade --bench identity`.

use std::{
    future::Future,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use calls::{check_call, get_user_call, list_call, login_call, login_flood, populate};
use palisade_identity::{ARGON2_ITERATIONS, ARGON2_MEMORY_KIB, Passwords};
use palisade_testkit::free_port_base;
use palisade_tls::{CertPaths, MeshTls};
use support::{HashingLoad, KillOnDrop, LowPrioritySpinners, cpu_time, us, wait_for_key};
use tonic::transport::Channel;

#[path = "identity/calls.rs"]
mod calls;
mod support;

const TENANT: &str = "bench";
const ROLE: &str = "bench-reader";
const PERMISSION: &str = "compliance.audit.list";
/// Closed-loop clients of the permission-check runs.
const CONCURRENCY: usize = 16;
/// Principals that each make one first and one second `ListAuditEvents` call.
const COLD_PRINCIPALS: usize = 96;
const COLD_CLIENTS: usize = 4;
const LOGIN_CLIENTS: usize = 4;
const FLOOD_CLIENTS: usize = 8;
/// Calls per second of each paced stream (GetUser and Check) in part 3.
const PACED_RATE: f64 = 100.0;
const PACED_CLIENTS: usize = 4;
const WARMUP: Duration = Duration::from_secs(2);
const RUN: Duration = Duration::from_secs(5);
/// Alternating alone / flood rounds of part 3, each measured for `ROUND` after `WARMUP`: many
/// short rounds, so that drift on a shared machine lands on both conditions alike.
const ROUNDS: u32 = 10;
const ROUND: Duration = Duration::from_secs(3);
/// Before each round of part 3 the mesh must have been this quiet (a share of one core) for a
/// `QUIET_WINDOW`, waiting at most `SETTLE_LIMIT`.
const QUIET_CPU: f64 = 0.1;
const QUIET_WINDOW: Duration = Duration::from_millis(300);
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// What runs beside the paced RPCs in a round of part 3.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Condition {
    Alone,
    Flood,
    Hash,
    Spin,
}

struct Sample {
    throughput: f64,
    p50: Duration,
    p99: Duration,
}

/// Channels to the mesh, each with the certificate a real caller would use.
#[derive(Clone)]
struct Links {
    /// identity, as the gateway: public and user-context calls.
    identity: Channel,
    /// identity, as compliance: the internal `Check`.
    identity_internal: Channel,
    /// compliance, as the gateway.
    compliance: Channel,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let base = free_port_base();
    let mesh = KillOnDrop(
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
    let mesh_pid = mesh.0.id();
    let key = wait_for_key(dir.path()).await?;
    let certs = dir.path().join("certs");
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let as_gateway = MeshTls::load(CertPaths::in_dir(&certs, "gateway")).await?;
    let as_compliance = MeshTls::load(CertPaths::in_dir(&certs, "compliance")).await?;
    let links = Links {
        identity: palisade_tls::channel(&url(base + 1), &as_gateway, "identity")?,
        identity_internal: palisade_tls::channel(&url(base + 1), &as_compliance, "identity")?,
        compliance: palisade_tls::channel(&url(base + 2), &as_gateway, "compliance")?,
    };
    let people = populate(&links.identity, &key).await?;
    // `palisade dev` runs identity with the default number of hashing threads.
    let hashing = palisade_identity::default_hashing_threads();
    let reader = Arc::new(people.reader.clone());
    // The control's hashing threads, made once: new ones would fault their memory in.
    let hashing_only = Passwords::new(hashing);

    // 1. Permission checks.
    let check = {
        let (links, reader) = (links.clone(), reader.clone());
        move |_| check_call(links.identity_internal.clone(), reader.clone())
    };
    let list = {
        let (links, reader) = (links.clone(), reader.clone());
        move |_| list_call(links.compliance.clone(), reader.clone())
    };
    let uncached = closed_loop("Check on identity", CONCURRENCY, check.clone()).await?;
    let cached = closed_loop("ListAuditEvents, Check cached", CONCURRENCY, list).await?;
    let (first, second) = first_and_second_calls(&links, &people.cold).await?;

    // 2. Login throughput, each client on its own user.
    let login = {
        let (links, flood) = (links.clone(), people.flood.clone());
        move |client: usize| login_call(links.identity.clone(), flood[client].clone(), true)
    };
    let logins = closed_loop("Login", LOGIN_CLIENTS, login).await?;

    // 3. Other RPCs alone, then during a login flood.
    let get_user = {
        let (links, reader) = (links.clone(), reader.clone());
        move |_| get_user_call(links.identity.clone(), reader.clone())
    };
    // Alternating rounds, pooled, so drift on a shared machine hits every condition alike. The
    // third and fourth are the controls: identity's hashing kept busy as the flood keeps it,
    // without any login, and as many threads merely spinning.
    // Latencies of GetUser and Check per condition (alone, flood, hash, spin).
    let mut pooled: [Vec<Duration>; 8] = Default::default();
    let (mut flood_logins, mut flood_time) = (0, Duration::ZERO);
    let mut settling = Duration::ZERO;
    for _ in 0..ROUNDS {
        for (at, condition) in [
            Condition::Alone,
            Condition::Flood,
            Condition::Hash,
            Condition::Spin,
        ]
        .into_iter()
        .enumerate()
        {
            // A flood leaves work behind (its audit events are still being relayed to
            // compliance and chained): each round starts on a mesh that has finished it.
            settling += settle(mesh_pid).await;
            let stop = Arc::new(AtomicBool::new(false));
            let started = Instant::now();
            let flood: Vec<_> = (people.flood.iter())
                .filter(|_| condition == Condition::Flood)
                .map(|email| {
                    let (channel, email) = (links.identity.clone(), email.clone());
                    tokio::spawn(login_flood(channel, email, stop.clone()))
                })
                .collect();
            let hashes =
                (condition == Condition::Hash).then(|| HashingLoad::start(&hashing_only, hashing));
            let spinners =
                (condition == Condition::Spin).then(|| LowPrioritySpinners::start(hashing));
            let (get_users, checks) = tokio::try_join!(
                paced(get_user.clone(), PACED_RATE, ROUND),
                paced(check.clone(), PACED_RATE, ROUND)
            )?;
            stop.store(true, Ordering::Relaxed);
            for task in flood {
                flood_logins += task.await??;
            }
            if condition == Condition::Flood {
                flood_time += started.elapsed();
            }
            if let Some(hashes) = hashes {
                hashes.stop().await?;
            }
            if let Some(spinners) = spinners {
                spinners.stop();
            }
            pooled[2 * at].extend(get_users);
            pooled[2 * at + 1].extend(checks);
        }
    }
    let flood_rate = flood_logins as f64 / flood_time.as_secs_f64();
    let [
        alone_get,
        alone_check,
        flood_get,
        flood_check,
        hash_get,
        hash_check,
        spin_get,
        spin_check,
    ] = pooled.map(|latencies| sample(latencies, ROUND * ROUNDS));

    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "\nidentity: palisade dev (SQLite) on {cores} cores, tenant `{TENANT}` on the enterprise plan, \
         user principals holding only the custom role `{ROLE}`; {RUN:?} per run after {WARMUP:?} warm-up"
    );
    println!(
        "\n1. permission `{PERMISSION}` for a user, {CONCURRENCY} closed-loop clients on one connection"
    );
    println!(
        "  {:<48} {:>9} {:>9} {:>9} {:>9}",
        "call", "calls/s", "p50", "p99", "vs Check"
    );
    for (name, s) in [
        ("Check on identity (uncached: 3 store reads)", &uncached),
        ("ListAuditEvents on compliance (Check cached)", &cached),
    ] {
        println!(
            "  {name:<48} {:>9.0} {:>9} {:>9} {:>8.2}x",
            s.throughput,
            us(s.p50),
            us(s.p99),
            s.throughput / uncached.throughput
        );
    }
    println!(
        "  ListAuditEvents, {COLD_PRINCIPALS} principals on {COLD_CLIENTS} clients, each calling twice within the 5 s TTL:"
    );
    for (name, s) in [
        ("first call (compliance asks identity's Check)", &first),
        ("second call (answer from the cache)", &second),
    ] {
        println!("    {name:<46} p50 {} p99 {}", us(s.p50), us(s.p99));
    }
    println!(
        "    a cache miss adds {} at p50 ({:.2}x the cached call)",
        us(first.p50.saturating_sub(second.p50)),
        ratio(first.p50, second.p50)
    );
    println!(
        "\n2. Login (Argon2id m={} MiB t={ARGON2_ITERATIONS} p=1, {hashing} hashing thread(s) at nice 19), {LOGIN_CLIENTS} closed-loop clients, right passwords",
        ARGON2_MEMORY_KIB / 1024
    );
    println!(
        "  {:.1} logins/s  p50 {}  p99 {}  ({:.1} ms of a busy hashing thread per login)",
        logins.throughput,
        us(logins.p50),
        us(logins.p99),
        1000.0 * hashing as f64 / logins.throughput
    );
    println!(
        "\n3. p99 at {PACED_RATE:.0} calls/s each (paced, {PACED_CLIENTS} clients per RPC), alone, during a login flood \
         ({FLOOD_CLIENTS} clients alternating right and wrong passwords, {flood_rate:.1} logins/s), and with {hashing} \
         hashing thread(s) kept busy without logins, and as many spinning; {ROUNDS} alternating rounds of {ROUND:?}, pooled; each round began once the mesh was quiet \
         (waited {settling:.1?} in all)"
    );
    println!(
        "  {:<10} {:>10} {:>10} {:>10} {:>10} {:>11} {:>11} {:>10} {:>10} {:>11} {:>10} {:>11}",
        "rpc",
        "alone p50",
        "alone p99",
        "flood p50",
        "flood p99",
        "p50 ratio",
        "p99 ratio",
        "hash p50",
        "hash p99",
        "p99 ratio",
        "spin p99",
        "p99 ratio"
    );
    for (name, alone, flooded, hashing_only, spinning) in [
        ("GetUser", &alone_get, &flood_get, &hash_get, &spin_get),
        (
            "Check",
            &alone_check,
            &flood_check,
            &hash_check,
            &spin_check,
        ),
    ] {
        println!(
            "  {name:<10} {:>10} {:>10} {:>10} {:>10} {:>10.2}x {:>10.2}x {:>10} {:>10} {:>10.2}x {:>10} {:>10.2}x",
            us(alone.p50),
            us(alone.p99),
            us(flooded.p50),
            us(flooded.p99),
            ratio(flooded.p50, alone.p50),
            ratio(flooded.p99, alone.p99),
            us(hashing_only.p50),
            us(hashing_only.p99),
            ratio(hashing_only.p99, alone.p99),
            us(spinning.p99),
            ratio(spinning.p99, alone.p99),
        );
    }
    println!(
        "  hash (the control): no logins, identity's Argon2id hashing on {hashing} thread(s) at \
         nice 19 in the bench process; where its p99 is as high as the flood's, the tail is what \
         hashing costs this machine, not what the rest of a login does; spin: as many threads \
         at nice 19 doing plain arithmetic, a busy core without Argon2's memory traffic"
    );
    println!(
        "  target: p99 during the flood <= 1.5x alone (GetUser {:.2}x, Check {:.2}x)",
        ratio(flood_get.p99, alone_get.p99),
        ratio(flood_check.p99, alone_check.p99)
    );
    Ok(())
}

/// Each principal's first `ListAuditEvents` (compliance has no answer cached, so it asks
/// identity) and, right after, its second (answered from the cache), both timed.
async fn first_and_second_calls(
    links: &Links,
    cold: &[String],
) -> anyhow::Result<(Sample, Sample)> {
    let started = Instant::now();
    let tasks: Vec<_> = cold
        .chunks(cold.len().div_ceil(COLD_CLIENTS))
        .map(|users| {
            let (channel, users) = (links.compliance.clone(), users.to_vec());
            tokio::spawn(async move {
                let mut pairs = Vec::new();
                for user in users {
                    let user = Arc::new(user);
                    let mut timed = [Duration::ZERO; 2];
                    for slot in &mut timed {
                        let call = Instant::now();
                        list_call(channel.clone(), user.clone()).await?;
                        *slot = call.elapsed();
                    }
                    pairs.push(timed);
                }
                anyhow::Ok(pairs)
            })
        })
        .collect();
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for task in tasks {
        for [one, two] in task.await?? {
            first.push(one);
            second.push(two);
        }
    }
    let elapsed = started.elapsed();
    Ok((sample(first, elapsed), sample(second, elapsed)))
}

/// `clients` clients calling as fast as they can (the call gets the client's index): warm-up,
/// then a measured run, whose numbers are also shown at once as `name`.
async fn closed_loop<F, Fut>(name: &str, clients: usize, call: F) -> anyhow::Result<Sample>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let run = |duration: Duration| {
        let deadline = Instant::now() + duration;
        let tasks: Vec<_> = (0..clients)
            .map(|client| {
                let call = call.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        call(client).await?;
                        latencies.push(started.elapsed());
                    }
                    anyhow::Ok(latencies)
                })
            })
            .collect();
        collect(tasks)
    };
    run(WARMUP).await?;
    let measured = sample(run(RUN).await?, RUN);
    eprintln!(
        "{name}: {:.0} calls/s p50 {:?} p99 {:?}",
        measured.throughput, measured.p50, measured.p99
    );
    Ok(measured)
}

/// Calls started at a fixed total `rate` (spread over `PACED_CLIENTS` clients), so latency is
/// measured below saturation. A client that falls behind starts its next call at once. Returns
/// the latencies of the measured run.
async fn paced<F, Fut>(call: F, rate: f64, duration: Duration) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let interval = Duration::from_secs_f64(PACED_CLIENTS as f64 / rate);
    let run = |duration: Duration| {
        let start = Instant::now();
        let tasks: Vec<_> = (0..PACED_CLIENTS)
            .map(|client| {
                let call = call.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    // Clients start spread over one interval, not all at once.
                    let mut next = start + interval.mul_f64(client as f64 / PACED_CLIENTS as f64);
                    while next < start + duration {
                        tokio::time::sleep_until(next.into()).await;
                        let started = Instant::now();
                        call(client).await?;
                        latencies.push(started.elapsed());
                        next += interval;
                    }
                    anyhow::Ok(latencies)
                })
            })
            .collect();
        collect(tasks)
    };
    run(WARMUP).await?;
    run(duration).await
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

fn sample(mut latencies: Vec<Duration>, run: Duration) -> Sample {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Sample {
        throughput: latencies.len() as f64 / run.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// Waits (at most `SETTLE_LIMIT`) until the mesh process uses at most `QUIET_CPU` of one core
/// over a `QUIET_WINDOW`, and returns how long that took.
async fn settle(pid: u32) -> Duration {
    let started = Instant::now();
    while started.elapsed() < SETTLE_LIMIT {
        let before = cpu_time(pid);
        tokio::time::sleep(QUIET_WINDOW).await;
        if cpu_time(pid).saturating_sub(before) <= QUIET_WINDOW.mul_f64(QUIET_CPU) {
            break;
        }
    }
    started.elapsed()
}
