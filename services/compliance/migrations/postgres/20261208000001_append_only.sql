-- The audit log is append-only: stored events are never changed or deleted (audit.proto), and
-- the database refuses any statement that would, whoever sends it, the service's own role
-- included. The hash chain shows tampering afterwards; this stops a stray statement (a bug,
-- a hand-typed fix) from doing it in the first place. One change is let through: erasing an
-- event's `origin` (set to NULL, nothing else changed), which lies outside the chained bytes
-- so that personal data can be erased. Chain heads move on every append and are not covered.
-- A migration that fills in a column added later must disable the trigger while it does.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.origin IS NULL
        AND to_jsonb(NEW) - 'origin' = to_jsonb(OLD) - 'origin' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
