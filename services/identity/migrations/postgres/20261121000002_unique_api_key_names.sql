-- A key's name is unique within its tenant; it also makes the bootstrap operator key a
-- once-only insert when several replicas start together.
CREATE UNIQUE INDEX api_keys_unique_name ON api_keys (tenant_id, display_name);
