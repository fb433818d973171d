-- Row-level security (DESIGN §4.5): a transaction sees only the rows of the tenant in its
-- `palisade.tenant_id` setting ('*' for work that spans tenants: platform operators, public
-- and mesh-internal calls), set by palisade-db for every connection it hands out and by
-- explicitly scoped transactions. A query that forgets its tenant filter still cannot cross
-- tenants. FORCE applies the policies to the owning role too; superusers and BYPASSRLS roles
-- skip them, so the service connects as an ordinary role. `signing_keys`, `usage_batches` and
-- the outbox belong to no tenant and have no policy.

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (id = current_setting('palisade.tenant_id', true) OR current_setting('palisade.tenant_id', true) = '*');

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users
    USING (tenant_id = current_setting('palisade.tenant_id', true) OR current_setting('palisade.tenant_id', true) = '*');

ALTER TABLE user_roles ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_roles FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON user_roles
    USING (tenant_id = current_setting('palisade.tenant_id', true) OR current_setting('palisade.tenant_id', true) = '*');

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys
    USING (tenant_id = current_setting('palisade.tenant_id', true) OR current_setting('palisade.tenant_id', true) = '*');

ALTER TABLE token_families ENABLE ROW LEVEL SECURITY;
ALTER TABLE token_families FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON token_families
    USING (tenant_id = current_setting('palisade.tenant_id', true) OR current_setting('palisade.tenant_id', true) = '*');

ALTER TABLE tenant_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_usage FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_usage
    USING (tenant_id = current_setting('palisade.tenant_id', true) OR current_setting('palisade.tenant_id', true) = '*');

ALTER TABLE roles ENABLE ROW LEVEL SECURITY;
ALTER TABLE roles FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roles
    USING (tenant_id = current_setting('palisade.tenant_id', true) OR current_setting('palisade.tenant_id', true) = '*');

ALTER TABLE role_permissions ENABLE ROW LEVEL SECURITY;
ALTER TABLE role_permissions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON role_permissions
    USING (tenant_id = current_setting('palisade.tenant_id', true) OR current_setting('palisade.tenant_id', true) = '*');

ALTER TABLE refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE refresh_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON refresh_tokens
    USING (current_setting('palisade.tenant_id', true) = '*' OR EXISTS (SELECT 1 FROM token_families f WHERE f.id = family_id));
