"""SQL of the hash-chained audit log and its signed checkpoints (part of the SQLite store).

Each audit row carries ``prev_hash`` (the hash of the row before it, 64 zeros for the
first) and ``hash``, the SHA-256 of the canonical JSON of its own fields and
``prev_hash`` (see :func:`entry_hash`). A row is chained inside the write transaction
that appends it, so the writer lock orders the chain.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from central.services.context import current_request_id
from central.stores._sqlbase import SqlBase, dumps
from shared.canonical import canonical_json
from shared.timeutil import format_time, utcnow

GENESIS = "0" * 64  # prev_hash of the first row
_BACKLOG_BATCH = 500


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row as stored."""

    id: int
    at: str
    actor: str
    role: str
    action: str
    target: str
    outcome: str
    request_id: str | None
    detail: str  # compact sorted JSON text, hashed as stored
    prev_hash: str | None
    hash: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "role": self.role,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "request_id": self.request_id,
            "detail": json.loads(self.detail),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    id: int
    audit_id: int
    hash: str
    signed_at: str
    envelope: dict[str, Any]


def entry_hash(
    *,
    id: int,
    at: str,
    actor: str,
    role: str,
    action: str,
    target: str,
    outcome: str,
    request_id: str | None,
    detail: str,
    prev_hash: str,
) -> str:
    """The hex SHA-256 that chains one audit row to the row before it."""
    fields = {
        "id": id,
        "at": at,
        "actor": actor,
        "role": role,
        "action": action,
        "target": target,
        "outcome": outcome,
        "request_id": request_id,
        "detail": detail,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_json(fields)).hexdigest()


def hash_of(entry: AuditEntry, prev_hash: str) -> str:
    """:func:`entry_hash` of a stored row, chained to ``prev_hash``."""
    return entry_hash(
        id=entry.id,
        at=entry.at,
        actor=entry.actor,
        role=entry.role,
        action=entry.action,
        target=entry.target,
        outcome=entry.outcome,
        request_id=entry.request_id,
        detail=entry.detail,
        prev_hash=prev_hash,
    )


def _entry(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        at=row["at"],
        actor=row["actor"],
        role=row["role"],
        action=row["action"],
        target=row["target"],
        outcome=row["outcome"],
        request_id=row["request_id"],
        detail=row["detail"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def _checkpoint(row: sqlite3.Row) -> CheckpointRow:
    return CheckpointRow(
        row["id"], row["audit_id"], row["hash"], row["signed_at"], json.loads(row["envelope"])
    )


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What an audit listing keeps; None means any."""

    actor: str | None = None
    model: str | None = None
    action: str | None = None  # an action, or a family such as ``alias.*``
    since: str | None = None  # a time in the wire format


def _where(f: AuditFilter) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if f.actor is not None:
        where.append("actor = ?")
        params.append(f.actor)
    if f.action is not None and f.action.endswith(".*"):
        prefix = f.action[:-1]
        where.append("substr(action, 1, ?) = ?")
        params += [len(prefix), prefix]
    elif f.action is not None:
        where.append("action = ?")
        params.append(f.action)
    if f.since is not None:
        where.append("at >= ?")
        params.append(f.since)
    if f.model is not None:
        # model.* rows name the model; versions and aliases are "model@v" and "model:alias";
        # fleet rows name it in their detail.
        n = len(f.model) + 1
        where.append(
            "((target = ? AND substr(action, 1, 6) = 'model.') OR substr(target, 1, ?) = ?"
            " OR substr(target, 1, ?) = ? OR json_extract(detail, '$.model') = ?)"
        )
        params += [f.model, n, f.model + "@", n, f.model + ":", f.model]
    return where, params


def _facet(f: AuditFilter) -> tuple[str, str, str] | None:
    """The search index's entries to walk for ``f``: (field, comparison, value)."""
    if f.actor is not None:
        return "actor", "=", f.actor
    if f.action is not None and not f.action.endswith(".*"):
        return "action", "=", f.action
    if f.since is not None:
        return "at", ">=", f.since
    return None


class AuditReads(SqlBase):
    async def list_audit(self, f: AuditFilter, before: int | None, limit: int) -> list[AuditEntry]:
        """Matching rows, newest first, with ids below ``before``.

        Reads the search index (attached as ``search``), which the caller has brought
        up to date: an actor, an action or a time is found through its entries there.
        """
        where, params = _where(f)
        if before is not None:
            where.append("id < ?")
            params.append(before)
        facet = _facet(f)
        if facet is None:
            sql, order = "SELECT * FROM audit", "id"
        else:
            field, op, value = facet
            sql = "SELECT a.* FROM search.audit_facets x JOIN audit a ON a.id = x.audit_id"
            where.insert(0, f"x.field = '{field}' AND x.value {op} ?")
            params.insert(0, value)
            order = "x.audit_id"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order} DESC LIMIT ?"
        return [_entry(r) for r in await self._all(sql, [*params, limit])]

    async def audit_after(self, after: int, limit: int) -> list[AuditEntry]:
        """Rows with ids above ``after``, in id order."""
        rows = await self._all(
            "SELECT * FROM audit WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        )
        return [_entry(r) for r in rows]

    async def audit_head(self) -> tuple[int, str | None, int]:
        """The last row's id and hash, and the number of rows (0, None, 0 when empty)."""
        row = await self._one(
            "SELECT id, hash, (SELECT count(*) FROM audit) AS n FROM audit ORDER BY id DESC LIMIT 1"
        )
        return (0, None, 0) if row is None else (int(row["id"]), row["hash"], int(row["n"]))

    async def audit_checkpoints(self, after: int, limit: int) -> list[CheckpointRow]:
        rows = await self._all(
            "SELECT * FROM audit_checkpoints WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        )
        return [_checkpoint(r) for r in rows]

    async def last_audit_checkpoint(self) -> CheckpointRow | None:
        row = await self._one("SELECT * FROM audit_checkpoints ORDER BY id DESC LIMIT 1")
        return None if row is None else _checkpoint(row)


class AuditWrites(SqlBase):
    async def append_audit(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        target: str,
        outcome: str = "ok",
        request_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Append one row, chained to the last one; returns its id.

        ``request_id`` defaults to the id of the request being served, if any.
        """
        if request_id is None:
            request_id = current_request_id()
        # The row follows the tail (rows are never deleted), so its id, which its hash
        # covers, is known before it is written: one INSERT writes it whole.
        last_id, prev = await self._audit_tail()
        audit_id = last_id + 1
        at, text = format_time(utcnow()), dumps(detail or {})
        digest = entry_hash(
            id=audit_id,
            at=at,
            actor=actor,
            role=role,
            action=action,
            target=target,
            outcome=outcome,
            request_id=request_id,
            detail=text,
            prev_hash=prev,
        )
        await self._run(
            "INSERT INTO audit (id, at, actor, role, action, target, outcome, request_id,"
            " detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (audit_id, at, actor, role, action, target, outcome, request_id, text, prev, digest),
        )
        return audit_id

    async def _audit_tail(self) -> tuple[int, str]:
        """The id and hash of the last row (0 and the genesis hash for an empty log)."""
        row = await self._one("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
        if row is None:
            return 0, GENESIS
        if row[1] is None:  # rows from before the chain existed, not chained yet
            await self.chain_audit_backlog()
            row = await self._one("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
            assert row is not None and row[1] is not None
        return int(row[0]), str(row[1])

    async def chain_audit_backlog(self) -> int:
        """Chain the rows written before the log was chained, in id order; returns how many.

        Only the unchained rows *before* the first chained one are the backlog: a row
        without a hash after a chained one was tampered with and stays unchained, for
        verification to report.
        """
        first = await self._one("SELECT min(id) FROM audit WHERE hash IS NOT NULL")
        limit_id = None if first is None or first[0] is None else int(first[0])
        prev, count, last_id = GENESIS, 0, 0
        while True:
            sql, params = "SELECT * FROM audit WHERE id > ?", [last_id]
            if limit_id is not None:
                sql += " AND id < ?"
                params.append(limit_id)
            entries = [
                _entry(r)
                for r in await self._all(sql + " ORDER BY id LIMIT ?", [*params, _BACKLOG_BATCH])
            ]
            if not entries:
                return count
            updates: list[Sequence[Any]] = []
            for entry in entries:
                digest = hash_of(entry, prev)
                updates.append((prev, digest, entry.id))
                prev = digest
            await self._many("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", updates)
            count += len(entries)
            last_id = entries[-1].id

    async def insert_audit_checkpoint(
        self, audit_id: int, digest: str, signed_at: str, envelope: dict[str, Any]
    ) -> int:
        return await self._run(
            "INSERT INTO audit_checkpoints (audit_id, hash, signed_at, envelope) "
            "VALUES (?, ?, ?, ?)",
            (audit_id, digest, signed_at, dumps(envelope)),
        )
