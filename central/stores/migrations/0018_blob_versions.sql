-- Which versions hold a blob is found through the search index (blob_versions, in
-- central/stores/sqlite_search.py), taken in batches after commit from the versions'
-- own file lists; a scoped token's blob access first brings it up to date. The fleet
-- state reads a version's blobs from its file list. Every registration's commit wrote
-- a page of this table and a page of its index.
DROP INDEX version_files_digest;
DROP TABLE version_files;
