-- Neither the change log nor the audit log ever loses a row, so the next id SQLite
-- picks (the largest plus one) is never one an earlier row had: AUTOINCREMENT, whose
-- bookkeeping row in sqlite_sequence every commit rewrote (one more page per commit),
-- is dropped. The ids, and so the change cursors and the audit chain, stay as they are.
CREATE TABLE changes_plain (
    seq     INTEGER PRIMARY KEY,
    at      TEXT NOT NULL,
    kind    TEXT NOT NULL,
    model   TEXT,
    version TEXT,
    alias   TEXT,
    data    TEXT NOT NULL DEFAULT '{}'
);
INSERT INTO changes_plain (seq, at, kind, model, version, alias, data)
    SELECT seq, at, kind, model, version, alias, data FROM changes ORDER BY seq;
DROP TABLE changes;
ALTER TABLE changes_plain RENAME TO changes;
CREATE INDEX changes_fleet_states ON changes(seq) WHERE kind = 'fleet_state.updated';
CREATE INDEX changes_root_rotations ON changes(seq) WHERE kind = 'root.rotated';

CREATE TABLE audit_plain (
    id         INTEGER PRIMARY KEY,
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    role       TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    request_id TEXT,
    detail     TEXT NOT NULL DEFAULT '{}',
    prev_hash  TEXT,
    hash       TEXT
);
INSERT INTO audit_plain (id, at, actor, role, action, target, outcome, request_id, detail,
                         prev_hash, hash)
    SELECT id, at, actor, role, action, target, outcome, request_id, detail, prev_hash, hash
    FROM audit ORDER BY id;
DROP TABLE audit;
ALTER TABLE audit_plain RENAME TO audit;
CREATE INDEX audit_actor ON audit(actor, id);
CREATE INDEX audit_action ON audit(action, id);
CREATE INDEX audit_at ON audit(at, id);

DELETE FROM sqlite_sequence WHERE name IN ('changes', 'audit');
