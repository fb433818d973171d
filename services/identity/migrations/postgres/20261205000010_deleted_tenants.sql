-- The ids of deleted tenants. A tenant's audit log outlives it in compliance, kept under its
-- id, so a new tenant given a deleted one's id would read its predecessor's log: `CreateTenant`
-- refuses an id found here. `DeleteTenant` writes the row in its transaction; a restore
-- (`ImportTenantData`) brings the same tenant back and removes it. Domains are not kept: a
-- deleted tenant's domain is free for another tenant.
CREATE TABLE deleted_tenants (
    id          TEXT PRIMARY KEY,
    delete_time BIGINT NOT NULL
);

-- A row names one tenant, like `tenants` itself, and gets the same policy: that tenant's scope
-- (a restore's) and '*' (the operators' `CreateTenant` and `DeleteTenant`) see it.
ALTER TABLE deleted_tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE deleted_tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON deleted_tenants
    USING (id = current_setting('palisade.tenant_id', true) OR current_setting('palisade.tenant_id', true) = '*');
