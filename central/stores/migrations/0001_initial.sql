-- Registry schema, version 1.
CREATE TABLE models (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    owner       TEXT NOT NULL,
    tags        TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE model_tags (
    model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
) WITHOUT ROWID;
CREATE INDEX model_tags_kv ON model_tags(key, value, model_id);

CREATE TABLE blobs (
    digest     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    zdigest    TEXT NOT NULL,
    zsize      INTEGER NOT NULL,
    created_at TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE versions (
    id              INTEGER PRIMARY KEY,
    model_id        INTEGER NOT NULL REFERENCES models(id),
    version         TEXT NOT NULL,
    sort_key        TEXT NOT NULL,
    branch          TEXT NOT NULL,
    parent          TEXT,
    format          TEXT NOT NULL,
    stage           TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    owner           TEXT NOT NULL,
    tags            TEXT NOT NULL DEFAULT '{}',
    metadata        TEXT NOT NULL,
    signature       TEXT,
    files           TEXT NOT NULL,
    manifest        TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    metadata_digest TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    UNIQUE (model_id, version)
);
CREATE INDEX versions_model_sort ON versions(model_id, sort_key);
CREATE INDEX versions_model_branch_sort ON versions(model_id, branch, sort_key);
CREATE INDEX versions_created ON versions(created_at, id);
CREATE INDEX versions_stage ON versions(stage, created_at, id);
CREATE INDEX versions_branch ON versions(branch, created_at, id);
CREATE INDEX versions_owner ON versions(owner, created_at, id);
CREATE INDEX versions_format ON versions(format, created_at, id);
CREATE INDEX versions_manifest ON versions(manifest_digest);

CREATE TABLE version_files (
    version_id INTEGER NOT NULL REFERENCES versions(id),
    path       TEXT NOT NULL,
    digest     TEXT NOT NULL REFERENCES blobs(digest),
    PRIMARY KEY (version_id, path)
) WITHOUT ROWID;
CREATE INDEX version_files_digest ON version_files(digest);

CREATE TABLE version_tags (
    version_id INTEGER NOT NULL REFERENCES versions(id),
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (version_id, key)
) WITHOUT ROWID;
CREATE INDEX version_tags_kv ON version_tags(key, value, version_id);

CREATE TABLE version_metrics (
    version_id INTEGER NOT NULL REFERENCES versions(id),
    key        TEXT NOT NULL,
    value      REAL NOT NULL,
    PRIMARY KEY (version_id, key)
) WITHOUT ROWID;
CREATE INDEX version_metrics_kv ON version_metrics(key, value, version_id);

-- Full-text index of version descriptions; rowid is versions.id.
CREATE VIRTUAL TABLE version_text USING fts5(description);

CREATE TABLE aliases (
    model_id   INTEGER NOT NULL REFERENCES models(id),
    name       TEXT NOT NULL,
    version_id INTEGER NOT NULL REFERENCES versions(id),
    updated_at TEXT NOT NULL,
    PRIMARY KEY (model_id, name)
) WITHOUT ROWID;
CREATE INDEX aliases_version ON aliases(version_id);

CREATE TABLE alias_history (
    id                  INTEGER PRIMARY KEY,
    model_id            INTEGER NOT NULL REFERENCES models(id),
    alias               TEXT NOT NULL,
    action              TEXT NOT NULL,
    version_id          INTEGER REFERENCES versions(id),
    previous_version_id INTEGER REFERENCES versions(id),
    actor               TEXT NOT NULL,
    at                  TEXT NOT NULL
);
CREATE INDEX alias_history_by_alias ON alias_history(model_id, alias, id);

CREATE TABLE changes (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    kind    TEXT NOT NULL,
    model   TEXT,
    version TEXT,
    alias   TEXT,
    data    TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    role       TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    request_id TEXT,
    detail     TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    models     TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT
) WITHOUT ROWID;

CREATE TABLE roots (
    version    INTEGER PRIMARY KEY,
    envelope   TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- ONNX validation results, per digest of the main model file.
CREATE TABLE onnx_signatures (
    digest    TEXT PRIMARY KEY,
    signature TEXT NOT NULL
) WITHOUT ROWID;
