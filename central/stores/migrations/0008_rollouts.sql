-- Phased rollouts of a candidate version to a fleet, and what happened to them.
CREATE TABLE rollouts (
    id              TEXT PRIMARY KEY,
    model           TEXT NOT NULL,
    fleet_id        INTEGER NOT NULL REFERENCES fleets(id),
    candidate       TEXT NOT NULL,
    baseline        TEXT NOT NULL,
    strategy        TEXT NOT NULL,
    steps           TEXT NOT NULL,
    step            INTEGER NOT NULL,
    sticky_header   TEXT,
    soak_seconds    REAL NOT NULL,
    rules           TEXT NOT NULL,
    status          TEXT NOT NULL,
    reason          TEXT,
    step_started_at TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX rollouts_fleet ON rollouts(fleet_id, status);
CREATE INDEX rollouts_status ON rollouts(status);

CREATE TABLE rollout_events (
    id         INTEGER PRIMARY KEY,
    rollout_id TEXT NOT NULL REFERENCES rollouts(id),
    at         TEXT NOT NULL,
    kind       TEXT NOT NULL,
    detail     TEXT NOT NULL
);
CREATE INDEX rollout_events_by_rollout ON rollout_events(rollout_id, id);
