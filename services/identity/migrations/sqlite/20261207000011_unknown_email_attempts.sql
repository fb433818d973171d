-- Login attempts on emails that match no user of their tenant, claimed and counted as a user's
-- are (`claim_unknown_email_attempt`): so that such an attempt writes what a known user's
-- does. A claim that writes nothing commits sooner (on PostgreSQL it waits for no WAL flush),
-- and answering an unknown email sooner would tell that it has no account. Keyed by a digest
-- of the email, not the email; a row whose window has passed is the same as none, and is swept.
CREATE TABLE unknown_email_attempts (
    tenant_id            TEXT NOT NULL,
    email_sha256         TEXT NOT NULL,
    failed_logins        INTEGER NOT NULL,
    failure_window_start BIGINT NOT NULL,
    locked_until         BIGINT,
    PRIMARY KEY (tenant_id, email_sha256)
);
-- What the sweep looks for.
CREATE INDEX unknown_email_attempts_by_window ON unknown_email_attempts (failure_window_start);
