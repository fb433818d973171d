-- A tenant table under row-level security, as every service's are, with rows from before.
CREATE TABLE notes (tenant_id TEXT NOT NULL, body TEXT NOT NULL);
INSERT INTO notes (tenant_id, body) VALUES ('acme', 'hello'), ('globex', 'world');
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE notes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON notes
    USING (tenant_id = current_setting('palisade.tenant_id', true) OR current_setting('palisade.tenant_id', true) = '*');
