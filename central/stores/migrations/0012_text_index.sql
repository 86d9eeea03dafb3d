-- Descriptions reach the full-text index in batches after registration, not in the
-- registering transaction; this row records the last version id indexed. Every
-- version registered so far was indexed when it was registered.
CREATE TABLE text_index_state (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_through INTEGER NOT NULL
);
INSERT INTO text_index_state (id, indexed_through) SELECT 1, coalesce(max(id), 0) FROM versions;
