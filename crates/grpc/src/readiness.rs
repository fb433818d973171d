//! Readiness that matches reality: a component's dependencies are checked every second, and
//! the answer drives both gRPC health (SERVING / NOT_SERVING) and the admin `/readyz`.

use std::{future::Future, time::Duration};

use palisade_telemetry::Readiness;
use tokio::task::JoinHandle;

use crate::ServingHandle;

const INTERVAL: Duration = Duration::from_secs(1);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `check` every second until the task is aborted; `Err(reason)` means not ready.
pub fn watch_readiness<F, Fut>(
    component: &'static str,
    check: F,
    serving: ServingHandle,
    readiness: Readiness,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    tokio::spawn(async move {
        let mut ready = true;
        loop {
            let problem = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(Ok(())) => None,
                Ok(Err(reason)) => Some(reason),
                Err(_) => Some(format!(
                    "dependency check took longer than {CHECK_TIMEOUT:?}"
                )),
            };
            if problem.is_none() != ready {
                ready = problem.is_none();
                match &problem {
                    None => tracing::info!(component, "ready again"),
                    Some(reason) => tracing::warn!(component, %reason, "not ready"),
                }
                serving.set_serving(ready).await;
            }
            readiness.set(problem);
            tokio::time::sleep(INTERVAL).await;
        }
    })
}
