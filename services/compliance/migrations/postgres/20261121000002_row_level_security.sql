-- Row-level security (DESIGN §4.5): a transaction sees only the rows of the tenant in its
-- `palisade.tenant_id` setting ('*' for work that spans tenants, such as appending a relay's
-- batch), so a query that forgets its tenant filter still cannot cross tenants. FORCE makes
-- the policies apply to the owning role too; superusers and BYPASSRLS roles skip them, so the
-- service connects as an ordinary role.
ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_events
    USING (tenant_id = current_setting('palisade.tenant_id', true)
           OR current_setting('palisade.tenant_id', true) = '*');

ALTER TABLE audit_chain_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_chain_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_chain_heads
    USING (tenant_id = current_setting('palisade.tenant_id', true)
           OR current_setting('palisade.tenant_id', true) = '*');
