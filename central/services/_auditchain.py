"""Verification of the audit log's hash chain and of its signed checkpoints.

Pure: rows, checkpoints and root documents in, findings out; no store and no clock.
``ChainWalker`` is fed the rows in id order, batch by batch, and remembers the first
row that breaks the chain; ``check_checkpoint`` compares one signed checkpoint with the
rows that remain.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from central.stores.sqlite_audit import GENESIS, AuditEntry, CheckpointRow, hash_of
from shared.errors import RepositoryError
from shared.trust import Root, load_trusted_root, verify_root_update

logger = logging.getLogger(__name__)

CHECKPOINT_TYPE = "audit_checkpoint"


@dataclass(frozen=True, slots=True)
class Finding:
    """The first audit row found bad, and why."""

    id: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "reason": self.reason}


class ChainWalker:
    """Checks that each row follows the previous one: next id, its hash, its own hash."""

    def __init__(self) -> None:
        self.last_id = 0
        self.last_hash = GENESIS
        self.checked = 0
        self.hashes: dict[int, str] = {}  # id -> stored hash, for the checkpoints' rows
        self.first_bad: Finding | None = None
        self._wanted: set[int] = set()

    def want(self, ids: Iterable[int]) -> None:
        """Remember the stored hashes of these rows (the ones checkpoints name)."""
        self._wanted.update(ids)

    def feed(self, entries: Sequence[AuditEntry]) -> None:
        """Check the next rows, in id order (blocking: hashes each row)."""
        for entry in entries:
            if entry.id in self._wanted and entry.hash is not None:
                self.hashes[entry.id] = entry.hash
            if self.first_bad is None:
                self.first_bad = self._check(entry)
            self.checked += 1
            self.last_id = entry.id
            self.last_hash = entry.hash or ""

    def _check(self, entry: AuditEntry) -> Finding | None:
        if entry.id != self.last_id + 1:
            missing = self.last_id + 1
            return Finding(
                missing,
                f"row {missing} is missing: the log goes from row {self.last_id or 'start'} "
                f"to row {entry.id}",
            )
        if entry.hash is None:
            return Finding(entry.id, f"row {entry.id} has no hash")
        if entry.prev_hash != self.last_hash:
            before = f"row {self.last_id}" if self.last_id else "the start of the log"
            return Finding(
                entry.id,
                f"row {entry.id}'s prev_hash does not match the hash of {before}: "
                "a row before it was removed or replaced",
            )
        if hash_of(entry, self.last_hash) != entry.hash:
            return Finding(entry.id, f"row {entry.id} does not match its hash: it was altered")
        return None


def trusted_roots(envelopes: Sequence[Mapping[str, Any]]) -> list[Root]:
    """Every root version that chains from version 1 (expiry is not checked: checkpoints
    signed in the past stay valid).

    Raises:
        RepositoryError: version 1 is not self-signed; later breaks end the chain early.
    """
    if not envelopes:
        return []
    roots = [load_trusted_root(envelopes[0])]
    for envelope in envelopes[1:]:
        try:
            roots.append(verify_root_update(roots[-1], envelope))
        except RepositoryError as e:
            logger.warning("Root version %d does not chain: %s", len(roots) + 1, e)
            break
    return roots


def check_checkpoint(
    checkpoint: CheckpointRow, roots: Sequence[Root], walker: ChainWalker
) -> Finding | None:
    """Check one checkpoint's signature and that the row it names is still as signed."""
    signed = _verified(checkpoint.envelope, roots)
    where = f"checkpoint {checkpoint.id} (signed {checkpoint.signed_at})"
    if signed is None:
        return Finding(
            checkpoint.audit_id,
            f"{where} is not signed by a targets key of any root version",
        )
    audit_id, digest = signed.get("audit_id"), signed.get("hash")
    if not isinstance(audit_id, int) or not isinstance(digest, str):
        return Finding(checkpoint.audit_id, f"{where} lacks audit_id or hash")
    if audit_id > walker.last_id:
        return Finding(
            walker.last_id + 1,
            f"{where} covers rows up to {audit_id} but the log ends at row {walker.last_id}: "
            "rows were removed from its end",
        )
    stored = walker.hashes.get(audit_id)
    if stored is None:
        return Finding(audit_id, f"{where} names row {audit_id}, which is missing")
    if stored != digest:
        return Finding(audit_id, f"row {audit_id}'s hash differs from the one {where} signed")
    return None


def _verified(envelope: Mapping[str, Any], roots: Sequence[Root]) -> dict[str, Any] | None:
    for root in reversed(roots):
        try:
            signed = root.verify_role("targets", envelope)
        except RepositoryError:
            continue
        if signed.get("_type") == CHECKPOINT_TYPE:
            return signed
    return None
