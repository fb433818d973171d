//! Login lockout: after `max_failures` wrong passwords within `window`, a user's logins are
//! refused for `lock_for`, whatever the password. Each attempt is claimed by one atomic UPDATE
//! in the store before its password is checked (`claim_password_attempt`) and counts as a
//! failure unless it proves right, so attempts in flight use up the limit: however many arrive
//! at once, at most `max_failures` passwords are checked per window, and exactly one attempt
//! (the one that reaches the limit) locks the account.

use std::time::Duration;

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
