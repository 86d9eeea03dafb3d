-- Hash chain over the audit log, and signed checkpoints of its head.
-- Rows written before this migration have no hash yet; central chains them, in id
-- order, the first time it starts (SQLite has no SHA-256 to do it here).
ALTER TABLE audit ADD COLUMN prev_hash TEXT;
ALTER TABLE audit ADD COLUMN hash TEXT;
CREATE INDEX audit_actor ON audit(actor, id);
CREATE INDEX audit_action ON audit(action, id);
CREATE INDEX audit_at ON audit(at, id);

CREATE TABLE audit_checkpoints (
    id        INTEGER PRIMARY KEY,
    audit_id  INTEGER NOT NULL,
    hash      TEXT NOT NULL,
    signed_at TEXT NOT NULL,
    envelope  TEXT NOT NULL
);
