//! Readiness that matches reality: a component's dependencies are checked every second, and
//! the answer drives both gRPC health (SERVING / NOT_SERVING) and the admin `/readyz`.

use std::{future::Future, time::Duration};

use palisade_telemetry::Readiness;
use tokio::task::JoinHandle;

use crate::ServingHandle;

const INTERVAL: Duration = Duration::from_secs(1);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` says of a component that has not yet answered whether it is ready.
pub const STARTING: &str = "starting: dependencies not checked yet";

/// Checks once, reports the answer, then runs `check` every second in a task until it is
/// aborted; `Err(reason)` means not ready. The first answer is known when this returns, so a
/// component that calls it before it serves never reports itself ready unchecked (a probe
/// in between saw the gRPC server's initial SERVING, or `/readyz`'s [`STARTING`]).
pub async fn watch_readiness<F, Fut>(
    component: &'static str,
    check: F,
    serving: ServingHandle,
    readiness: Readiness,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let problem = checked(check()).await;
    if let Some(reason) = &problem {
        tracing::warn!(component, %reason, "not ready");
    }
    let mut ready = problem.is_none();
    serving.set_serving(ready).await;
    readiness.set(problem);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(INTERVAL).await;
            let problem = checked(check()).await;
            if problem.is_none() != ready {
                ready = problem.is_none();
                match &problem {
                    None => tracing::info!(component, "ready again"),
                    Some(reason) => tracing::warn!(component, %reason, "not ready"),
                }
                serving.set_serving(ready).await;
            }
            readiness.set(problem);
        }
    })
}

/// What is wrong, if anything, by a `check`, within `CHECK_TIMEOUT`.
async fn checked(check: impl Future<Output = Result<(), String>>) -> Option<String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => None,
        Ok(Err(reason)) => Some(reason),
        Err(_) => Some(format!(
            "dependency check took longer than {CHECK_TIMEOUT:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use tonic_health::{
        pb::{HealthCheckRequest, health_check_response::ServingStatus, health_server::Health},
        server::{HealthReporter, HealthService},
    };

    use super::*;

    async fn status(health: &impl Health) -> i32 {
        let answer = health
            .check(tonic::Request::new(HealthCheckRequest::default()))
            .await
            .unwrap();
        answer.into_inner().status
    }

    #[tokio::test]
    async fn the_first_answer_is_known_before_the_watch_returns() {
        let reporter = HealthReporter::new();
        let health = HealthService::from_health_reporter(reporter.clone());
        let serving = ServingHandle::for_reporter(reporter);
        serving.set_serving(true).await;
        let readiness = Readiness::default();
        readiness.set(Some(STARTING.to_owned()));

        let watch = watch_readiness(
            "test",
            || async { Err("database unreachable".to_owned()) },
            serving.clone(),
            readiness.clone(),
        )
        .await;
        assert_eq!(readiness.problem().as_deref(), Some("database unreachable"));
        assert_eq!(status(&health).await, ServingStatus::NotServing as i32);
        watch.abort();

        let watch = watch_readiness("test", || async { Ok(()) }, serving, readiness.clone()).await;
        assert_eq!(readiness.problem(), None);
        assert_eq!(status(&health).await, ServingStatus::Serving as i32);
        watch.abort();
    }

    #[tokio::test]
    async fn a_draining_component_never_serves_again() {
        let reporter = HealthReporter::new();
        let health = HealthService::from_health_reporter(reporter.clone());
        let serving = ServingHandle::for_reporter(reporter);
        serving.set_serving(true).await;

        serving.drain().await;
        assert_eq!(status(&health).await, ServingStatus::NotServing as i32);
        // A dependency check that recovers afterwards changes nothing.
        let watch =
            watch_readiness("test", || async { Ok(()) }, serving, Readiness::default()).await;
        assert_eq!(status(&health).await, ServingStatus::NotServing as i32);
        watch.abort();
    }
}
