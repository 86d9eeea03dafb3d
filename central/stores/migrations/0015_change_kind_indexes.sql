-- The change log is read by kind for two kinds only (the last fleet state of each
-- fleet, the last root rotation). Partial indexes serve those two; the changes of every
-- other kind, such as a registration's, no longer write an index entry.
DROP INDEX changes_kind;
CREATE INDEX changes_fleet_states ON changes(seq) WHERE kind = 'fleet_state.updated';
CREATE INDEX changes_root_rotations ON changes(seq) WHERE kind = 'root.rotated';
