//! Login lockout: after `max_failures` wrong passwords within `window`, a user's logins are
//! refused for `lock_for`, whatever the password. Each attempt is claimed by one atomic UPDATE
//! in the store before its password is checked (`claim_password_attempt`) and counts as a
//! failure unless it proves right, so attempts in flight use up the limit: however many arrive
//! at once, at most `max_failures` passwords are checked per window, and exactly one attempt
//! (the one that reaches the limit) locks the account; when the limit is lowered below the
//! failures already counted, the next attempt is still checked, and locks. Attempts on emails that match no user
//! are claimed and locked alike (`claim_unknown_email_attempt`), and their rows swept once
//! their window has passed ([`spawn_sweeper`]).

use std::{future::Future, time::Duration};

use palisade_grpc::time::now_micros;

use crate::store::IdentityStore;

/// How often rows of unknown emails' attempts whose window has passed are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub max_failures: u32,
    pub window: Duration,
    pub lock_for: Duration,
}

impl Default for LockoutPolicy {
    /// Five failures in fifteen minutes lock the account for fifteen minutes.
    fn default() -> LockoutPolicy {
        LockoutPolicy {
            max_failures: 5,
            window: Duration::from_secs(15 * 60),
            lock_for: Duration::from_secs(15 * 60),
        }
    }
}

impl LockoutPolicy {
    pub(crate) fn window_micros(&self) -> i64 {
        i64::try_from(self.window.as_micros()).unwrap_or(i64::MAX)
    }

    pub(crate) fn lock_micros(&self) -> i64 {
        i64::try_from(self.lock_for.as_micros()).unwrap_or(i64::MAX)
    }
}

/// Deletes unknown emails' attempts that count as none any more, every [`SWEEP_EVERY`], until
/// `stop` resolves: they would otherwise pile up with every email anyone ever tried.
pub fn spawn_sweeper(
    store: IdentityStore,
    policy: LockoutPolicy,
    stop: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::pin!(stop);
        let mut ticks = tokio::time::interval(SWEEP_EVERY);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = ticks.tick() => {
                    match store.sweep_unknown_email_attempts(now_micros(), &policy).await {
                        Ok(0) => {}
                        Ok(swept) => tracing::debug!(swept, "unknown emails' login attempts swept"),
                        Err(error) => tracing::warn!(%error, "sweeping unknown emails' login attempts failed"),
                    }
                }
            }
        }
    })
}
