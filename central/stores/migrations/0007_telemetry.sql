-- Edge telemetry: batches already counted (idempotent uploads) and per-version windows.
CREATE TABLE telemetry_batches (
    batch_id    TEXT PRIMARY KEY,
    device      TEXT NOT NULL,
    received_at TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE telemetry (
    id           INTEGER PRIMARY KEY,
    model        TEXT NOT NULL,
    version      TEXT NOT NULL,
    device       TEXT NOT NULL,
    fleet        TEXT NOT NULL,
    window_start TEXT NOT NULL,
    window_end   TEXT NOT NULL,
    requests     INTEGER NOT NULL,
    errors       INTEGER NOT NULL,
    latency      TEXT NOT NULL,
    classes      TEXT NOT NULL
);
CREATE INDEX telemetry_version ON telemetry(model, version, window_end);
CREATE INDEX telemetry_fleet ON telemetry(fleet, model, version);
