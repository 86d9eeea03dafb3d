-- Stage, branch, owner and format filters are served by version_facets, which the search
-- indexer fills in batches with the tags and metrics (every version up to indexed_through
-- is in it; a stage change updates its row). Registering a version no longer writes an
-- index entry for each of them, and creation order is registration order: the version
-- id, which its primary key serves.
CREATE TABLE version_facets (
    field      TEXT NOT NULL,
    value      TEXT NOT NULL,
    version_id INTEGER NOT NULL REFERENCES versions(id),
    PRIMARY KEY (field, value, version_id)
) WITHOUT ROWID;

INSERT INTO version_facets (field, value, version_id)
    SELECT 'stage', stage, id FROM versions
    UNION ALL SELECT 'branch', branch, id FROM versions
    UNION ALL SELECT 'owner', owner, id FROM versions
    UNION ALL SELECT 'format', format, id FROM versions;

DROP INDEX versions_created;
DROP INDEX versions_stage;
DROP INDEX versions_branch;
DROP INDEX versions_owner;
DROP INDEX versions_format;
