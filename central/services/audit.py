"""The audit log: listing, verification of its hash chain, export, and signed checkpoints.

Rows are appended by the services in the transaction of the change they describe
(``tx.append_audit``); this service adds the rows of refused requests, reads the log
for the people allowed to (``read_audit``), and periodically signs its head with the
targets key (a *checkpoint*), so that removing rows from the end, or rewriting the
chain after a row, is caught by :meth:`AuditService.verify`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from central.domain import Actor, Page
from central.services._auditchain import (
    CHECKPOINT_TYPE,
    ChainWalker,
    Finding,
    check_checkpoint,
    trusted_roots,
)
from central.services.permissions import READ_AUDIT, require_unscoped
from central.services.searchindex import SearchIndexer
from central.services.signing import Signer
from central.stores.sqlite import SqliteStore
from central.stores.sqlite_audit import AuditFilter, CheckpointRow
from shared.errors import FormatError, InvalidInputError, RepositoryError
from shared.timeutil import format_time, parse_time, utcnow

logger = logging.getLogger(__name__)

BATCH = 1000  # rows read per query while verifying or exporting
CHECKPOINT_EVERY_ROWS = 1000  # a checkpoint is due after this many new rows
MAX_FILTER_CHARS = 256
ANONYMOUS = "anonymous"  # the actor of a request without a valid token


class AuditService:
    """Reads, verifies and checkpoints the hash-chained audit log."""

    def __init__(self, store: SqliteStore, signer: Signer, index: SearchIndexer) -> None:
        self._store = store
        self._signer = signer
        self._index = index  # the actor, action and time of each row are looked up there

    async def start(self) -> None:
        """Chain the rows written before the log was chained (once, after the migration)."""
        async with self._store.transaction(offload=True) as tx:  # rewrites many rows
            count = await tx.chain_audit_backlog()
        if count:
            logger.info("Chained %d audit row(s) written before the hash chain", count)

    async def list(
        self,
        actor: Actor,
        *,
        actor_name: str | None = None,
        model: str | None = None,
        action: str | None = None,
        since: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Matching rows, newest first."""
        require_unscoped(actor, READ_AUDIT)
        for name, value in (("actor", actor_name), ("model", model), ("action", action)):
            if value is not None and not 0 < len(value) <= MAX_FILTER_CHARS:
                raise InvalidInputError(f"{name} must be 1 to {MAX_FILTER_CHARS} characters")
        if since is not None:
            try:
                since = format_time(parse_time(since))
            except FormatError as e:
                raise InvalidInputError(f"since: {e}") from e
        where = AuditFilter(actor=actor_name, model=model, action=action, since=since)
        before = None if cursor is None else _decode(cursor)
        await self._index.catch_up()  # so it holds every row committed so far
        rows = await self._store.list_audit(where, before, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, _encode(rows[-1].id) if more and rows else None)

    async def verify(self, actor: Actor) -> dict[str, Any]:
        """Walk the whole chain and check every checkpoint against it.

        Returns:
            ``{"ok", "checked", "first_bad": {"id", "reason"} | None, "checkpoints",
            "last_checkpoint"}``; ``checked`` counts rows, ``checkpoints`` the
            checkpoints checked.
        """
        require_unscoped(actor, READ_AUDIT)
        walker = ChainWalker()
        # Checkpoints first: each names a row that existed before the walk starts.
        last_cp, count = await self._scan_checkpoints(walker)
        after = 0
        while rows := await self._store.audit_after(after, BATCH):
            await asyncio.to_thread(walker.feed, rows)
            after = rows[-1].id
        findings = [walker.first_bad] if walker.first_bad else []
        findings += await self._check_checkpoints(walker, last_cp)
        first_bad = min(findings, key=lambda f: f.id) if findings else None
        if first_bad is not None:
            logger.warning("Audit log verification failed at row %d: %s", *_pair(first_bad))
        last = await self._store.last_audit_checkpoint()
        return {
            "ok": first_bad is None,
            "checked": walker.checked,
            "first_bad": None if first_bad is None else first_bad.to_dict(),
            "checkpoints": count,
            "last_checkpoint": None if last is None or last.id > last_cp else _cp_dict(last),
        }

    async def _scan_checkpoints(self, walker: ChainWalker) -> tuple[int, int]:
        """Tell the walker which rows checkpoints name; returns the last id and the count."""
        last, count = 0, 0
        while batch := await self._store.audit_checkpoints(last, BATCH):
            for cp in batch:
                signed = cp.envelope.get("signed")
                named = signed.get("audit_id") if isinstance(signed, dict) else None
                walker.want([cp.audit_id, *([named] if isinstance(named, int) else [])])
            last, count = batch[-1].id, count + len(batch)
        return last, count

    async def _check_checkpoints(self, walker: ChainWalker, up_to: int) -> Sequence[Finding]:
        try:
            roots = trusted_roots(await self._store.roots_after(0))
        except RepositoryError as e:
            logger.error("The first root document does not verify: %s", e)
            roots = []
        findings: list[Finding] = []
        after = 0
        while batch := await self._store.audit_checkpoints(after, BATCH):
            for cp in batch:
                if cp.id > up_to:
                    return findings
                found = await asyncio.to_thread(check_checkpoint, cp, roots, walker)
                if found is not None and not findings:
                    findings.append(found)  # the first bad checkpoint is enough
            after = batch[-1].id
        return findings

    async def export(self, actor: Actor) -> AsyncIterator[bytes]:
        """Every row as JSON Lines, in id order (checked before the first byte)."""
        require_unscoped(actor, READ_AUDIT)
        return self._lines()

    async def _lines(self) -> AsyncIterator[bytes]:
        after = 0
        while rows := await self._store.audit_after(after, BATCH):
            yield b"".join(_line(r.to_dict()) for r in rows)
            after = rows[-1].id

    async def record_denied(
        self,
        actor: Actor | None,
        *,
        outcome: str,
        client: str,
        method: str,
        path: str,
        message: str,
    ) -> None:
        """Append the row of a refused request (401 or 403), in its own transaction."""
        detail = {"client": client, "method": method, "message": message[:500]}
        if actor is not None:
            detail["token_id"] = actor.token_id
        async with self._store.transaction() as tx:
            await tx.append_audit(
                actor=ANONYMOUS if actor is None else actor.name,
                role="none" if actor is None else actor.role,
                action="api.request",
                target=f"{method} {path}"[:1000],
                outcome=outcome,
                detail=detail,
            )

    async def checkpoint(self) -> CheckpointRow | None:
        """Sign the head of the log, unless the last checkpoint already covers it."""
        async with self._store.transaction() as tx:
            head_id, head_hash, count = await tx.audit_head()
            last = await tx.last_audit_checkpoint()
            if head_hash is None or (last is not None and last.audit_id >= head_id):
                return None
            at = format_time(utcnow())
            signed = {
                "_type": CHECKPOINT_TYPE,
                "audit_id": head_id,
                "hash": head_hash,
                "count": count,
                "at": at,
            }
            envelope = self._signer.sign(signed)
            cp_id = await tx.insert_audit_checkpoint(head_id, head_hash, at, envelope)
        logger.info("Signed audit checkpoint %d at row %d", cp_id, head_id)
        return CheckpointRow(cp_id, head_id, head_hash, at, envelope)

    async def rows_since_checkpoint(self) -> int:
        head_id, _, _ = await self._store.audit_head()
        last = await self._store.last_audit_checkpoint()
        return head_id - (0 if last is None else last.audit_id)


async def keep_checkpoints(
    audit: AuditService, interval: float, every_rows: int = CHECKPOINT_EVERY_ROWS
) -> None:
    """Sign a checkpoint every ``interval`` seconds, or sooner after ``every_rows`` rows."""
    tick = min(interval, 5.0)
    last = time.monotonic()
    while True:
        await asyncio.sleep(tick)
        try:
            due = time.monotonic() - last >= interval
            if due or await audit.rows_since_checkpoint() >= every_rows:
                await audit.checkpoint()
                last = time.monotonic()
        except Exception:
            logger.exception("Signing an audit checkpoint failed")


def _cp_dict(cp: CheckpointRow) -> dict[str, Any]:
    return {"id": cp.id, "audit_id": cp.audit_id, "hash": cp.hash, "signed_at": cp.signed_at}


def _pair(f: Finding) -> tuple[int, str]:
    return f.id, f.reason


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"


def _encode(audit_id: int) -> str:
    return base64.urlsafe_b64encode(str(audit_id).encode()).decode().rstrip("=")


def _decode(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return int(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInputError("invalid cursor") from e
