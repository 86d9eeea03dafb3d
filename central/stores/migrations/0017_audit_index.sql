-- The actor, action and time of each audit row are found through the search index
-- (central/stores/sqlite_search.py), which takes them in batches after they commit and
-- which every audit listing brings up to date first. Every commit wrote an entry into
-- each of these three indexes, each on a page of its own.
DROP INDEX audit_actor;
DROP INDEX audit_action;
DROP INDEX audit_at;
