-- Failed-login counting for lockout: a window of failures and the lock it may lead to.
ALTER TABLE users ADD COLUMN failed_logins INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN failure_window_start BIGINT;
ALTER TABLE users ADD COLUMN locked_until BIGINT;
