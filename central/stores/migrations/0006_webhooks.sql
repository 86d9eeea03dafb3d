-- Webhooks: signed HTTP callbacks on registry events, and their persisted deliveries.
-- The secret is kept as given, since central needs it to sign each delivery: protect the
-- database file like the signing keys.
CREATE TABLE webhooks (
    id         TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    events     TEXT NOT NULL,            -- JSON list of fnmatch patterns of change kinds
    secret     TEXT NOT NULL,            -- '' once the webhook is removed
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    after_seq  INTEGER NOT NULL,         -- only changes after this one are delivered
    active     INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE webhook_deliveries (
    id              INTEGER PRIMARY KEY,
    webhook_id      TEXT NOT NULL REFERENCES webhooks(id),
    event           TEXT NOT NULL,
    event_id        INTEGER NOT NULL,    -- the change's seq
    body            TEXT NOT NULL,       -- the exact JSON bytes that are signed and sent
    status          TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,                -- unix time; also the lease of an attempt in flight
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    delivered_at    TEXT,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries(webhook_id, id);

-- How far the change log has been turned into deliveries (one row).
CREATE TABLE webhook_cursor (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
INSERT INTO webhook_cursor (id, seq) SELECT 1, coalesce(max(seq), 0) FROM changes;
