"""SQL of approval requests and their decisions (part of the SQLite metadata store)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from central.stores._sqlbase import SqlBase

REQUEST_STATUSES = ("pending", "approved", "rejected", "expired", "applied")


@dataclass(frozen=True, slots=True)
class Decision:
    """One approver's decision on a request."""

    approver: str  # token id
    name: str
    decision: str  # "approve" or "reject"
    comment: str
    at: str
    valid: bool = True  # False once the approver's token is revoked or expired

    def to_dict(self) -> dict[str, Any]:
        return {
            "approver": self.approver,
            "name": self.name,
            "decision": self.decision,
            "comment": self.comment,
            "at": self.at,
            "valid": self.valid,
        }


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    id: int
    model: str
    version: str
    from_stage: str
    to_stage: str
    requested_by: str
    requester_name: str
    status: str
    required: int
    created_at: str
    expires_at: str
    decided_at: str | None
    reason: str | None
    decisions: tuple[Decision, ...] = field(default_factory=tuple)

    @property
    def approved_by(self) -> list[str]:
        """Token ids of the approvals that count now."""
        return [d.approver for d in self.decisions if d.decision == "approve" and d.valid]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "from_stage": self.from_stage,
            "to_stage": self.to_stage,
            "requested_by": self.requested_by,
            "requester_name": self.requester_name,
            "status": self.status,
            "required": self.required,
            "approvals": len(self.approved_by),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "decided_at": self.decided_at,
            "reason": self.reason,
            "decisions": [d.to_dict() for d in self.decisions],
        }


class ApprovalReads(SqlBase):
    async def get_request(self, request_id: int, now: str) -> ApprovalRequest | None:
        row = await self._one("SELECT * FROM approval_requests WHERE id = ?", (request_id,))
        return None if row is None else await self._request(row, now)

    async def pending_request(self, model: str, version: str, now: str) -> ApprovalRequest | None:
        """The pending, unexpired request of a version, if any."""
        row = await self._one(
            "SELECT * FROM approval_requests WHERE model = ? AND version = ? "
            "AND status = 'pending' AND expires_at > ? ORDER BY id DESC LIMIT 1",
            (model, version, now),
        )
        return None if row is None else await self._request(row, now)

    async def list_requests(
        self, status: str | None, after: int, limit: int, now: str
    ) -> list[ApprovalRequest]:
        """Requests by id; a pending request past its expiry is listed as expired."""
        sql = "SELECT * FROM approval_requests WHERE id > ?"
        params: list[Any] = [after]
        if status == "expired":
            sql += " AND (status = 'expired' OR (status = 'pending' AND expires_at <= ?))"
            params.append(now)
        elif status == "pending":
            sql += " AND status = 'pending' AND expires_at > ?"
            params.append(now)
        elif status is not None:
            sql += " AND status = ?"
            params.append(status)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        return [await self._request(r, now) for r in await self._all(sql, params)]

    async def _request(self, row: sqlite3.Row, now: str) -> ApprovalRequest:
        # an approval counts only while its approver's token is neither revoked nor expired
        decisions = await self._all(
            "SELECT a.*, t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > ?) "
            "AS valid FROM approvals a LEFT JOIN tokens t ON t.id = a.approver "
            "WHERE a.request_id = ? ORDER BY a.at, a.approver",
            (now, row["id"]),
        )
        status = row["status"]
        if status == "pending" and row["expires_at"] <= now:
            status = "expired"
        return ApprovalRequest(
            id=row["id"],
            model=row["model"],
            version=row["version"],
            from_stage=row["from_stage"],
            to_stage=row["to_stage"],
            requested_by=row["requested_by"],
            requester_name=row["requester_name"],
            status=status,
            required=row["required"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            decided_at=row["decided_at"],
            reason=row["reason"],
            decisions=tuple(
                Decision(
                    d["approver"], d["name"], d["decision"], d["comment"], d["at"], bool(d["valid"])
                )
                for d in decisions
            ),
        )


class ApprovalWrites(SqlBase):
    async def insert_request(
        self,
        *,
        model: str,
        version: str,
        from_stage: str,
        to_stage: str,
        requested_by: str,
        requester_name: str,
        required: int,
        created_at: str,
        expires_at: str,
    ) -> int:
        return await self._run(
            "INSERT INTO approval_requests (model, version, from_stage, to_stage, requested_by,"
            " requester_name, status, required, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
            (
                model,
                version,
                from_stage,
                to_stage,
                requested_by,
                requester_name,
                required,
                created_at,
                expires_at,
            ),
        )

    async def insert_decision(
        self, request_id: int, approver: str, name: str, decision: str, comment: str, at: str
    ) -> None:
        await self._run(
            "INSERT INTO approvals (request_id, approver, name, decision, comment, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (request_id, approver, name, decision, comment, at),
        )

    async def set_request_status(
        self, request_id: int, status: str, at: str, reason: str | None = None
    ) -> None:
        await self._run(
            "UPDATE approval_requests SET status = ?, decided_at = ?,"
            " reason = coalesce(?, reason) WHERE id = ?",
            (status, at, reason, request_id),
        )

    async def expire_requests(self, now: str) -> int:
        """Mark every pending request past its expiry as expired; how many were."""
        return await self._change(
            "UPDATE approval_requests SET status = 'expired', decided_at = expires_at "
            "WHERE status = 'pending' AND expires_at <= ?",
            (now,),
        )
