-- The per-tenant hash chain: one head per tenant, events in sequence order.
CREATE TABLE audit_chain_heads (
    tenant_id TEXT PRIMARY KEY,
    sequence  BIGINT NOT NULL,
    hash      BYTEA NOT NULL
);

CREATE TABLE audit_events (
    tenant_id     TEXT NOT NULL,
    sequence      BIGINT NOT NULL,
    event_id      TEXT NOT NULL UNIQUE,
    action        TEXT NOT NULL,
    occur_time    BIGINT NOT NULL,
    canonical     BYTEA NOT NULL,
    previous_hash BYTEA NOT NULL,
    hash          BYTEA NOT NULL,
    recorded_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, sequence)
);

CREATE INDEX audit_events_by_action ON audit_events (tenant_id, action, sequence);
CREATE INDEX audit_events_by_time ON audit_events (tenant_id, occur_time);
