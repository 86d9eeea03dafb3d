-- The metadata document a version's manifest signs, when it differs from the full one:
-- fields that the policy declares sensitive are masked in what devices receive.
ALTER TABLE versions ADD COLUMN signed_metadata TEXT;
