//! Threads of their own for password hashing, at the lowest CPU priority the OS allows.
//!
//! An Argon2id hash takes tens of milliseconds of one core. On tokio's blocking pool it would
//! compete as an equal with the runtime's workers, so every other RPC would wait behind a login
//! flood for its share of a core. These threads run at nice 19, the lowest priority of Linux's
//! ordinary policy (weight 15 against 1024 for everything else): a waking RPC thread preempts a
//! hash at once, and the hash gets a core's leftovers. Under sustained full load logins wait,
//! which is the trade the issue asks for: a login flood cannot starve other RPCs.
//!
//! Not `SCHED_IDLE`, which earlier versions used. The scheduler counts a core that runs only
//! `SCHED_IDLE` threads as idle, so it wakes RPC threads onto the hashing core rather than
//! keeping them beside each other on the other one, and each such wakeup paid for preempting
//! the hash. Other RPCs' p99 during a login flood went from 3.2–4.0x to 1.7–1.9x of their p99
//! alone with this change (`cargo bench -p palisade --bench identity`, part 3, same machine and
//! day).

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, mpsc},
};

use palisade_grpc::ApiError;
use tokio::sync::{Semaphore, oneshot};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed number of low-priority threads; cheap to clone. The threads end when the last clone
/// is dropped.
#[derive(Clone)]
pub struct HashingThreads {
    jobs: mpsc::Sender<Job>,
    /// One per thread: a caller waits here (asynchronously) rather than in the queue, so that
    /// a job is only queued when a thread is free to take it. The job holds its permit until
    /// it ends, also when its caller stops waiting (a deadline, a cancelled call): otherwise
    /// callers that give up would queue hashes without bound.
    free: Arc<Semaphore>,
}

impl HashingThreads {
    pub fn new(threads: usize) -> HashingThreads {
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || {
                    lower_own_priority();
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        match job {
                            // A panicking hash fails its own call (see `run`), not the thread.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                            }
                            Err(mpsc::RecvError) => return,
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "a password hashing thread could not be started");
            }
        }
        HashingThreads {
            jobs,
            free: Arc::new(Semaphore::new(threads)),
        }
    }

    /// Runs `work` on one of the threads once one is free, and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = (self.free.clone().acquire_owned().await).map_err(ApiError::internal)?;
        let (done, result) = oneshot::channel();
        // What the work logs belongs to the caller's call: its span (the RPC, its request id).
        let span = tracing::Span::current();
        let job: Job = Box::new(move || {
            let _permit = permit;
            // A caller that has stopped waiting wants no answer: its hash is not worth a core.
            if !done.is_closed() {
                let _ = done.send(span.in_scope(work));
            }
        });
        self.jobs
            .send(job)
            .map_err(|_| ApiError::internal("the password hashing threads are gone"))?;
        // A job that panicked drops `done` without sending.
        result
            .await
            .map_err(|_| ApiError::internal("password hashing failed"))?
    }
}

/// Makes the calling thread the last in line for CPU: nice 19, the lowest priority of the
/// ordinary policy. Linux keeps the nice value per thread, so this leaves the rest of the
/// process as it was; elsewhere it would apply to the whole process, so it is not set.
fn lower_own_priority() {
    #[cfg(target_os = "linux")]
    if let Err(error) = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        thread_priority::ThreadPriority::Min,
        thread_priority::ThreadSchedulePolicy::Normal(
            thread_priority::NormalThreadSchedulePolicy::Other,
        ),
    ) {
        tracing::warn!(?error, "password hashing runs at normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_and_returns_its_result_or_error() {
        let threads = HashingThreads::new(2);
        let results = futures::future::join_all((0..8).map(|i| threads.run(move || Ok(i * 2))));
        let results: Vec<_> = results.await.into_iter().map(Result::unwrap).collect();
        assert_eq!(results, [0, 2, 4, 6, 8, 10, 12, 14]);
        let failed = threads
            .run::<()>(|| Err(ApiError::internal("bad hash")))
            .await;
        assert!(failed.is_err());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_threads_run_at_the_lowest_priority() {
        let threads = HashingThreads::new(1);
        let nice = threads.run(|| Ok(own_nice())).await.unwrap();
        assert_eq!(nice, 19);
        // The caller's own thread keeps its priority.
        assert_ne!(own_nice(), 19);
    }

    /// The calling thread's nice value, the 19th field of `/proc/thread-self/stat`.
    #[cfg(target_os = "linux")]
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The command name (field 2) may hold spaces; the fields after it do not.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn a_job_keeps_its_thread_when_its_caller_stops_waiting() {
        let threads = HashingThreads::new(1);
        let (started, has_started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let caller = threads.clone();
        let cancelled = tokio::spawn(async move {
            caller
                .run(move || {
                    let _ = started.send(());
                    let _ = released.recv();
                    Ok(())
                })
                .await
        });
        tokio::task::spawn_blocking(move || has_started.recv())
            .await
            .unwrap()
            .unwrap();
        cancelled.abort();
        let _ = cancelled.await;
        // The hash still runs, so no other may start beside it.
        assert_eq!(threads.free.available_permits(), 0);
        release.send(()).unwrap();
        assert_eq!(threads.run(|| Ok(7)).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_thread_pool_goes_on() {
        let threads = HashingThreads::new(1);
        let panicked = threads.run::<()>(|| panic!("argon2 exploded")).await;
        assert!(panicked.is_err());
        assert_eq!(threads.run(|| Ok(7)).await.unwrap(), 7);
    }
}
