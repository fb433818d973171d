-- Tenants and the API keys that act for them.
CREATE TABLE tenants (
    id           TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    plan         TEXT NOT NULL,
    state        TEXT NOT NULL,
    region       TEXT NOT NULL,
    domain       TEXT UNIQUE,
    create_time  BIGINT NOT NULL,
    update_time  BIGINT NOT NULL
);

CREATE INDEX tenants_by_create_time ON tenants (create_time, id);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    display_name  TEXT NOT NULL,
    secret_hash   BLOB NOT NULL,
    scopes        TEXT NOT NULL,
    create_time   BIGINT NOT NULL,
    expire_time   BIGINT NOT NULL,
    revoke_time   BIGINT,
    last_use_time BIGINT
);

CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, create_time);
