"""The root of trust: which keys may sign what, and how that changes.

A device is provisioned with a root document (TUF root shape). Its ``root``
role signs new roots; its ``targets`` role signs manifests and fleet state.
A new root is accepted only if signed by the trusted root's threshold and by
its own, with a version exactly one higher (TUF client workflow 5.3). This
module is pure: no network, disk or clock access.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from shared.envelope import parse_envelope, verify_envelope
from shared.errors import EqualVersionError, FormatError, RollbackError
from shared.keys import PublicKey
from shared.timeutil import format_time, parse_time

__all__ = [
    "MAX_ROOT_ROTATIONS",
    "REQUIRED_ROLES",
    "Role",
    "Root",
    "TrustedRoot",
    "load_trusted_root",
    "new_root",
    "verify_root_update",
]

logger = logging.getLogger(__name__)

MAX_ROOT_ROTATIONS = 256
REQUIRED_ROLES = ("root", "targets")
SPEC_VERSION = "1.0"
_KEYID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Role:
    """The keys authorised for a role and how many of them must sign."""

    keyids: tuple[str, ...]
    threshold: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "keyids", tuple(self.keyids))
        for keyid in self.keyids:
            if not isinstance(keyid, str) or _KEYID.fullmatch(keyid) is None:
                raise FormatError(f"invalid keyid {keyid!r:.80}")
        if len(set(self.keyids)) != len(self.keyids):
            raise FormatError("a role lists the same keyid twice")
        if not _is_int(self.threshold) or not 1 <= self.threshold <= len(self.keyids):
            raise FormatError(
                f"threshold must be between 1 and {len(self.keyids)}, got {self.threshold!r}"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Role:
        """Parse ``{"keyids": [...], "threshold": n}``."""
        if not isinstance(d, Mapping) or not isinstance(d.get("keyids"), list):
            raise FormatError("expected a role object with a 'keyids' list")
        return cls(tuple(d["keyids"]), d.get("threshold"))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """Return the wire form."""
        return {"keyids": list(self.keyids), "threshold": self.threshold}


@dataclass(frozen=True, slots=True)
class Root:
    """A root document: keys, roles, version and expiry."""

    version: int
    expires: datetime
    keys: Mapping[str, PublicKey]
    roles: Mapping[str, Role]
    spec_version: str = field(default=SPEC_VERSION)

    def __post_init__(self) -> None:
        if not _is_int(self.version) or self.version < 1:
            raise FormatError(f"root version must be an integer >= 1, got {self.version!r}")
        if not isinstance(self.spec_version, str) or not self.spec_version.startswith("1."):
            raise FormatError(f"unsupported spec_version {self.spec_version!r:.32}")
        if not isinstance(self.expires, datetime) or self.expires.utcoffset() is None:
            raise FormatError("root expiry must be a timezone-aware datetime")
        expires = self.expires.astimezone(UTC).replace(microsecond=0)
        object.__setattr__(self, "expires", expires)
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))
        object.__setattr__(self, "roles", MappingProxyType(dict(self.roles)))
        self._check_keys_and_roles()

    def _check_keys_and_roles(self) -> None:
        for keyid, key in self.keys.items():
            if not isinstance(key, PublicKey) or key.keyid != keyid:
                raise FormatError(f"key {keyid!r:.80} does not match its keyid")
        for name in REQUIRED_ROLES:
            if name not in self.roles:
                raise FormatError(f"root document lacks the {name!r} role")
        for name, role in self.roles.items():
            missing = [k for k in role.keyids if k not in self.keys]
            if missing:
                raise FormatError(f"role {name!r:.64} names unknown key {missing[0]}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Root:
        """Parse the ``signed`` part of a root envelope.

        Raises:
            FormatError: ``d`` is not a valid root document.
        """
        if not isinstance(d, Mapping) or d.get("_type") != "root":
            raise FormatError("expected a document with _type 'root'")
        keys, roles = d.get("keys"), d.get("roles")
        if not isinstance(keys, Mapping) or not isinstance(roles, Mapping):
            raise FormatError("expected 'keys' and 'roles' objects in the root document")
        return cls(
            version=d.get("version"),  # type: ignore[arg-type]
            expires=parse_time(d.get("expires")),  # type: ignore[arg-type]
            keys={k: PublicKey.from_dict(v) for k, v in keys.items()},
            roles={name: Role.from_dict(r) for name, r in roles.items()},
            spec_version=d.get("spec_version"),  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the ``signed`` part of a root envelope."""
        return {
            "_type": "root",
            "spec_version": self.spec_version,
            "version": self.version,
            "expires": format_time(self.expires),
            "keys": {k: key.to_dict() for k, key in self.keys.items()},
            "roles": {name: role.to_dict() for name, role in self.roles.items()},
        }

    def is_expired(self, reference_time: datetime) -> bool:
        """Tell whether this root has expired at ``reference_time`` (an aware datetime)."""
        return reference_time >= self.expires

    def verify_role(self, role: str, envelope: Mapping[str, Any]) -> dict[str, Any]:
        """Threshold-verify ``envelope`` with the keys of ``role``.

        Raises:
            FormatError: ``envelope`` is malformed.
            UnsignedError: Too few of the role's keys signed it.

        Returns:
            The ``signed`` part.
        """
        if role not in self.roles:
            raise ValueError(f"root version {self.version} has no role {role!r}")
        spec = self.roles[role]
        return verify_envelope(
            envelope, keys=self.keys, keyids=spec.keyids, threshold=spec.threshold, role=role
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def new_root(
    version: int,
    expires: datetime,
    root_keys: Sequence[PublicKey],
    targets_keys: Sequence[PublicKey],
    root_threshold: int = 1,
    targets_threshold: int = 1,
) -> Root:
    """Build a root document from its keys and thresholds."""
    keys = {k.keyid: k for k in [*root_keys, *targets_keys]}
    roles = {
        "root": Role(tuple(dict.fromkeys(k.keyid for k in root_keys)), root_threshold),
        "targets": Role(tuple(dict.fromkeys(k.keyid for k in targets_keys)), targets_threshold),
    }
    return Root(version=version, expires=expires, keys=keys, roles=roles)


def load_trusted_root(envelope: Mapping[str, Any]) -> Root:
    """Accept an initial root, as when provisioning: it must be self-signed.

    Raises:
        FormatError: The envelope or root document is malformed.
        UnsignedError: The root is not signed by its own root threshold.
    """
    parsed = parse_envelope(envelope)
    root = Root.from_dict(parsed["signed"])
    root.verify_role("root", parsed)
    return root


def verify_root_update(trusted: Root, envelope: Mapping[str, Any]) -> Root:
    """Verify the root that follows ``trusted``.

    Expiry is not checked here: intermediate roots may have expired (TUF 5.3.10
    checks only the final one, against the caller's reference time).

    Raises:
        FormatError: The envelope is malformed, or the version skips ahead.
        UnsignedError: Not signed by the trusted root's threshold or its own.
        EqualVersionError: Same version as ``trusted``: nothing new.
        RollbackError: A lower version than ``trusted``.
    """
    parsed = parse_envelope(envelope)
    trusted.verify_role("root", parsed)
    new = Root.from_dict(parsed["signed"])
    expected = trusted.version + 1
    if new.version != expected:
        if new.version == trusted.version:
            raise EqualVersionError(f"expected root version {expected}, got {new.version}")
        if new.version < trusted.version:
            raise RollbackError(f"expected root version {expected}, got {new.version}")
        raise FormatError(f"expected root version {expected}, got {new.version}: skipped")
    new.verify_role("root", parsed)
    return new


class TrustedRoot:
    """The root this device trusts now. Pure: no network, disk or clock access."""

    def __init__(self, root: Root) -> None:
        self._root = root

    @classmethod
    def from_envelope(cls, envelope: Mapping[str, Any]) -> TrustedRoot:
        """Trust an initial, self-signed root (see ``load_trusted_root``)."""
        return cls(load_trusted_root(envelope))

    @property
    def root(self) -> Root:
        """The current root."""
        return self._root

    def update(self, envelope: Mapping[str, Any]) -> Root:
        """Move to the next root (see ``verify_root_update``); unchanged on error."""
        new = verify_root_update(self._root, envelope)
        self._root = new
        logger.info("Accepted root version %d", new.version)
        return new
