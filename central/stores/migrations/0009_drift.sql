-- Data drift: live input-feature counts per telemetry window, and the last drift level of
-- each (model, version, fleet, feature), so an alert is raised once per episode.
ALTER TABLE telemetry ADD COLUMN features TEXT NOT NULL DEFAULT '{}';

CREATE TABLE drift_levels (
    model      TEXT NOT NULL,
    version    TEXT NOT NULL,
    fleet      TEXT NOT NULL,
    feature    TEXT NOT NULL,
    level      TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (model, version, fleet, feature)
) WITHOUT ROWID;
