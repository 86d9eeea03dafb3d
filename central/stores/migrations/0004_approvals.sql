-- Approval requests for lifecycle transitions, and the decisions of their approvers.
CREATE TABLE approval_requests (
    id             INTEGER PRIMARY KEY,
    model          TEXT NOT NULL,
    version        TEXT NOT NULL,
    from_stage     TEXT NOT NULL,
    to_stage       TEXT NOT NULL,
    requested_by   TEXT NOT NULL,
    requester_name TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'approved', 'rejected', 'expired', 'applied')),
    required       INTEGER NOT NULL,
    created_at     TEXT NOT NULL,
    expires_at     TEXT NOT NULL,
    decided_at     TEXT,
    reason         TEXT
);
CREATE INDEX approval_requests_status ON approval_requests(status, id);
CREATE INDEX approval_requests_version ON approval_requests(model, version, status);

CREATE TABLE approvals (
    request_id INTEGER NOT NULL REFERENCES approval_requests(id),
    approver   TEXT NOT NULL,
    name       TEXT NOT NULL,
    decision   TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment    TEXT NOT NULL DEFAULT '',
    at         TEXT NOT NULL,
    PRIMARY KEY (request_id, approver)
) WITHOUT ROWID;
