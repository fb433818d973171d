-- Who an API key acts for: a user of its tenant, whose current rights bound the key, or, when
-- NULL, the tenant itself (a service-account key, such as the bootstrap operator key, which
-- keeps scope `*`).
ALTER TABLE api_keys ADD COLUMN owner_user_id TEXT REFERENCES users (id);

CREATE INDEX api_keys_by_owner ON api_keys (tenant_id, owner_user_id);
-- Listing pages through a tenant's keys by (create_time, id).
CREATE INDEX api_keys_by_create_time ON api_keys (tenant_id, create_time, id);
