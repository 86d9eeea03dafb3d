-- Encryption at rest: each blob's data key, wrapped by the master key (docs/encryption.md).
-- The master key itself is never stored; master_key_id names which one wrapped the row.
CREATE TABLE blob_keys (
    digest        TEXT PRIMARY KEY,
    wrapped       BLOB NOT NULL,
    master_key_id TEXT NOT NULL,
    created_at    TEXT NOT NULL
) WITHOUT ROWID;
