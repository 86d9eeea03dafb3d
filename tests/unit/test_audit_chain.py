"""The audit chain's verification core: rows and checkpoints in, the first bad row out."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from central.services._auditchain import (
    CHECKPOINT_TYPE,
    ChainWalker,
    check_checkpoint,
    trusted_roots,
)
from central.services.signing import first_root
from central.stores.sqlite_audit import GENESIS, AuditEntry, CheckpointRow, hash_of
from shared.envelope import sign_envelope
from shared.keys import SigningKey
from shared.trust import Root


def _chain(n: int) -> list[AuditEntry]:
    rows, prev = [], GENESIS
    for i in range(1, n + 1):
        row = AuditEntry(
            id=i,
            at="2026-11-26T10:00:00Z",
            actor="admin",
            role="admin",
            action="model.create",
            target=f"m{i}",
            outcome="ok",
            request_id=f"r{i}",
            detail='{"n":1}',
            prev_hash=prev,
            hash=None,
        )
        row = dataclasses.replace(row, hash=hash_of(row, prev))
        rows.append(row)
        prev = row.hash or ""
    return rows


def _walk(rows: list[AuditEntry]) -> ChainWalker:
    walker = ChainWalker()
    walker.want(r.id for r in rows)
    walker.feed(rows[:3])
    walker.feed(rows[3:])
    return walker


def test_a_clean_chain_passes() -> None:
    walker = _walk(_chain(6))
    assert walker.first_bad is None
    assert walker.checked == 6


@pytest.mark.parametrize(
    ("name", "tamper", "bad_id", "words"),
    [
        ("edited", lambda r: [*r[:3], dataclasses.replace(r[3], target="x"), *r[4:]], 4, "altered"),
        ("deleted", lambda r: r[:3] + r[4:], 4, "missing"),
        ("first-deleted", lambda r: r[1:], 1, "missing"),
        (
            "unhashed",
            lambda r: [*r[:2], dataclasses.replace(r[2], hash=None), *r[3:]],
            3,
            "no hash",
        ),
        (
            "rehashed",  # edited and its own hash recomputed: the next row's link breaks
            lambda r: [*r[:3], dataclasses.replace(r[3], target="x", hash="f" * 64), *r[4:]],
            4,
            "altered",
        ),
        (
            "relinked",
            lambda r: [*r[:4], dataclasses.replace(r[4], prev_hash="e" * 64), *r[5:]],
            5,
            "prev_hash",
        ),
    ],
)
def test_tampering_names_the_first_bad_row(
    name: str, tamper: Callable[[list[AuditEntry]], list[AuditEntry]], bad_id: int, words: str
) -> None:
    walker = _walk(tamper(_chain(6)))
    assert walker.first_bad is not None, name
    assert walker.first_bad.id == bad_id, walker.first_bad
    assert words in walker.first_bad.reason


def _keys() -> tuple[SigningKey, SigningKey, list[Root]]:
    root_key, targets = SigningKey.generate(), SigningKey.generate()
    env = first_root(root_key, targets, expiry_days=1)
    return root_key, targets, trusted_roots([env])


def _checkpoint(key: SigningKey, audit_id: int, digest: str) -> CheckpointRow:
    signed = {
        "_type": CHECKPOINT_TYPE,
        "audit_id": audit_id,
        "hash": digest,
        "count": audit_id,
        "at": "2026-11-26T10:00:00Z",
    }
    return CheckpointRow(1, audit_id, digest, "2026-11-26T10:00:00Z", sign_envelope(signed, [key]))


def test_checkpoints_catch_a_cut_tail_and_foreign_signatures() -> None:
    rows = _chain(6)
    _, targets, roots = _keys()
    whole = _walk(rows)
    good = _checkpoint(targets, 6, rows[5].hash or "")
    assert check_checkpoint(good, roots, whole) is None

    cut = _walk(rows[:4])
    found = check_checkpoint(good, roots, cut)
    assert found is not None and found.id == 5 and "removed from its end" in found.reason

    forged = _checkpoint(SigningKey.generate(), 6, rows[5].hash or "")
    found = check_checkpoint(forged, roots, whole)
    assert found is not None and "not signed" in found.reason

    wrong = _checkpoint(targets, 5, "a" * 64)
    found = check_checkpoint(wrong, roots, whole)
    assert found is not None and found.id == 5 and "differs" in found.reason


def test_rotated_roots_keep_old_checkpoints_valid() -> None:
    root_key, old_targets, _ = _keys()
    v1 = first_root(root_key, old_targets, expiry_days=1)
    new_targets = SigningKey.generate()
    signed = Root.from_dict(v1["signed"]).to_dict()
    signed["version"] = 2
    signed["expires"] = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    signed["keys"] = {
        root_key.keyid: root_key.public_key.to_dict(),
        new_targets.keyid: new_targets.public_key.to_dict(),
    }
    signed["roles"]["targets"] = {"keyids": [new_targets.keyid], "threshold": 1}
    v2 = sign_envelope(signed, [root_key])
    roots = trusted_roots([v1, v2])
    assert len(roots) == 2
    rows = _chain(2)
    walker = _walk(rows)
    assert check_checkpoint(_checkpoint(old_targets, 2, rows[1].hash or ""), roots, walker) is None
    assert check_checkpoint(_checkpoint(new_targets, 2, rows[1].hash or ""), roots, walker) is None
