-- The key a key was created with (`tenants/{tenant_id}/apiKeys/{key_id}`), NULL for a key a
-- person or the bootstrap made, and for keys made before this column.
-- Revoking a key revokes the keys created with it, and theirs (`revoke_keys_created_with`):
-- a leaked service-account key must not leave behind keys it minted that outlive its
-- revocation. A platform operator's key may make keys in any tenant, so the index is not per
-- tenant. No foreign key: a restored tenant's keys may name a key the stream did not carry.
ALTER TABLE api_keys ADD COLUMN created_with TEXT;

CREATE INDEX api_keys_by_maker ON api_keys (created_with);
