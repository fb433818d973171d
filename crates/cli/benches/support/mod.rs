//! What the benches share: the mesh processes they start, the operator key `palisade dev`
//! leaves in its data directory, the tenant context of calls made directly on a component, CPU
//! time read from `/proc`, identity's password hashing run without logins, threads that keep
//! the cores busy at the lowest priority, and how durations are printed.

#![allow(dead_code)] // Each bench uses only some of these.

use std::{
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use palisade_identity::Passwords;
use tonic::metadata::MetadataValue;

/// A child process (a mesh, a gateway) killed and reaped when the bench ends, even on error.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bootstrap operator key of a `palisade dev` started on `dir`, once it has written it
/// (at most 30 s).
pub async fn wait_for_key(dir: &std::path::Path) -> anyhow::Result<String> {
    let key_file = dir.join("operator-api-key");
    let started = Instant::now();
    loop {
        if let Ok(key) = std::fs::read_to_string(&key_file)
            && !key.trim().is_empty()
        {
            return Ok(key.trim().to_owned());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "palisade dev did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The CPU time (user + system, all threads) a process has used so far; see [`cpu_time_of`].
pub fn cpu_time(pid: u32) -> Duration {
    cpu_time_of(&format!("/proc/{pid}"))
}

/// The CPU time (user + system) used so far by the process or thread whose `/proc` directory
/// is `dir` (`/proc/<pid>`, `/proc/<pid>/task/<tid>`): `utime` and `stime` of its `stat`, in
/// clock ticks (100 a second on Linux). Zero when unreadable.
pub fn cpu_time_of(dir: &str) -> Duration {
    let ticks = || -> Option<u64> {
        let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
        // The fields after the command name, which may itself contain spaces: state is field 3.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    Duration::from_millis(ticks().unwrap_or(0) * 10)
}

/// How many write system calls the process or thread whose `/proc` directory is `dir` has made
/// (`syscw` in its `io`), 0 if unknown: each one also wakes whoever reads the other end.
pub fn write_syscalls_of(dir: &str) -> u64 {
    std::fs::read_to_string(format!("{dir}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|line| line.strip_prefix("syscw:"))
                .and_then(|count| count.trim().parse().ok())
        })
        .unwrap_or(0)
}

static REQUEST_IDS: AtomicU64 = AtomicU64::new(0);

/// `message` with the tenant context the gateway would write: (tenant, principal id, type).
pub fn with_context<T>(
    message: T,
    context: &(String, String, &'static str),
) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert("palisade-tenant-id", MetadataValue::try_from(&context.0)?);
    metadata.insert(
        "palisade-principal-id",
        MetadataValue::try_from(&context.1)?,
    );
    metadata.insert(
        "palisade-principal-type",
        MetadataValue::from_static(context.2),
    );
    let id = REQUEST_IDS.fetch_add(1, Ordering::Relaxed);
    metadata.insert(
        "x-request-id",
        MetadataValue::try_from(format!("bench-{id}"))?,
    );
    Ok(request)
}

/// Identity's own password hashing (its [`Passwords`], with its Argon2id parameters, on its
/// hashing threads at nice 19) kept busy until [`HashingLoad::stop`]: what a login flood costs
/// the machine, without any login. It runs in the bench's process, so it shares the cores and
/// their cache with identity, not identity's memory map.
pub struct HashingLoad {
    stop: Arc<AtomicBool>,
    loops: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl HashingLoad {
    /// Keeps each of `passwords`' `threads` hashing threads busy. Create the `Passwords` once
    /// for all runs: new threads would fault their Argon2 memory in during the first one.
    pub fn start(passwords: &Passwords, threads: usize) -> HashingLoad {
        let stop = Arc::new(AtomicBool::new(false));
        // One loop per thread: each waits for a free thread, so every thread stays busy.
        let loops = (0..threads)
            .map(|_| {
                let (stop, passwords) = (stop.clone(), passwords.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        passwords.hash("a bench password, hashed for load").await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        HashingLoad { stop, loops }
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for hashing in std::mem::take(&mut self.loops) {
            hashing.await??;
        }
        Ok(())
    }
}

/// A bench that fails between start and stop stops the loops too.
impl Drop for HashingLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Threads spinning at nice 19 until [`LowPrioritySpinners::stop`]: the CPU a login flood's
/// hashing threads keep busy, without the logins.
pub struct LowPrioritySpinners {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl LowPrioritySpinners {
    pub fn start(count: usize) -> LowPrioritySpinners {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || spin(&stop))
            })
            .collect();
        LowPrioritySpinners { stop, threads }
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("a spinning thread panicked");
        }
    }
}

fn spin(stop: &AtomicBool) {
    thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        thread_priority::ThreadPriority::Min,
        thread_priority::ThreadSchedulePolicy::Normal(
            thread_priority::NormalThreadSchedulePolicy::Other,
        ),
    )
    .expect("nice 19 for a spinning thread");
    // Plain arithmetic, as a hash does: a PAUSE loop (`spin_loop`) is what a hypervisor's
    // pause-loop exiting watches for, and would make the vCPU yield to the host.
    let mut count = 0u64;
    while !stop.load(Ordering::Relaxed) {
        count = std::hint::black_box(count.wrapping_add(1));
    }
}

pub fn us(duration: Duration) -> String {
    format!("{} µs", duration.as_micros())
}
