-- A data migration on that table: it must reach every tenant's rows.
UPDATE notes SET body = upper(body);
