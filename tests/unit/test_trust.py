"""Tests for shared.trust: root documents and key rotation (TUF client workflow 5.3)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from shared.envelope import sign_envelope
from shared.errors import EqualVersionError, FormatError, RollbackError, UnsignedError
from shared.keys import SigningKey
from shared.trust import (
    MAX_ROOT_ROTATIONS,
    Role,
    Root,
    TrustedRoot,
    load_trusted_root,
    new_root,
    verify_root_update,
)

EXPIRES = datetime(2027, 11, 26, 10, 0, 0, tzinfo=UTC)
KEYS = [SigningKey.generate() for _ in range(6)]
TARGETS = SigningKey.generate()


def _root(version: int, keys: list[int], threshold: int, expires: datetime = EXPIRES) -> Root:
    return new_root(
        version, expires, [KEYS[i].public_key for i in keys], [TARGETS.public_key], threshold
    )


def _envelope(root: Root, sigs: list[int]) -> dict[str, Any]:
    return sign_envelope(root.to_dict(), [KEYS[i] for i in sigs])


@dataclass
class RootVersion:
    """One root in a rotation sequence: its root keys, threshold, signers and outcome."""

    keys: list[int]
    threshold: int
    sigs: list[int]
    error: type[Exception] | None = None


ROTATIONS: dict[str, list[RootVersion]] = {
    "1-of-1 key rotation": [
        RootVersion([0], 1, [0]),
        RootVersion([1], 1, [0, 1]),
        RootVersion([2], 1, [1, 2]),
    ],
    "1-of-1 rotation not signed by the old root": [
        RootVersion([0], 1, [0]),
        RootVersion([1], 1, [1], UnsignedError),
    ],
    "1-of-1 rotation not signed by its own new key": [
        RootVersion([0], 1, [0]),
        RootVersion([1], 1, [0], UnsignedError),
    ],
    "threshold change 1 -> 2 keys": [
        RootVersion([0], 1, [0]),
        RootVersion([0, 1], 2, [0, 1]),
        RootVersion([0, 1], 2, [0, 1]),
    ],
    "threshold 2 not met by the new root's own keys": [
        RootVersion([0], 1, [0]),
        RootVersion([0, 1], 2, [0], UnsignedError),
    ],
    "threshold 2 not met by the old root's keys": [
        RootVersion([0, 1], 2, [0, 1]),
        RootVersion([0, 2], 1, [0, 2], UnsignedError),
    ],
    "threshold lowered 2 -> 1": [
        RootVersion([0, 1], 2, [0, 1]),
        RootVersion([1], 1, [0, 1]),
        RootVersion([1], 1, [1]),
    ],
    "2-of-3 replace one key": [
        RootVersion([0, 1, 2], 2, [0, 1]),
        RootVersion([0, 1, 3], 2, [0, 1, 3]),
        RootVersion([1, 3, 4], 2, [1, 3, 4]),
    ],
    "2-of-3 replace all keys at once": [
        RootVersion([0, 1, 2], 2, [0, 1]),
        RootVersion([3, 4, 5], 2, [2, 3, 4, 5], UnsignedError),
    ],
    "removed key cannot sign a later root": [
        RootVersion([0], 1, [0]),
        RootVersion([1], 1, [0, 1]),
        RootVersion([0], 1, [0], UnsignedError),
    ],
    "new root without signatures": [
        RootVersion([0], 1, [0]),
        RootVersion([0], 1, [], UnsignedError),
    ],
    "initial root not self-signed": [
        RootVersion([0], 1, [1], UnsignedError),
    ],
}


@pytest.mark.parametrize("versions", ROTATIONS.values(), ids=ROTATIONS.keys())
def test_key_rotations(versions: list[RootVersion]) -> None:
    trusted: TrustedRoot | None = None
    for number, step in enumerate(versions, start=1):
        env = _envelope(_root(number, step.keys, step.threshold), step.sigs)
        expected_version = number - 1
        try:
            if trusted is None:
                trusted = TrustedRoot.from_envelope(env)
            else:
                trusted.update(env)
            expected_version = number
        except Exception as e:
            assert step.error is not None, f"root v{number} rejected: {e!r}"
            assert type(e) is step.error
            break
        assert step.error is None, f"root v{number} accepted"
    current = trusted.root.version if trusted else 0
    assert current == expected_version


@pytest.fixture
def trusted() -> TrustedRoot:
    return TrustedRoot(load_trusted_root(_envelope(_root(2, [0], 1), [0])))


@pytest.mark.parametrize(
    ("version", "error", "message"),
    [
        (2, EqualVersionError, "expected root version 3, got 2"),
        (1, RollbackError, "expected root version 3, got 1"),
        (4, FormatError, "expected root version 3, got 4"),
        (100, FormatError, "expected root version 3, got 100"),
    ],
    ids=["replayed", "rollback", "skipped one", "skipped many"],
)
def test_root_version_must_be_next(
    trusted: TrustedRoot, version: int, error: type[Exception], message: str
) -> None:
    before = trusted.root
    with pytest.raises(error, match=message):
        trusted.update(_envelope(_root(version, [0], 1), [0]))
    assert trusted.root is before


def test_unsigned_update_leaves_trusted_root(trusted: TrustedRoot) -> None:
    before = trusted.root
    with pytest.raises(UnsignedError):
        trusted.update(_envelope(_root(3, [1], 1), [1]))
    assert trusted.root is before


def test_tampered_update_rejected(trusted: TrustedRoot) -> None:
    env = _envelope(_root(3, [0], 1), [0])
    env["signed"]["roles"]["targets"]["keyids"] = [KEYS[5].keyid]
    env["signed"]["keys"][KEYS[5].keyid] = KEYS[5].public_key.to_dict()
    with pytest.raises(UnsignedError):
        trusted.update(env)
    assert trusted.root.version == 2


def test_expired_intermediate_root_accepted(trusted: TrustedRoot) -> None:
    past = datetime(2020, 1, 1, tzinfo=UTC)
    new = trusted.update(_envelope(_root(3, [0], 1, expires=past), [0]))
    assert new.is_expired(datetime(2026, 1, 1, tzinfo=UTC))


def test_is_expired_uses_reference_time() -> None:
    root = _root(1, [0], 1)
    assert not root.is_expired(EXPIRES - timedelta(seconds=1))
    assert root.is_expired(EXPIRES)
    assert root.is_expired(EXPIRES + timedelta(days=1))


def test_verify_root_update_function() -> None:
    old = _root(1, [0], 1)
    new = verify_root_update(old, _envelope(_root(2, [1], 1), [0, 1]))
    assert new.roles["root"].keyids == (KEYS[1].keyid,)
    assert MAX_ROOT_ROTATIONS == 256


def test_verify_role_targets() -> None:
    root = _root(1, [0], 1)
    env = sign_envelope({"_type": "manifest"}, [TARGETS])
    assert root.verify_role("targets", env) == {"_type": "manifest"}
    with pytest.raises(UnsignedError):
        root.verify_role("root", env)
    with pytest.raises(ValueError):
        root.verify_role("snapshot", env)


def test_root_dict_round_trip() -> None:
    root = _root(3, [0, 1, 2], 2)
    d = root.to_dict()
    assert d["_type"] == "root"
    assert d["spec_version"] == "1.0"
    assert d["expires"] == "2027-11-26T10:00:00Z"
    assert d["roles"]["root"] == {"keyids": [KEYS[i].keyid for i in range(3)], "threshold": 2}
    assert Root.from_dict(d) == root
    assert Root.from_dict(d).to_dict() == d


def test_expires_normalised_to_utc_seconds() -> None:
    odd = datetime(2027, 11, 26, 14, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert _root(1, [0], 1, expires=odd).expires == datetime(2027, 11, 26, 12, tzinfo=UTC)


def _broken(mutate: Any) -> dict[str, Any]:
    d = _root(1, [0, 1], 1).to_dict()
    mutate(d)
    return d


K0, K1 = KEYS[0].keyid, KEYS[1].keyid
BAD_ROOTS = {
    "wrong type": lambda d: d.update(_type="targets"),
    "version 0": lambda d: d.update(version=0),
    "version bool": lambda d: d.update(version=True),
    "version str": lambda d: d.update(version="1"),
    "spec 2.0": lambda d: d.update(spec_version="2.0"),
    "bad expires": lambda d: d.update(expires="tomorrow"),
    "no targets role": lambda d: d["roles"].pop("targets"),
    "no root role": lambda d: d["roles"].pop("root"),
    "threshold 0": lambda d: d["roles"]["root"].update(threshold=0),
    "threshold above keys": lambda d: d["roles"]["root"].update(threshold=3),
    "threshold bool": lambda d: d["roles"]["root"].update(threshold=True),
    "duplicate keyid": lambda d: d["roles"]["root"].update(keyids=[K0, K0]),
    "unknown keyid": lambda d: d["roles"]["root"].update(keyids=["f" * 64]),
    "keyid mismatch": lambda d: d["keys"].update({K0: d["keys"][K1]}),
    "keys not object": lambda d: d.update(keys=[]),
    "role not object": lambda d: d["roles"].update(root=[K0]),
}


@pytest.mark.parametrize("mutate", BAD_ROOTS.values(), ids=BAD_ROOTS.keys())
def test_root_from_dict_rejects(mutate: Any) -> None:
    with pytest.raises(FormatError):
        Root.from_dict(_broken(mutate))


def test_root_requires_aware_expiry() -> None:
    with pytest.raises(FormatError):
        _root(1, [0], 1, expires=datetime(2027, 1, 1))


def test_role_validation() -> None:
    assert Role((K0, K1), 2).to_dict() == {"keyids": [K0, K1], "threshold": 2}
    with pytest.raises(FormatError):
        Role((), 1)
    with pytest.raises(FormatError):
        Role((K0,), 2)


def test_load_trusted_root_rejects_malformed() -> None:
    with pytest.raises(FormatError):
        load_trusted_root({"signed": {"_type": "root"}, "signatures": []})
