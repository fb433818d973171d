-- Per-tenant overrides of the plan's features and limits (JSON objects), and the API calls
-- the gateway reports per tenant and calendar month (`YYYY-MM`, UTC). Reported batches are
-- remembered for a while so that a retried batch is counted once.
ALTER TABLE tenants ADD COLUMN feature_overrides TEXT NOT NULL DEFAULT '{}';
ALTER TABLE tenants ADD COLUMN limit_overrides TEXT NOT NULL DEFAULT '{}';

CREATE TABLE tenant_usage (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    period    TEXT NOT NULL,
    api_calls BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, period)
);

CREATE TABLE usage_batches (
    id           TEXT PRIMARY KEY,
    receive_time BIGINT NOT NULL
);

-- Platform operators are never throttled (new installations get this at bootstrap).
UPDATE tenants SET limit_overrides = '{"api_calls_per_month":-1,"requests_per_second":-1}'
WHERE id = 'system';
