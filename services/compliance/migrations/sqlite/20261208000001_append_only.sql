-- The audit log is append-only: stored events are never changed or deleted (audit.proto), and
-- the database refuses any statement that would. The hash chain shows tampering afterwards;
-- this stops a stray statement (a bug, a hand-typed fix) from doing it in the first place.
-- One change is let through: erasing an event's `origin` (set to NULL), which lies outside
-- the chained bytes so that personal data can be erased. A column added later must join the
-- first trigger's list, and a migration that fills one in must drop and recreate it.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OF
    tenant_id, sequence, event_id, action, occur_time, canonical, previous_hash, hash,
    recorded_at
ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_events_origin_only_erased BEFORE UPDATE OF origin ON audit_events
WHEN NEW.origin IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused');
END;

-- `INSERT OR REPLACE` deletes the row it replaces without firing a DELETE trigger (recursive
-- triggers are off), so an insert that would replace a stored event is refused before it.
CREATE TRIGGER audit_events_no_replace BEFORE INSERT ON audit_events
WHEN EXISTS (
    SELECT 1 FROM audit_events
    WHERE event_id = NEW.event_id OR (tenant_id = NEW.tenant_id AND sequence = NEW.sequence)
)
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: a stored event cannot be replaced');
END;
