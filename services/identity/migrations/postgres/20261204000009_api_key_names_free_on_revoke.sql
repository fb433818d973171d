-- A revoked key gives up its name, so a key can be replaced by a new one of the same name
-- (revoke "ci", create "ci"). Among keys not revoked a name stays unique within its tenant,
-- which also keeps the bootstrap operator key a once-only insert when replicas start
-- together (bootstrap looks for the name among all keys, revoked ones included).
DROP INDEX api_keys_unique_name;
CREATE UNIQUE INDEX api_keys_unique_live_name ON api_keys (tenant_id, display_name)
    WHERE revoke_time IS NULL;
