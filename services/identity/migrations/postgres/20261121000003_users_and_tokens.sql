-- Users of a tenant and the built-in roles they hold; the keys that sign access tokens; and
-- refresh tokens in families. An email is unique within its tenant (stored in lower case);
-- only an Argon2id PHC string of a password and a SHA-256 of a refresh token are kept.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    email         TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    state         TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    create_time   BIGINT NOT NULL,
    update_time   BIGINT NOT NULL
);

CREATE UNIQUE INDEX users_unique_email ON users (tenant_id, email);
CREATE INDEX users_by_create_time ON users (tenant_id, create_time, id);

CREATE TABLE user_roles (
    user_id   TEXT NOT NULL REFERENCES users (id),
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    role      TEXT NOT NULL,
    PRIMARY KEY (user_id, role)
);

CREATE INDEX user_roles_by_role ON user_roles (tenant_id, role);

-- Ed25519 keys that sign access tokens. The private key is stored as PKCS#8 bytes in the
-- database: whoever reads this table can mint tokens (see ARCHITECTURE.md).
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    private_key BYTEA NOT NULL,
    public_key  BYTEA NOT NULL,
    create_time BIGINT NOT NULL
);

-- One family per login; every refresh token descends from one login, and revoking the
-- family ends them all.
CREATE TABLE token_families (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    user_id     TEXT NOT NULL REFERENCES users (id),
    create_time BIGINT NOT NULL,
    revoke_time BIGINT
);

CREATE TABLE refresh_tokens (
    id          TEXT PRIMARY KEY,
    family_id   TEXT NOT NULL REFERENCES token_families (id),
    token_hash  BYTEA NOT NULL UNIQUE,
    create_time BIGINT NOT NULL,
    expire_time BIGINT NOT NULL,
    use_time    BIGINT
);

CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);
