-- The client's address and user agent (an encoded `RequestOrigin`), kept beside the chained
-- bytes: personal data that erasure can remove without breaking the chain.
ALTER TABLE audit_events ADD COLUMN origin BLOB;
