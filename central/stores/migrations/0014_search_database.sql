-- The search tables move to a database file of their own (central/stores/sqlite_search.py),
-- where they are rebuilt from the versions: indexing no longer takes the registry's write
-- lock. Branch, owner and format filters are served there too, so a registration writes
-- five index entries fewer here. Stage, which the registry's own transactions change,
-- keeps an index here, ordered by id: creation order is registration order.
DROP TABLE version_tags;
DROP TABLE version_metrics;
DROP TABLE version_text;
DROP TABLE search_index_state;
DROP INDEX versions_created;
DROP INDEX versions_stage;
DROP INDEX versions_branch;
DROP INDEX versions_owner;
DROP INDEX versions_format;
CREATE INDEX versions_stage ON versions(stage, id);
