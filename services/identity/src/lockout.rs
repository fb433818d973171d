//! Login lockout: after `max_failures` wrong passwords within `window`, a user's logins are
//! refused for `lock_for`, whatever the password. Failures are counted by one atomic UPDATE in
//! the store, so parallel attempts cannot slip past the limit, and exactly one of them (the one
//! that reaches it) locks the account.

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
