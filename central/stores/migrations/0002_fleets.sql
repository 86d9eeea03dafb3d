-- Fleets, their assigned models, signed fleet states and enrolled devices.
CREATE TABLE fleets (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL
);

CREATE TABLE fleet_models (
    fleet_id INTEGER NOT NULL REFERENCES fleets(id),
    model_id INTEGER NOT NULL REFERENCES models(id),
    alias    TEXT NOT NULL,
    PRIMARY KEY (fleet_id, model_id)
) WITHOUT ROWID;
CREATE INDEX fleet_models_model ON fleet_models(model_id);

CREATE TABLE fleet_states (
    fleet_id   INTEGER NOT NULL REFERENCES fleets(id),
    serial     INTEGER NOT NULL,
    envelope   TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (fleet_id, serial)
) WITHOUT ROWID;

CREATE TABLE devices (
    id         TEXT PRIMARY KEY,
    fleet_id   INTEGER NOT NULL REFERENCES fleets(id),
    token_id   TEXT NOT NULL REFERENCES tokens(id),
    created_at TEXT NOT NULL,
    last_seen  TEXT,
    report     TEXT
) WITHOUT ROWID;
CREATE INDEX devices_fleet ON devices(fleet_id);
CREATE INDEX devices_token ON devices(token_id);

CREATE INDEX changes_kind ON changes(kind, seq);
