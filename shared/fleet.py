"""Fleet state and the device's verification core (docs/sync.md, "Device workflow").

``FleetState`` is the signed document that names, for one fleet, the model
versions its devices serve. ``TrustedState`` holds what a device trusts now
(root, fleet state) and verifies every new document against it, in the order
of the TUF client workflow; ``BlobVerifier`` checks one downloaded blob against
its signed sizes and digests while it streams. Everything here is pure: no
network, disk or clock access. Downloading, caching and serving are the
caller's business (``edge_agent/sync.py``), which writes to its cache only
after a call here has returned.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from shared.canonical import canonical_json, loads_json
from shared.codec import BoundedDecompressor, StreamDecompressor
from shared.digest import Hasher, is_digest
from shared.envelope import parse_envelope, sign_envelope
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
from shared.keys import SigningKey
from shared.manifest import FileEntry, Manifest, manifest_digest, metadata_digest
from shared.manifest import verify_manifest as verify_signed_manifest
from shared.names import validate_name
from shared.rollout import RolloutPlan
from shared.semver import SemVer
from shared.timeutil import format_time, parse_time
from shared.trust import MAX_ROOT_ROTATIONS, Root, load_trusted_root, verify_root_update

__all__ = [
    "MAX_MODELS",
    "MAX_ROOT_ROTATIONS",
    "SPEC_VERSION",
    "BlobVerifier",
    "FleetState",
    "ModelTarget",
    "TrustedState",
    "WrongFleetError",
    "envelope_size",
    "sign_fleet_state",
]

logger = logging.getLogger(__name__)

SPEC_VERSION = "1.0"
MAX_MODELS = 10_000
_MAX_INT = 2**63 - 1
_STATE_FIELDS = frozenset(
    {"_type", "spec_version", "fleet", "serial", "expires", "models", "rollouts"}
)
_TARGET_FIELDS = ("version", "alias", "manifest_digest", "manifest_size")


class WrongFleetError(RepositoryError):
    """A fleet state names another fleet than the device's."""


def _check_int(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
        raise InvalidInputError(f"invalid {what} {value!r:.40}: expected an integer >= 0")


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """The version of one model a fleet serves, and the manifest that describes it."""

    version: str
    alias: str | None
    manifest_digest: str  # "sha256:<hex>" of canonical_json(manifest envelope["signed"])
    manifest_size: int  # length of the canonical JSON of the whole manifest envelope

    def __post_init__(self) -> None:
        SemVer.parse(self.version)
        if self.alias is not None:
            validate_name(self.alias, "alias name")
        if not is_digest(self.manifest_digest):
            raise InvalidInputError(
                f"invalid manifest digest {self.manifest_digest!r:.80}: expected sha256:<64 hex>"
            )
        _check_int(self.manifest_size, "manifest size")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelTarget:
        """Parse the wire form. Raises ``FormatError`` on any invalid field."""
        if not isinstance(d, Mapping) or set(d) != set(_TARGET_FIELDS):
            raise FormatError(f"expected a model target with exactly {', '.join(_TARGET_FIELDS)}")
        try:
            return cls(**{k: d[k] for k in _TARGET_FIELDS})
        except InvalidInputError as e:
            raise FormatError(str(e)) from e

    def to_dict(self) -> dict[str, Any]:
        """Return the wire form."""
        return {
            "version": self.version,
            "alias": self.alias,
            "manifest_digest": self.manifest_digest,
            "manifest_size": self.manifest_size,
        }


@dataclass(frozen=True, slots=True)
class FleetState:
    """What one fleet serves: signed by the ``targets`` role, re-signed with serial + 1.

    Construction raises ``InvalidInputError`` on bad arguments; ``from_dict``
    reads untrusted documents and raises ``FormatError``.
    """

    fleet: str
    serial: int
    expires: datetime
    models: Mapping[str, ModelTarget]
    rollouts: Mapping[str, Any] = field(default_factory=dict)
    spec_version: str = SPEC_VERSION

    def __post_init__(self) -> None:
        validate_name(self.fleet, "fleet name")
        _check_int(self.serial, "serial")
        if not isinstance(self.spec_version, str) or not self.spec_version.startswith("1."):
            raise InvalidInputError(f"unsupported spec_version {self.spec_version!r:.32}")
        if not isinstance(self.expires, datetime) or self.expires.utcoffset() is None:
            raise InvalidInputError("fleet state expiry must be a timezone-aware datetime")
        object.__setattr__(self, "expires", self.expires.astimezone(UTC).replace(microsecond=0))
        self._check_models()
        self._check_rollouts()

    def _check_models(self) -> None:
        if not isinstance(self.models, Mapping) or len(self.models) > MAX_MODELS:
            raise InvalidInputError(f"expected a mapping of at most {MAX_MODELS} models")
        for name, target in self.models.items():
            validate_name(name)
            if not isinstance(target, ModelTarget):
                raise InvalidInputError(f"expected a ModelTarget for model {name!r}")
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    def _check_rollouts(self) -> None:
        if not isinstance(self.rollouts, Mapping):
            raise InvalidInputError("expected 'rollouts' to be a mapping")
        try:
            # A private, plain-JSON copy: what is signed is what was checked.
            data = canonical_json(dict(self.rollouts))
        except FormatError as e:
            raise InvalidInputError(f"invalid rollouts: {e}") from e
        rollouts = loads_json(data, max_bytes=len(data))
        object.__setattr__(self, "rollouts", MappingProxyType(rollouts))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FleetState:
        """Parse the ``signed`` part of a fleet state envelope.

        Raises:
            FormatError: ``d`` is not a valid fleet state.
        """
        if not isinstance(d, Mapping) or set(d) != _STATE_FIELDS or d["_type"] != "fleet_state":
            raise FormatError("expected a fleet_state object with exactly the fleet state fields")
        models = d["models"]
        if not isinstance(models, Mapping) or len(models) > MAX_MODELS:
            raise FormatError(f"expected 'models' to be an object of at most {MAX_MODELS}")
        targets = {name: ModelTarget.from_dict(t) for name, t in models.items()}
        try:
            return cls(
                fleet=d["fleet"],
                serial=d["serial"],
                expires=parse_time(d["expires"]),
                models=targets,
                rollouts=d["rollouts"],
                spec_version=d["spec_version"],
            )
        except InvalidInputError as e:
            raise FormatError(str(e)) from e

    def to_dict(self) -> dict[str, Any]:
        """Return the ``signed`` part of a fleet state envelope."""
        return {
            "_type": "fleet_state",
            "spec_version": self.spec_version,
            "fleet": self.fleet,
            "serial": self.serial,
            "expires": format_time(self.expires),
            "models": {name: t.to_dict() for name, t in self.models.items()},
            "rollouts": copy.deepcopy(dict(self.rollouts)),
        }

    def is_expired(self, reference_time: datetime) -> bool:
        """Tell whether this state has expired at ``reference_time`` (an aware datetime)."""
        return reference_time >= self.expires


def sign_fleet_state(state: FleetState, keys: Sequence[SigningKey]) -> dict[str, Any]:
    """Return ``state`` in an envelope signed by each of ``keys``."""
    return sign_envelope(state.to_dict(), keys)


def envelope_size(envelope: Mapping[str, Any]) -> int:
    """Return the length of the canonical JSON of a whole envelope (a ``manifest_size``)."""
    return len(canonical_json(envelope))


class TrustedState:
    """What this device trusts now. Pure: no network, disk or clock access.

    Each ``update_*`` call verifies one untrusted document against what is
    trusted and, only if every check passes, makes it trusted; on any error
    the trusted state is unchanged. Bad input raises a ``RepositoryError``
    subclass; calling steps out of order is a bug and raises ``RuntimeError``.

    Args:
        root_envelope: The provisioned or cached root envelope; it must be
            signed by its own root threshold.
        fleet: The device's fleet; fleet states naming another are rejected.
        reference_time: The time expiry is checked against (aware datetime).

    Raises:
        FormatError: ``root_envelope`` is malformed.
        UnsignedError: ``root_envelope`` is not self-signed.
        InvalidInputError: ``fleet`` is not a valid name.
    """

    def __init__(
        self, root_envelope: Mapping[str, Any], *, fleet: str, reference_time: datetime
    ) -> None:
        self._fleet = validate_name(fleet, "fleet name")
        self.reference_time = reference_time
        self._root = load_trusted_root(root_envelope)
        self._roots = [self._root]
        self._root_envelopes = [_copy(parse_envelope(root_envelope))]
        self._state: FleetState | None = None
        self._state_envelope: dict[str, Any] | None = None
        logger.debug("Trusting root version %d for fleet %s", self._root.version, fleet)

    @property
    def fleet(self) -> str:
        """The device's fleet."""
        return self._fleet

    @property
    def reference_time(self) -> datetime:
        """The time expiry is checked against; the caller moves it forward."""
        return self._reference_time

    @reference_time.setter
    def reference_time(self, value: datetime) -> None:
        if not isinstance(value, datetime) or value.utcoffset() is None:
            raise ValueError(f"reference_time must be a timezone-aware datetime, got {value!r}")
        self._reference_time = value

    @property
    def root(self) -> Root:
        """The current root."""
        return self._root

    @property
    def root_envelopes(self) -> list[dict[str, Any]]:
        """Every root envelope accepted so far, oldest first (for the caller's cache)."""
        return [_copy(env) for env in self._root_envelopes]

    @property
    def fleet_state(self) -> FleetState | None:
        """The trusted fleet state, or None before one is loaded."""
        return self._state

    @property
    def fleet_state_envelope(self) -> dict[str, Any] | None:
        """The envelope of the trusted fleet state (for the caller's cache)."""
        return None if self._state_envelope is None else _copy(self._state_envelope)

    def update_root(self, envelope: Mapping[str, Any]) -> Root:
        """Move to the next root version (docs/sync.md, workflow step 1).

        The caller bounds its loop by ``MAX_ROOT_ROTATIONS``. A trusted fleet
        state is kept even if the ``targets`` keys change: it was verified and
        keeps serving, but the next one must verify with the new keys.

        Raises:
            FormatError: The envelope is malformed or skips a version.
            UnsignedError: Not signed by the old root's threshold and its own.
            EqualVersionError: The same version as the trusted root.
            RollbackError: A lower version than the trusted root.

        Returns:
            The new root.
        """
        new = verify_root_update(self._root, envelope)
        self._root = new
        self._roots.append(new)
        self._root_envelopes.append(_copy(parse_envelope(envelope)))
        logger.info("Accepted root version %d", new.version)
        return new

    def load_cached_fleet_state(self, envelope: Mapping[str, Any]) -> FleetState:
        """Trust a fleet state from the device's own cache, as on restart.

        The signature threshold and fleet name are checked, but not expiry
        (what is cached keeps serving) nor the serial. The state may have been
        accepted under an older root than the current one, so the ``targets``
        role of each root accepted by this object is tried, newest first:
        build it from the provisioned root and replay the cached chain first.

        Raises:
            RuntimeError: A fleet state is already trusted.
            FormatError: The envelope or fleet state is malformed.
            UnsignedError: No accepted root's ``targets`` threshold signed it.
            WrongFleetError: The state names another fleet.
        """
        if self._state is not None:
            raise RuntimeError("load the cached fleet state before any other fleet state")
        new = self._verify_state(envelope, self._roots)
        self._accept(new, envelope)
        return new

    def update_fleet_state(self, envelope: Mapping[str, Any]) -> FleetState:
        """Verify and trust a new fleet state (docs/sync.md, workflow step 2).

        Raises:
            FormatError: The envelope or fleet state is malformed.
            UnsignedError: The current root's ``targets`` threshold did not sign it.
            WrongFleetError: The state names another fleet.
            RollbackError: Its serial is lower than the trusted one, or equal
                with different content.
            EqualVersionError: It is the trusted state again: nothing new.
            ExpiredError: It has expired at ``reference_time``.

        Returns:
            The new fleet state.
        """
        new = self._verify_state(envelope, [self._root])
        if self._state is not None and self._state_envelope is not None:
            trusted = self._state.serial
            if new.serial < trusted:
                raise RollbackError(f"Expected serial >= {trusted}, got {new.serial}")
            if new.serial == trusted:
                if _signed_bytes(envelope) == canonical_json(self._state_envelope["signed"]):
                    raise EqualVersionError(f"Fleet state serial {trusted} is already trusted")
                raise RollbackError(
                    f"Fleet state serial {trusted} was re-signed with different content "
                    "(an equal serial must be byte-identical)"
                )
        if new.is_expired(self.reference_time):
            raise ExpiredError(f"Fleet state expired at {format_time(new.expires)}")
        self._accept(new, envelope)
        return new

    def verify_manifest(self, model: str, envelope: Mapping[str, Any]) -> Manifest:
        """Verify the manifest the trusted fleet state names for ``model`` (step 3).

        Raises:
            RuntimeError: No fleet state is trusted yet.
            FormatError: The state does not name ``model``, the envelope or
                manifest is malformed, or it describes another model or version.
            DigestMismatchError: It is not the manifest the state names
                (mix-and-match).
            UnsignedError: The current root's ``targets`` threshold did not sign it.
        """
        if self._state is None:
            raise RuntimeError("verify_manifest called before a fleet state is trusted")
        target = self._state.models.get(model)
        if target is None:
            raise FormatError(
                f"fleet state serial {self._state.serial} does not name model {model!r:.140}"
            )
        return self._verify_named(model, target.version, target.manifest_digest, envelope)

    def verify_candidate_manifest(self, model: str, envelope: Mapping[str, Any]) -> Manifest:
        """Verify the manifest of the candidate a trusted rollout plan names for ``model``.

        Raises:
            RuntimeError: No fleet state is trusted yet.
            FormatError: No rollout names ``model``, or the plan or manifest is malformed.
            DigestMismatchError: It is not the manifest the plan names.
            UnsignedError: The current root's ``targets`` threshold did not sign it.
        """
        if self._state is None:
            raise RuntimeError("verify_candidate_manifest called before a fleet state is trusted")
        if model not in self._state.rollouts:
            raise FormatError(
                f"fleet state serial {self._state.serial} has no rollout of {model!r:.140}"
            )
        plan = RolloutPlan.from_dict(self._state.rollouts[model])
        return self._verify_named(
            model, plan.candidate_version, plan.candidate_digest, envelope, what="candidate "
        )

    def _verify_named(
        self, model: str, version: str, digest: str, envelope: Mapping[str, Any], what: str = ""
    ) -> Manifest:
        # Hash first, as TUF does: cheap, and any other manifest is rejected unparsed.
        parsed = parse_envelope(envelope)
        actual = manifest_digest(parsed["signed"])
        if actual != digest:
            raise DigestMismatchError(f"{what}manifest of {model}: expected {digest}, got {actual}")
        manifest = verify_signed_manifest(self._root, parsed)
        if manifest.model != model or manifest.version != version:
            raise FormatError(
                f"expected the manifest of {model} {version}, "
                f"got {manifest.model} {manifest.version}"
            )
        return manifest

    def verify_metadata(self, manifest: Manifest, document: Mapping[str, Any]) -> None:
        """Check a metadata document against its verified manifest.

        Raises:
            FormatError: ``document`` is not a JSON object.
            DigestMismatchError: It does not hash to ``manifest.metadata_digest``.
        """
        if not isinstance(document, Mapping):
            raise FormatError(f"expected a metadata object, got {type(document).__name__}")
        actual = metadata_digest(document)
        if actual != manifest.metadata_digest:
            raise DigestMismatchError(
                f"metadata of {manifest.model} {manifest.version}: "
                f"expected {manifest.metadata_digest}, got {actual}"
            )

    def _verify_state(self, envelope: Mapping[str, Any], roots: Sequence[Root]) -> FleetState:
        new = FleetState.from_dict(_verify_targets(envelope, roots))
        if new.fleet != self._fleet:
            raise WrongFleetError(f"expected fleet {self._fleet!r}, got {new.fleet!r}")
        return new

    def _accept(self, new: FleetState, envelope: Mapping[str, Any]) -> None:
        self._state = new
        self._state_envelope = _copy(parse_envelope(envelope))
        logger.info("Accepted fleet state %s serial %d", new.fleet, new.serial)


def _verify_targets(envelope: Mapping[str, Any], roots: Sequence[Root]) -> dict[str, Any]:
    """Threshold-verify with the newest root's ``targets`` role, else with older ones'."""
    try:
        return roots[-1].verify_role("targets", envelope)
    except UnsignedError:
        for root in reversed(roots[:-1]):
            with contextlib.suppress(UnsignedError):
                return root.verify_role("targets", envelope)
        raise


def _signed_bytes(envelope: Mapping[str, Any]) -> bytes:
    return canonical_json(parse_envelope(envelope)["signed"])


def _copy(envelope: Mapping[str, Any]) -> dict[str, Any]:
    data = canonical_json(envelope)
    result: dict[str, Any] = loads_json(data, max_bytes=len(data))
    return result


class BlobVerifier:
    """Verify one downloaded blob while it streams (docs/sync.md, workflow step 4).

    Feed the compressed bytes in order. Never accepts more than ``zsize`` compressed
    bytes nor produces more than ``size`` uncompressed ones; :meth:`finish` then
    requires exactly ``zsize`` compressed bytes and exactly ``size`` uncompressed
    bytes whose SHA-256 is ``digest``. Pure: no file I/O.

    The content digest is what a device trusts: it names the blob, and only bytes
    that match it are stored. ``zdigest`` names the compressed form central serves
    (the download's ``ETag``, the ``If-Range`` of a resume); hashing the compressed
    bytes as well would add no assurance, because a streaming decoder sees them
    before any digest could be checked, and whatever it makes of them is checked.

    Two ways to feed it:

    - :meth:`feed` decompresses a chunk (with :class:`~shared.codec.BoundedDecompressor`,
      which also checks the frame's structure), hashes the output and returns it.
    - Given ``output``, :meth:`unpack` decompresses (with
      :class:`~shared.codec.StreamDecompressor`) and hands the output to ``output``
      unhashed, in pieces of at most 1 MiB; the caller passes every piece, in order,
      to :meth:`hash_plain`, in another thread if it likes. Decompressing and hashing
      then run beside each other. ``frame_end`` is then told the ``(compressed,
      uncompressed)`` offsets at each frame's end, after that frame's output.

    A verifier can take over a download at the end of a frame (``resume_at``, offsets
    its ``frame_end`` reported): it is fed the compressed bytes from there, and the
    caller first passes it the output before that point through :meth:`hash_plain`.
    The offsets need no trust: every check of :meth:`finish` still covers the whole
    blob, and bytes that do not continue the blob at that point fail them.
    """

    def __init__(
        self,
        expected: FileEntry,
        *,
        output: Callable[[bytes], object] | None = None,
        frame_end: Callable[[int, int], object] | None = None,
        resume_at: tuple[int, int] = (0, 0),
    ) -> None:
        self.expected = expected
        self._plain = Hasher()
        self._compressed = resume_at[0]  # compressed bytes taken
        self._decompressor: BoundedDecompressor | None = None
        self._stream: StreamDecompressor | None = None
        if output is None:
            if resume_at != (0, 0) or frame_end is not None:
                raise ValueError("resuming and frame ends need an output")
            self._decompressor = BoundedDecompressor(expected.size)
        else:
            self._stream = StreamDecompressor(
                expected.size, output, frame_end=frame_end, start=resume_at
            )
        self._finished = False

    @property
    def compressed_bytes(self) -> int:
        """Compressed bytes fed so far."""
        return self._compressed

    @property
    def raw_bytes(self) -> int:
        """Uncompressed bytes hashed so far."""
        return self._plain.nbytes

    def feed(self, chunk: bytes) -> bytes:
        """Feed compressed bytes; return the uncompressed bytes they complete.

        Raises:
            LengthError: More than ``zsize`` compressed bytes, or output past ``size``.
            FormatError: The bytes are not a valid zstd frame.
        """
        if self._decompressor is None:
            raise RuntimeError("this verifier hands its output on: use unpack()")
        self._take(chunk)
        data = self._decompressor.decompress(chunk)
        self._plain.update(data)
        return data

    def unpack(self, chunk: bytes) -> None:
        """Feed compressed bytes; their output goes to ``output`` before this returns.

        Raises:
            LengthError: More than ``zsize`` compressed bytes, or output past ``size``.
            FormatError: The bytes are not valid zstd.
        """
        if self._stream is None:
            raise RuntimeError("this verifier returns its output: use feed()")
        self._take(chunk)
        self._stream.feed(chunk)

    def hash_plain(self, data: bytes) -> None:
        """Hash a piece of the output that :meth:`unpack` handed on, in order."""
        self._check_open()
        self._plain.update(data)

    def _take(self, chunk: bytes) -> None:
        self._check_open()
        total = self._compressed + len(chunk)
        if total > self.expected.zsize:
            raise LengthError(
                f"{self.expected.path}: expected {self.expected.zsize} compressed bytes, "
                f"got at least {total}"
            )
        self._compressed = total

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("feed called after finish")

    def finish(self) -> None:
        """Check the whole blob against its signed sizes and content digest.

        Raises:
            LengthError: Not ``zsize`` compressed bytes, or not ``size`` uncompressed
                ones (a truncated frame fed through :meth:`unpack` shows as this).
            DigestMismatchError: The uncompressed bytes do not hash to ``digest``.
            FormatError: The zstd frame fed through :meth:`feed` is truncated.
        """
        self._finished = True
        want, path = self.expected, self.expected.path
        if self._compressed != want.zsize:
            raise LengthError(
                f"{path}: expected {want.zsize} compressed bytes, got {self._compressed}"
            )
        if self._decompressor is not None:
            self._decompressor.finish()
        if self._plain.nbytes != want.size:
            raise LengthError(f"{path}: expected {want.size} bytes, got {self._plain.nbytes}")
        if self._plain.digest != want.digest:
            raise DigestMismatchError(f"{path}: expected {want.digest}, got {self._plain.digest}")
