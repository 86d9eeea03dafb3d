"""Tests for shared.fleet: fleet state, the device's TrustedState and BlobVerifier.

Modelled on python-tuf's tests/test_trusted_metadata_set.py: an in-memory
builder signs documents on demand, each attack is a named case expecting an
exact exception, and every rejected update leaves the trusted state unchanged.
"""

from __future__ import annotations

import copy
import os
import queue
import threading
import tracemalloc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import zstandard

from shared.codec import FRAME_SIZE, compress
from shared.digest import sha256_digest
from shared.envelope import sign_envelope
from shared.errors import (
    DigestMismatchError,
    EqualVersionError,
    ExpiredError,
    FormatError,
    InvalidInputError,
    LengthError,
    RepositoryError,
    RollbackError,
    UnsignedError,
)
from shared.fleet import (
    BlobVerifier,
    FleetState,
    ModelTarget,
    TrustedState,
    WrongFleetError,
    envelope_size,
    sign_fleet_state,
)
from shared.keys import SigningKey
from shared.manifest import FileEntry, Manifest, manifest_digest, metadata_digest
from shared.trust import new_root

REF = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
REF_TEXT = "2026-11-26T10:00:00Z"
EXPIRES = REF + timedelta(days=7)
FLEET = "plant-a"
MIB = 1 << 20


@dataclass(frozen=True)
class Blob:
    """One file of a model version: its signed entry and its bytes."""

    entry: FileEntry
    data: bytes
    packed: bytes


class FleetBuilder:
    """Keys and documents in memory, signed on demand (cf. TUF's RepositorySimulator).

    Change a setting, then call ``state_envelope()`` or ``rotate_targets()``.
    """

    def __init__(self) -> None:
        self.root_keys = [SigningKey.generate()]
        self.targets_keys = [SigningKey.generate()]
        self.targets_threshold = 1
        self.root_envelopes: list[dict[str, Any]] = []
        self.fleet = FLEET
        self.serial = 7
        self.expires = EXPIRES
        self.models: dict[str, ModelTarget] = {}
        self.rollouts: dict[str, Any] = {}
        self.manifests: dict[str, dict[str, Any]] = {}  # envelopes by manifest digest
        self.metadata: dict[str, dict[str, Any]] = {}  # documents by manifest digest
        self.blobs: dict[str, Blob] = {}  # by uncompressed digest
        self.signers: list[SigningKey] | None = None  # None: the targets keys
        self._sign_root(self.root_keys)

    def _sign_root(self, signers: list[SigningKey]) -> dict[str, Any]:
        root = new_root(
            len(self.root_envelopes) + 1,
            REF + timedelta(days=365),
            [k.public_key for k in self.root_keys],
            [k.public_key for k in self.targets_keys],
            targets_threshold=self.targets_threshold,
        )
        env = sign_envelope(root.to_dict(), signers)
        self.root_envelopes.append(env)
        return env

    def rotate_targets(self, count: int = 1, threshold: int = 1) -> dict[str, Any]:
        """Sign the next root with new ``targets`` keys; return its envelope."""
        self.targets_keys = [SigningKey.generate() for _ in range(count)]
        self.targets_threshold = threshold
        return self._sign_root(self.root_keys)

    def add_version(
        self,
        model: str,
        version: str,
        files: Mapping[str, bytes] | None = None,
        *,
        publish: bool = True,
        signers: list[SigningKey] | None = None,
    ) -> str:
        """Sign a manifest (and keep its metadata and blobs); return its digest."""
        files = files or {"model.onnx": f"{model} {version} ".encode() * 100}
        entries = [self._add_blob(path, data) for path, data in files.items()]
        meta = {"metrics": {"accuracy": 0.91}, "model": model, "version": version}
        manifest = Manifest(
            model, version, "onnx", tuple(entries), metadata_digest(meta), None, "main", REF_TEXT
        )
        env = sign_envelope(manifest.to_dict(), signers or self.targets_keys)
        digest = manifest_digest(env["signed"])
        self.manifests[digest] = env
        self.metadata[digest] = meta
        if publish:
            self.models[model] = ModelTarget(version, "production", digest, envelope_size(env))
        return digest

    def _add_blob(self, path: str, data: bytes) -> FileEntry:
        packed = compress(data)
        entry = FileEntry(path, sha256_digest(data), len(data), sha256_digest(packed), len(packed))
        self.blobs[entry.digest] = Blob(entry, data, packed)
        return entry

    def state(self) -> FleetState:
        return FleetState(self.fleet, self.serial, self.expires, self.models, self.rollouts)

    def state_envelope(self) -> dict[str, Any]:
        signers = self.targets_keys if self.signers is None else self.signers
        return sign_fleet_state(self.state(), signers)


@pytest.fixture
def builder() -> FleetBuilder:
    b = FleetBuilder()
    b.add_version("demo-mul", "1.0.0")
    b.add_version("demo-add", "2.0.0")
    return b


@pytest.fixture
def trusted(builder: FleetBuilder) -> TrustedState:
    """A device that trusts root v1 and fleet state serial 7."""
    state = TrustedState(builder.root_envelopes[0], fleet=FLEET, reference_time=REF)
    state.update_fleet_state(builder.state_envelope())
    return state


def _snapshot(trusted: TrustedState) -> tuple[Any, ...]:
    return (trusted.root, trusted.fleet_state, trusted.fleet_state_envelope)


# Wire types


def test_model_target_round_trip() -> None:
    target = ModelTarget("1.1.0", "production", sha256_digest(b"m"), 812)
    d = target.to_dict()
    assert d == {
        "version": "1.1.0",
        "alias": "production",
        "manifest_digest": sha256_digest(b"m"),
        "manifest_size": 812,
    }
    assert ModelTarget.from_dict(d) == target
    assert ModelTarget.from_dict({**d, "alias": None}).alias is None


def test_fleet_state_round_trip(builder: FleetBuilder) -> None:
    builder.rollouts = {"demo-mul": {"canary": ["dev-1", "dev-2"], "percent": 10}}
    state = builder.state()
    d = state.to_dict()
    assert d["_type"] == "fleet_state"
    assert d["spec_version"] == "1.0"
    assert d["expires"] == "2026-12-03T10:00:00Z"
    assert set(d["models"]) == {"demo-mul", "demo-add"}
    assert FleetState.from_dict(d) == state
    assert FleetState.from_dict(d).to_dict() == d


def test_fleet_state_defaults_and_copies() -> None:
    rollouts: dict[str, Any] = {"a": {"b": [1]}}
    state = FleetState(FLEET, 0, EXPIRES, {}, rollouts)
    rollouts["a"]["b"].append(2)
    assert state.to_dict()["rollouts"] == {"a": {"b": [1]}}
    state.to_dict()["rollouts"]["a"]["b"].append(3)
    assert state.to_dict()["rollouts"] == {"a": {"b": [1]}}
    assert FleetState(FLEET, 0, EXPIRES, {}).rollouts == {}


def test_fleet_state_expiry_normalised_and_checked() -> None:
    state = FleetState(FLEET, 1, EXPIRES + timedelta(microseconds=5), {})
    assert state.expires == EXPIRES
    assert not state.is_expired(EXPIRES - timedelta(seconds=1))
    assert state.is_expired(EXPIRES)


def _broken_state(mutate: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    b = FleetBuilder()
    b.add_version("demo-mul", "1.0.0")
    d = b.state().to_dict()
    mutate(d)
    return d


BAD_STATES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "wrong type": lambda d: d.update(_type="manifest"),
    "extra field": lambda d: d.update(snapshot=1),
    "missing rollouts": lambda d: d.pop("rollouts"),
    "spec 2.0": lambda d: d.update(spec_version="2.0"),
    "bad fleet name": lambda d: d.update(fleet="../plant"),
    "serial negative": lambda d: d.update(serial=-1),
    "serial bool": lambda d: d.update(serial=True),
    "serial str": lambda d: d.update(serial="7"),
    "serial too large": lambda d: d.update(serial=2**63),
    "bad expires": lambda d: d.update(expires="2026-12-03"),
    "models not object": lambda d: d.update(models=[]),
    "bad model name": lambda d: d["models"].update({"Demo": d["models"]["demo-mul"]}),
    "target extra field": lambda d: d["models"]["demo-mul"].update(url="http://x"),
    "target missing alias": lambda d: d["models"]["demo-mul"].pop("alias"),
    "target bad version": lambda d: d["models"]["demo-mul"].update(version="1.0"),
    "target bad alias": lambda d: d["models"]["demo-mul"].update(alias="Prod"),
    "target bad digest": lambda d: d["models"]["demo-mul"].update(manifest_digest="sha256:0"),
    "target negative size": lambda d: d["models"]["demo-mul"].update(manifest_size=-1),
    "target float size": lambda d: d["models"]["demo-mul"].update(manifest_size=1.0),
    "rollouts not object": lambda d: d.update(rollouts=[]),
    "rollouts with a float": lambda d: d.update(rollouts={"percent": 0.5}),
}


@pytest.mark.parametrize("mutate", BAD_STATES.values(), ids=BAD_STATES.keys())
def test_fleet_state_from_dict_rejects(mutate: Callable[[dict[str, Any]], Any]) -> None:
    with pytest.raises(FormatError):
        FleetState.from_dict(_broken_state(mutate))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fleet": "Plant"},
        {"serial": -1},
        {"expires": datetime(2026, 12, 3)},
        {"models": {"demo": "sha256:" + "a" * 64}},
        {"rollouts": {"x": float("nan")}},
        {"spec_version": "2.0"},
    ],
)
def test_fleet_state_constructor_rejects(kwargs: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"fleet": FLEET, "serial": 1, "expires": EXPIRES, "models": {}}
    with pytest.raises(InvalidInputError):
        FleetState(**{**fields, **kwargs})


def test_sign_fleet_state_and_envelope_size(builder: FleetBuilder) -> None:
    env = sign_fleet_state(builder.state(), builder.targets_keys)
    assert env["signed"] == builder.state().to_dict()
    digest = builder.models["demo-mul"].manifest_digest
    manifest_env = builder.manifests[digest]
    assert builder.models["demo-mul"].manifest_size == envelope_size(manifest_env)
    assert envelope_size({"a": 1}) == len(b'{"a":1}')


# TrustedState: fleet state updates


def test_update_fleet_state_accepts_next_serial(
    builder: FleetBuilder, trusted: TrustedState
) -> None:
    builder.serial += 1
    builder.add_version("demo-mul", "1.1.0")
    state = trusted.update_fleet_state(builder.state_envelope())
    assert state.serial == 8
    assert trusted.fleet_state == state
    assert trusted.fleet_state_envelope == builder.state_envelope()
    assert state.models["demo-mul"].version == "1.1.0"


def _next_state(b: FleetBuilder, t: TrustedState) -> dict[str, Any]:
    b.serial += 1
    return b.state_envelope()


def _rollback(b: FleetBuilder, t: TrustedState) -> dict[str, Any]:
    b.serial -= 1
    return b.state_envelope()


def _replayed_serial(b: FleetBuilder, t: TrustedState) -> dict[str, Any]:
    b.add_version("demo-mul", "1.1.0")
    return b.state_envelope()


def _same_content_more_signatures(b: FleetBuilder, t: TrustedState) -> dict[str, Any]:
    b.signers = [*b.targets_keys, *b.root_keys]
    return b.state_envelope()


def _expired(b: FleetBuilder, t: TrustedState) -> dict[str, Any]:
    b.expires = REF - timedelta(seconds=1)
    return _next_state(b, t)


def _expires_now(b: FleetBuilder, t: TrustedState) -> dict[str, Any]:
    b.expires = REF
    return _next_state(b, t)


def _unsigned(b: FleetBuilder, t: TrustedState) -> dict[str, Any]:
    b.signers = []
    return _next_state(b, t)


def _signed_by_root_key(b: FleetBuilder, t: TrustedState) -> dict[str, Any]:
    b.signers = b.root_keys
    return _next_state(b, t)


def _signed_by_unknown_key(b: FleetBuilder, t: TrustedState) -> dict[str, Any]:
    b.signers = [SigningKey.generate()]
    return _next_state(b, t)


def _threshold_two_one_signature(b: FleetBuilder, t: TrustedState) -> dict[str, Any]:
    t.update_root(b.rotate_targets(count=2, threshold=2))
    b.signers = b.targets_keys[:1]
    return _next_state(b, t)


def _threshold_two_same_key_twice(b: FleetBuilder, t: TrustedState) -> dict[str, Any]:
    t.update_root(b.rotate_targets(count=2, threshold=2))
    env = _next_state(b, t)
    sig = sign_envelope(env["signed"], b.targets_keys[:1])["signatures"][0]
    return {"signed": env["signed"], "signatures": [sig, sig]}


def _wrong_fleet(b: FleetBuilder, t: TrustedState) -> dict[str, Any]:
    b.fleet = "plant-b"
    return _next_state(b, t)


def _tampered_after_signing(b: FleetBuilder, t: TrustedState) -> dict[str, Any]:
    env = _next_state(b, t)
    env["signed"]["models"]["demo-mul"]["version"] = "9.9.9"
    return env


def _signed_but_malformed(b: FleetBuilder, t: TrustedState) -> dict[str, Any]:
    d = _next_state(b, t)["signed"]
    d["models"]["demo-mul"]["manifest_size"] = "big"
    return sign_envelope(d, b.targets_keys)


def _not_an_envelope(b: FleetBuilder, t: TrustedState) -> dict[str, Any]:
    return {"signed": _next_state(b, t)["signed"]}


def _old_targets_key_after_rotation(b: FleetBuilder, t: TrustedState) -> dict[str, Any]:
    old = b.targets_keys
    t.update_root(b.rotate_targets())
    b.signers = old
    return _next_state(b, t)


STATE_ATTACKS: dict[str, tuple[Callable[[FleetBuilder, TrustedState], Any], type[Exception]]] = {
    "rollback to a lower serial": (_rollback, RollbackError),
    "same serial, different content": (_replayed_serial, RollbackError),
    "same serial, identical content": (lambda b, t: b.state_envelope(), EqualVersionError),
    "same content, other signatures": (_same_content_more_signatures, EqualVersionError),
    "expired": (_expired, ExpiredError),
    "expires at the reference time": (_expires_now, ExpiredError),
    "unsigned": (_unsigned, UnsignedError),
    "signed by a root key, not targets": (_signed_by_root_key, UnsignedError),
    "signed by an unknown key": (_signed_by_unknown_key, UnsignedError),
    "threshold 2 with one signature": (_threshold_two_one_signature, UnsignedError),
    "threshold 2 with one key twice": (_threshold_two_same_key_twice, UnsignedError),
    "another fleet's state": (_wrong_fleet, WrongFleetError),
    "tampered after signing": (_tampered_after_signing, UnsignedError),
    "signed but malformed": (_signed_but_malformed, FormatError),
    "not an envelope": (_not_an_envelope, FormatError),
    "old targets key after rotation": (_old_targets_key_after_rotation, UnsignedError),
}


@pytest.mark.parametrize(("attack", "error"), STATE_ATTACKS.values(), ids=STATE_ATTACKS.keys())
def test_fleet_state_attacks(
    builder: FleetBuilder,
    trusted: TrustedState,
    attack: Callable[[FleetBuilder, TrustedState], Any],
    error: type[Exception],
) -> None:
    envelope = attack(builder, trusted)
    before = _snapshot(trusted)
    with pytest.raises(RepositoryError) as info:
        trusted.update_fleet_state(envelope)
    assert type(info.value) is error
    assert _snapshot(trusted) == before
    assert trusted.fleet_state is not None
    assert trusted.fleet_state.serial == 7


def test_rollback_message(builder: FleetBuilder, trusted: TrustedState) -> None:
    with pytest.raises(RollbackError, match="Expected serial >= 7, got 6"):
        trusted.update_fleet_state(_rollback(builder, trusted))
    builder.serial = 7
    with pytest.raises(RollbackError, match="re-signed with different content"):
        trusted.update_fleet_state(_replayed_serial(builder, trusted))


def test_wrong_fleet_is_a_repository_error() -> None:
    assert issubclass(WrongFleetError, RepositoryError)


def test_first_fleet_state_any_serial(builder: FleetBuilder) -> None:
    trusted = TrustedState(builder.root_envelopes[0], fleet=FLEET, reference_time=REF)
    assert trusted.fleet_state is None
    assert trusted.fleet_state_envelope is None
    builder.serial = 0
    assert trusted.update_fleet_state(builder.state_envelope()).serial == 0


def test_first_fleet_state_expired(builder: FleetBuilder) -> None:
    trusted = TrustedState(builder.root_envelopes[0], fleet=FLEET, reference_time=EXPIRES)
    with pytest.raises(ExpiredError, match="expired at 2026-12-03T10:00:00Z"):
        trusted.update_fleet_state(builder.state_envelope())
    assert trusted.fleet_state is None


def test_reference_time_moves_forward(builder: FleetBuilder, trusted: TrustedState) -> None:
    trusted.reference_time = EXPIRES + timedelta(days=1)
    with pytest.raises(ExpiredError):
        trusted.update_fleet_state(_next_state(builder, trusted))
    builder.expires = EXPIRES + timedelta(days=8)
    assert trusted.update_fleet_state(builder.state_envelope()).serial == 8


def test_reference_time_must_be_aware(builder: FleetBuilder) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        TrustedState(builder.root_envelopes[0], fleet=FLEET, reference_time=datetime(2026, 1, 1))


def test_constructor_rejects_bad_root_and_fleet(builder: FleetBuilder) -> None:
    other = SigningKey.generate()
    with pytest.raises(UnsignedError):
        TrustedState(
            sign_envelope(builder.root_envelopes[0]["signed"], [other]),
            fleet=FLEET,
            reference_time=REF,
        )
    with pytest.raises(FormatError):
        TrustedState({"signed": {}, "signatures": []}, fleet=FLEET, reference_time=REF)
    with pytest.raises(InvalidInputError):
        TrustedState(builder.root_envelopes[0], fleet="../x", reference_time=REF)


# TrustedState: roots


def test_root_rotation_keeps_state_and_requires_new_keys(
    builder: FleetBuilder, trusted: TrustedState
) -> None:
    old_keys = builder.targets_keys
    state = trusted.fleet_state
    new_root = trusted.update_root(builder.rotate_targets())
    assert trusted.root is new_root
    assert new_root.version == 2
    assert trusted.fleet_state is state
    assert trusted.root_envelopes == builder.root_envelopes

    builder.serial += 1
    builder.signers = old_keys
    with pytest.raises(UnsignedError):
        trusted.update_fleet_state(builder.state_envelope())
    builder.signers = None
    assert trusted.update_fleet_state(builder.state_envelope()).serial == 8


ROOT_ATTACKS: dict[str, tuple[Callable[[FleetBuilder], dict[str, Any]], type[Exception]]] = {
    "replayed root v1": (lambda b: b.root_envelopes[0], EqualVersionError),
    "skips a version": (
        lambda b: (b.rotate_targets(), b.rotate_targets())[1],
        FormatError,
    ),
    "not signed by the trusted root": (
        lambda b: sign_envelope(b.rotate_targets()["signed"], [SigningKey.generate()]),
        UnsignedError,
    ),
}


@pytest.mark.parametrize(("attack", "error"), ROOT_ATTACKS.values(), ids=ROOT_ATTACKS.keys())
def test_root_attacks(
    builder: FleetBuilder,
    trusted: TrustedState,
    attack: Callable[[FleetBuilder], dict[str, Any]],
    error: type[Exception],
) -> None:
    envelope = attack(builder)
    before = _snapshot(trusted)
    with pytest.raises(RepositoryError) as info:
        trusted.update_root(envelope)
    assert type(info.value) is error
    assert _snapshot(trusted) == before
    assert len(trusted.root_envelopes) == 1


def test_root_envelopes_are_copies(builder: FleetBuilder, trusted: TrustedState) -> None:
    trusted.root_envelopes[0]["signed"]["version"] = 99
    trusted.fleet_state_envelope["signed"]["serial"] = 99  # type: ignore[index]
    assert trusted.root_envelopes == builder.root_envelopes[:1]
    assert trusted.fleet_state_envelope == builder.state_envelope()


# TrustedState: cached fleet state


def test_cached_state_reload_ignores_expiry(builder: FleetBuilder) -> None:
    later = EXPIRES + timedelta(days=30)
    trusted = TrustedState(builder.root_envelopes[0], fleet=FLEET, reference_time=later)
    state = trusted.load_cached_fleet_state(builder.state_envelope())
    assert state.is_expired(later)
    assert trusted.fleet_state == state
    # What is cached keeps serving, but nothing expired is newly installed.
    with pytest.raises(EqualVersionError):
        trusted.update_fleet_state(builder.state_envelope())
    with pytest.raises(ExpiredError):
        trusted.update_fleet_state(_next_state(builder, trusted))
    assert trusted.fleet_state == state


def test_cached_state_any_serial_then_rollback_checked(builder: FleetBuilder) -> None:
    trusted = TrustedState(builder.root_envelopes[0], fleet=FLEET, reference_time=REF)
    builder.serial = 3
    trusted.load_cached_fleet_state(builder.state_envelope())
    builder.serial = 2
    with pytest.raises(RollbackError, match="Expected serial >= 3, got 2"):
        trusted.update_fleet_state(builder.state_envelope())


CACHE_ATTACKS: dict[str, tuple[Callable[[FleetBuilder, TrustedState], Any], type[Exception]]] = {
    "unsigned": (_unsigned, UnsignedError),
    "signed by an unknown key": (_signed_by_unknown_key, UnsignedError),
    "another fleet's state": (_wrong_fleet, WrongFleetError),
    "tampered after signing": (_tampered_after_signing, UnsignedError),
    "not an envelope": (_not_an_envelope, FormatError),
}


@pytest.mark.parametrize(("attack", "error"), CACHE_ATTACKS.values(), ids=CACHE_ATTACKS.keys())
def test_cached_state_attacks(
    builder: FleetBuilder,
    attack: Callable[[FleetBuilder, TrustedState], Any],
    error: type[Exception],
) -> None:
    trusted = TrustedState(builder.root_envelopes[0], fleet=FLEET, reference_time=REF)
    envelope = attack(builder, trusted)
    with pytest.raises(RepositoryError) as info:
        trusted.load_cached_fleet_state(envelope)
    assert type(info.value) is error
    assert trusted.fleet_state is None
    assert trusted.fleet_state_envelope is None


def test_cached_state_signed_under_an_older_root(builder: FleetBuilder) -> None:
    cached = builder.state_envelope()
    builder.rotate_targets()
    # Restart: trust the provisioned root, replay the cached chain, then the cached state.
    trusted = TrustedState(builder.root_envelopes[0], fleet=FLEET, reference_time=REF)
    trusted.update_root(builder.root_envelopes[1])
    assert trusted.load_cached_fleet_state(cached).serial == 7
    # The next state must be signed by the current targets keys.
    builder.serial += 1
    builder.signers = [SigningKey.generate()]
    with pytest.raises(UnsignedError):
        trusted.update_fleet_state(builder.state_envelope())


def test_cached_state_after_another_is_a_bug(builder: FleetBuilder, trusted: TrustedState) -> None:
    with pytest.raises(RuntimeError):
        trusted.load_cached_fleet_state(builder.state_envelope())


# TrustedState: manifests and metadata


def test_verify_manifest_and_metadata(builder: FleetBuilder, trusted: TrustedState) -> None:
    for model, target in builder.models.items():
        manifest = trusted.verify_manifest(model, builder.manifests[target.manifest_digest])
        assert (manifest.model, manifest.version) == (model, target.version)
        trusted.verify_metadata(manifest, builder.metadata[target.manifest_digest])


def _other_version(b: FleetBuilder) -> tuple[str, dict[str, Any]]:
    return "demo-mul", b.manifests[b.add_version("demo-mul", "1.1.0", publish=False)]


def _other_model(b: FleetBuilder) -> tuple[str, dict[str, Any]]:
    return "demo-mul", b.manifests[b.models["demo-add"].manifest_digest]


def _model_not_in_state(b: FleetBuilder) -> tuple[str, dict[str, Any]]:
    return "demo-div", b.manifests[b.add_version("demo-div", "1.0.0", publish=False)]


def _tampered_manifest(b: FleetBuilder) -> tuple[str, dict[str, Any]]:
    env = copy.deepcopy(b.manifests[b.models["demo-mul"].manifest_digest])
    env["signed"]["files"][0]["size"] += 1
    return "demo-mul", env


def _manifest_not_an_envelope(b: FleetBuilder) -> tuple[str, dict[str, Any]]:
    return "demo-mul", b.manifests[b.models["demo-mul"].manifest_digest]["signed"]


MANIFEST_ATTACKS: dict[str, tuple[Callable[[FleetBuilder], Any], type[Exception]]] = {
    "mix-and-match: another version": (_other_version, DigestMismatchError),
    "mix-and-match: another model": (_other_model, DigestMismatchError),
    "model not in the fleet state": (_model_not_in_state, FormatError),
    "tampered manifest": (_tampered_manifest, DigestMismatchError),
    "not an envelope": (_manifest_not_an_envelope, FormatError),
}


@pytest.mark.parametrize(
    ("attack", "error"), MANIFEST_ATTACKS.values(), ids=MANIFEST_ATTACKS.keys()
)
def test_manifest_attacks(
    builder: FleetBuilder,
    trusted: TrustedState,
    attack: Callable[[FleetBuilder], tuple[str, dict[str, Any]]],
    error: type[Exception],
) -> None:
    model, envelope = attack(builder)
    before = _snapshot(trusted)
    with pytest.raises(RepositoryError) as info:
        trusted.verify_manifest(model, envelope)
    assert type(info.value) is error
    assert _snapshot(trusted) == before


def test_manifest_model_not_named_message(builder: FleetBuilder, trusted: TrustedState) -> None:
    model, envelope = _model_not_in_state(builder)
    with pytest.raises(FormatError, match="does not name model 'demo-div'"):
        trusted.verify_manifest(model, envelope)


def _manifest_signed_by_root_key(b: FleetBuilder) -> None:
    b.add_version("demo-mul", "1.1.0", signers=b.root_keys)


def _manifest_without_signatures(b: FleetBuilder) -> None:
    b.add_version("demo-mul", "1.1.0")
    b.manifests[b.models["demo-mul"].manifest_digest]["signatures"] = []


UNSIGNED_MANIFESTS: dict[str, Callable[[FleetBuilder], None]] = {
    "signed by a root key": _manifest_signed_by_root_key,
    "without signatures": _manifest_without_signatures,
}


@pytest.mark.parametrize("publish", UNSIGNED_MANIFESTS.values(), ids=UNSIGNED_MANIFESTS.keys())
def test_manifest_named_by_state_but_not_signed_by_targets(
    builder: FleetBuilder, publish: Callable[[FleetBuilder], None]
) -> None:
    # The state names this very document (its digest matches), but targets never signed it.
    publish(builder)
    trusted = TrustedState(builder.root_envelopes[0], fleet=FLEET, reference_time=REF)
    trusted.update_fleet_state(builder.state_envelope())
    target = builder.models["demo-mul"]
    with pytest.raises(UnsignedError, match="role targets"):
        trusted.verify_manifest("demo-mul", builder.manifests[target.manifest_digest])


def test_manifest_of_other_model_named_by_digest(builder: FleetBuilder) -> None:
    # A state (mis)naming demo-add's manifest for demo-mul: signed, but inconsistent.
    builder.models["demo-mul"] = builder.models["demo-add"]
    trusted = TrustedState(builder.root_envelopes[0], fleet=FLEET, reference_time=REF)
    trusted.update_fleet_state(builder.state_envelope())
    envelope = builder.manifests[builder.models["demo-add"].manifest_digest]
    with pytest.raises(FormatError, match=r"expected the manifest of demo-mul 2\.0\.0"):
        trusted.verify_manifest("demo-mul", envelope)


def test_manifest_signed_by_old_targets_key_after_rotation(
    builder: FleetBuilder, trusted: TrustedState
) -> None:
    old = builder.targets_keys
    trusted.update_root(builder.rotate_targets())
    builder.add_version("demo-mul", "1.1.0", signers=old)
    trusted.update_fleet_state(_next_state(builder, trusted))
    target = builder.models["demo-mul"]
    with pytest.raises(UnsignedError):
        trusted.verify_manifest("demo-mul", builder.manifests[target.manifest_digest])
    builder.add_version("demo-mul", "1.1.1")
    trusted.update_fleet_state(_next_state(builder, trusted))
    target = builder.models["demo-mul"]
    assert trusted.verify_manifest("demo-mul", builder.manifests[target.manifest_digest])


def test_verify_manifest_before_any_state_is_a_bug(builder: FleetBuilder) -> None:
    trusted = TrustedState(builder.root_envelopes[0], fleet=FLEET, reference_time=REF)
    envelope = builder.manifests[builder.models["demo-mul"].manifest_digest]
    with pytest.raises(RuntimeError):
        trusted.verify_manifest("demo-mul", envelope)


METADATA_ATTACKS: dict[str, tuple[Callable[[dict[str, Any]], Any], type[Exception]]] = {
    "value changed": (lambda m: m["metrics"].update(accuracy=0.99), DigestMismatchError),
    "key added": (lambda m: m.update(extra=None), DigestMismatchError),
    "float as a string": (lambda m: m["metrics"].update(accuracy="0.91"), DigestMismatchError),
    "NaN": (lambda m: m["metrics"].update(accuracy=float("nan")), FormatError),
}


@pytest.mark.parametrize(
    ("mutate", "error"), METADATA_ATTACKS.values(), ids=METADATA_ATTACKS.keys()
)
def test_metadata_attacks(
    builder: FleetBuilder,
    trusted: TrustedState,
    mutate: Callable[[dict[str, Any]], Any],
    error: type[Exception],
) -> None:
    digest = builder.models["demo-mul"].manifest_digest
    manifest = trusted.verify_manifest("demo-mul", builder.manifests[digest])
    document = copy.deepcopy(builder.metadata[digest])
    mutate(document)
    with pytest.raises(RepositoryError) as info:
        trusted.verify_metadata(manifest, document)
    assert type(info.value) is error


def test_metadata_not_an_object(builder: FleetBuilder, trusted: TrustedState) -> None:
    digest = builder.models["demo-mul"].manifest_digest
    manifest = trusted.verify_manifest("demo-mul", builder.manifests[digest])
    with pytest.raises(FormatError):
        trusted.verify_metadata(manifest, [])  # type: ignore[arg-type]


# BlobVerifier


def _blob(data: bytes) -> tuple[FileEntry, bytes]:
    packed = compress(data)
    entry = FileEntry(
        "model.onnx", sha256_digest(data), len(data), sha256_digest(packed), len(packed)
    )
    return entry, packed


def _feed(verifier: BlobVerifier, packed: bytes, chunk: int) -> bytes:
    out = b"".join(verifier.feed(packed[i : i + chunk]) for i in range(0, len(packed), chunk))
    verifier.finish()
    return out


@pytest.mark.parametrize("chunk", [1, 7, 4096, 10 * MIB])
def test_blob_exact(chunk: int) -> None:
    data = os.urandom(50_000) + b"w" * 300_000
    entry, packed = _blob(data)
    verifier = BlobVerifier(entry)
    assert _feed(verifier, packed, chunk) == data
    assert (verifier.compressed_bytes, verifier.raw_bytes) == (entry.zsize, entry.size)


def test_blob_empty() -> None:
    entry, packed = _blob(b"")
    assert _feed(BlobVerifier(entry), packed, 10) == b""


def _plain_frame(data: bytes) -> bytes:
    """A frame without zstd's own checksum, so a flipped byte decodes silently."""
    return zstandard.ZstdCompressor(level=1, write_checksum=False).compress(data)


def test_blob_tampered_byte() -> None:
    data = os.urandom(100_000)  # incompressible: stored as raw blocks
    packed = _plain_frame(data)
    entry = FileEntry("m", sha256_digest(data), len(data), sha256_digest(packed), len(packed))
    tampered = bytearray(packed)
    tampered[len(packed) // 2] ^= 0x01
    verifier = BlobVerifier(entry)
    verifier.feed(bytes(tampered))  # decodes silently: no zstd checksum to catch it
    with pytest.raises(DigestMismatchError, match=f"expected {entry.digest}, got sha256:"):
        verifier.finish()


def test_blob_another_compression_of_the_content_is_the_same_blob() -> None:
    # What a device trusts is the content digest; zdigest only names central's form.
    data = b"weights " * 20_000
    entry, _ = _blob(data)
    other = zstandard.ZstdCompressor(level=19).compress(data)
    entry = FileEntry("m", entry.digest, entry.size, entry.zdigest, len(other))
    verifier = BlobVerifier(entry)
    assert verifier.feed(other) == data
    verifier.finish()


def test_blob_corrupt_frame() -> None:
    entry, packed = _blob(b"x" * 100_000)
    with pytest.raises(FormatError):
        BlobVerifier(entry).feed(b"\0" * len(packed))


def test_blob_extra_trailing_bytes() -> None:
    entry, packed = _blob(os.urandom(10_000))
    verifier = BlobVerifier(entry)
    with pytest.raises(LengthError, match=f"expected {entry.zsize} compressed bytes"):
        verifier.feed(packed + b"\0")
    verifier = BlobVerifier(entry)
    verifier.feed(packed)
    with pytest.raises(LengthError):
        verifier.feed(b"\0")


def test_blob_bomb_stops_at_signed_size() -> None:
    obj = zstandard.ZstdCompressor(level=19, write_content_size=False).compressobj()
    bomb = obj.compress(b"\0" * 256 * MIB) + obj.flush()
    entry = FileEntry("m", sha256_digest(b""), MIB, sha256_digest(bomb), len(bomb))
    verifier = BlobVerifier(entry)
    tracemalloc.start()
    try:
        with pytest.raises(LengthError, match="exceeds the signed size 1048576"):
            for i in range(0, len(bomb), 4096):
                verifier.feed(bomb[i : i + 4096])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert verifier.raw_bytes <= MIB
    assert peak < 8 * MIB


def test_blob_truncated() -> None:
    entry, packed = _blob(os.urandom(10_000))
    verifier = BlobVerifier(entry)
    verifier.feed(packed[:-10])
    with pytest.raises(LengthError, match=f"expected {entry.zsize} compressed bytes, got"):
        verifier.finish()


def test_blob_signed_size_larger_than_content() -> None:
    entry, packed = _blob(b"abc" * 1000)
    verifier = BlobVerifier(replace(entry, size=entry.size + 1))
    verifier.feed(packed)
    with pytest.raises(LengthError, match=f"expected {entry.size + 1} bytes, got {entry.size}"):
        verifier.finish()


def test_blob_wrong_uncompressed_digest() -> None:
    entry, packed = _blob(b"abc" * 1000)
    verifier = BlobVerifier(replace(entry, digest=sha256_digest(b"other")))
    verifier.feed(packed)
    with pytest.raises(DigestMismatchError, match=f"got {entry.digest}"):
        verifier.finish()


def test_blob_feed_after_finish_is_a_bug() -> None:
    entry, packed = _blob(b"abc")
    verifier = BlobVerifier(entry)
    _feed(verifier, packed, 100)
    with pytest.raises(RuntimeError):
        verifier.feed(b"")


def _unpack_in_threads(entry: FileEntry, packed: bytes, chunk: int) -> tuple[BlobVerifier, bytes]:
    """Decompress in this thread, hash and keep the output in another (as downloads do)."""
    pieces: queue.Queue[bytes | None] = queue.Queue(maxsize=2)
    out = bytearray()

    def consume() -> None:
        while (piece := pieces.get()) is not None:
            verifier.hash_plain(piece)
            out.extend(piece)

    verifier = BlobVerifier(entry, output=pieces.put)
    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        for i in range(0, len(packed), chunk):
            verifier.unpack(packed[i : i + chunk])
    finally:
        pieces.put(None)
        consumer.join(10)
    return verifier, bytes(out)


@pytest.mark.parametrize("chunk", [1, 777, 1 << 20])
def test_blob_unpacked_in_two_threads_verifies_like_feed(chunk: int) -> None:
    data = os.urandom(50_000) + b"w" * 3_000_000  # more than one 1 MiB output piece
    entry, packed = _blob(data)
    verifier, out = _unpack_in_threads(entry, packed, chunk)
    verifier.finish()
    assert out == data


def test_blob_unpacked_stops_at_zsize_and_at_size() -> None:
    entry, packed = _blob(os.urandom(10_000))
    with pytest.raises(LengthError, match=f"expected {entry.zsize} compressed bytes"):
        BlobVerifier(entry, output=lambda _: None).unpack(packed + b"\0")
    bomb, packed = _blob(b"\0" * 10_000_000)
    small = FileEntry("m", bomb.digest, 1_000_000, bomb.zdigest, bomb.zsize)
    handed_on: list[int] = []
    with pytest.raises(LengthError, match="exceeds the signed size 1000000"):
        BlobVerifier(small, output=lambda piece: handed_on.append(len(piece))).unpack(packed)
    assert sum(handed_on) <= 1_000_000  # nothing past the signed size was handed on


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        (lambda p: p[:-10], "expected {zsize} compressed bytes, got"),  # truncated frame
        (lambda p: p[:-4] + bytes(4), "corrupt zstd frame"),  # zstd's own checksum
        (lambda p: b"\0" + p[1:], "corrupt zstd frame"),  # not zstd
    ],
    ids=["truncated", "checksum", "magic"],
)
def test_blob_unpacked_damage_is_rejected(damage: Callable[[bytes], bytes], error: str) -> None:
    entry, packed = _blob(os.urandom(100_000))
    with pytest.raises((LengthError, FormatError), match=error.format(zsize=entry.zsize)):
        verifier, _ = _unpack_in_threads(entry, damage(packed), 4096)
        verifier.finish()


def test_blob_unpacked_frame_cut_short_is_rejected_by_size() -> None:
    data = os.urandom(100_000)
    entry, packed = _blob(data)
    cut = packed[:-10]
    short = FileEntry("m", entry.digest, entry.size, entry.zdigest, len(cut))
    verifier, _ = _unpack_in_threads(short, cut, 4096)
    with pytest.raises(LengthError, match=f"expected {entry.size} bytes, got"):
        verifier.finish()


def test_blob_fed_the_wrong_way_is_a_bug() -> None:
    entry, packed = _blob(b"abc")
    with pytest.raises(RuntimeError, match="use unpack"):
        BlobVerifier(entry, output=lambda _: None).feed(packed)
    with pytest.raises(RuntimeError, match="use feed"):
        BlobVerifier(entry).unpack(packed)


def _multi_frame_blob() -> tuple[FileEntry, bytes, bytes, list[tuple[int, int]]]:
    """A blob of three frames, and the frame ends a verifier reports while unpacking it."""
    data = os.urandom(1000) + bytes(range(256)) * (FRAME_SIZE * 5 // 2 // 256)
    entry, packed = _blob(data)
    ends: list[tuple[int, int]] = []
    out = bytearray()
    verifier = BlobVerifier(entry, output=out.extend, frame_end=lambda c, p: ends.append((c, p)))
    for i in range(0, len(packed), MIB):
        verifier.unpack(packed[i : i + MIB])
    verifier.hash_plain(bytes(out))
    verifier.finish()
    return entry, packed, data, ends


def test_blob_frame_ends_are_reported_in_order() -> None:
    entry, _, data, ends = _multi_frame_blob()
    assert [p for _, p in ends] == [FRAME_SIZE, 2 * FRAME_SIZE, len(data)]
    assert ends[-1][0] == entry.zsize
    assert ends[0][0] < ends[1][0] < ends[2][0]


def _resume(entry: FileEntry, packed: bytes, prefix: bytes, at: tuple[int, int]) -> BlobVerifier:
    out = bytearray()
    verifier = BlobVerifier(entry, output=out.extend, resume_at=at)
    verifier.hash_plain(prefix)
    verifier.unpack(packed[at[0] :])
    verifier.hash_plain(bytes(out))
    return verifier


def test_blob_resumed_at_a_frame_end_verifies() -> None:
    entry, packed, data, ends = _multi_frame_blob()
    c, p = ends[0]
    verifier = _resume(entry, packed, data[:p], (c, p))
    verifier.finish()
    assert (verifier.compressed_bytes, verifier.raw_bytes) == (entry.zsize, entry.size)


def test_blob_resumed_over_a_damaged_prefix_fails_the_digest() -> None:
    entry, packed, data, ends = _multi_frame_blob()
    c, p = ends[1]
    prefix = bytearray(data[:p])
    prefix[12345] ^= 1  # the staged file changed on disk while the download waited
    verifier = _resume(entry, packed, bytes(prefix), (c, p))
    with pytest.raises(DigestMismatchError):
        verifier.finish()


def test_blob_resumed_at_a_point_that_is_no_frame_end_fails() -> None:
    entry, packed, data, ends = _multi_frame_blob()
    c, p = ends[0]
    with pytest.raises((FormatError, LengthError, DigestMismatchError)):
        verifier = _resume(entry, packed, data[: p - 100], (c - 100, p - 100))
        verifier.finish()


def test_blob_resume_needs_an_output() -> None:
    entry, _ = _blob(b"abc")
    with pytest.raises(ValueError, match="need an output"):
        BlobVerifier(entry, resume_at=(1, 1))
