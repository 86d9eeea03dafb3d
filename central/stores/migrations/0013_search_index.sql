-- Tags and metrics reach their search tables with descriptions, in batches after
-- registration (version ids up to indexed_through are in all three). Versions that
-- earlier releases registered have their tags and metrics already; indexing them
-- again leaves those rows as they are.
ALTER TABLE text_index_state RENAME TO search_index_state;
