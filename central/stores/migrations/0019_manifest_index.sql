-- A version is found by its model and version wherever a fleet state names it (the
-- state holds both beside the manifest digest), so the index of manifest digests goes.
-- Its keys are random hashes: every registration's commit wrote a page of it at a
-- random place, and often had to read that page first.
DROP INDEX versions_manifest;
