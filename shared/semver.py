"""Semantic versions (semver.org 2.0.0): parsing, precedence and a sortable key.

``SemVer.sort_key`` gives a text key whose plain byte order (SQLite's BINARY
collation) is exactly semver precedence, so stores can ``ORDER BY`` it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from shared.errors import InvalidInputError

__all__ = ["SemVer"]

logger = logging.getLogger(__name__)

# The regular expression suggested by semver.org, anchored with fullmatch.
_SEMVER_RE = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?",
    re.ASCII,
)
_PRE_ID_RE = re.compile(r"0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*", re.ASCII)
_BUILD_ID_RE = re.compile(r"[0-9a-zA-Z-]+", re.ASCII)
_MAX_LENGTH = 256
# Numbers are zero-padded to 20 digits in the sort key.
_NUMBER_LIMIT = 10**20


@dataclass(frozen=True, order=False)
class SemVer:
    """A semantic version. Equality includes build metadata; precedence ignores it."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for number in (self.major, self.minor, self.patch):
            _check_number(number, self)
        for ident in self.prerelease:
            if not isinstance(ident, str) or _PRE_ID_RE.fullmatch(ident) is None:
                raise InvalidInputError(f"invalid prerelease identifier {ident!r}")
            if ident.isdigit():
                _check_number(int(ident), self)
        for ident in self.build:
            if not isinstance(ident, str) or _BUILD_ID_RE.fullmatch(ident) is None:
                raise InvalidInputError(f"invalid build identifier {ident!r}")

    @classmethod
    def parse(cls, s: str) -> SemVer:
        """Parse a strict semver 2.0.0 string such as ``1.2.3-rc.1+build.5``.

        Raises:
            InvalidInputError: ``s`` is not a valid semantic version.
        """
        match = None
        if isinstance(s, str) and len(s) <= _MAX_LENGTH:
            match = _SEMVER_RE.fullmatch(s)
        if match is None:
            raise InvalidInputError(
                f"invalid version {str(s)[:64]!r}: expected a semantic version like 1.2.3"
            )
        major, minor, patch, pre, build = match.groups()
        return cls(
            int(major),
            int(minor),
            int(patch),
            tuple(pre.split(".")) if pre else (),
            tuple(build.split(".")) if build else (),
        )

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text

    def _precedence(self) -> tuple[Any, ...]:
        # A release ranks above its prereleases; identifiers compare numerically
        # when numeric, below alphanumeric ones, and a shorter prefix ranks lower.
        ids = tuple((0, int(i), "") if i.isdigit() else (1, 0, i) for i in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, ids)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, SemVer):
            return NotImplemented
        return self._precedence() < other._precedence()

    def __le__(self, other: object) -> bool:
        if not isinstance(other, SemVer):
            return NotImplemented
        return self._precedence() <= other._precedence()

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, SemVer):
            return NotImplemented
        return self._precedence() > other._precedence()

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, SemVer):
            return NotImplemented
        return self._precedence() >= other._precedence()

    def sort_key(self) -> str:
        """Return an ASCII key whose byte order is semver precedence.

        Numbers are zero-padded to 20 digits. A release appends ``~``; a
        prerelease appends its identifiers, numeric ones as ``0`` + 20 digits
        and alphanumeric ones as ``1`` + the identifier, joined by ``!``,
        which sorts below every identifier character. ``0``/``1`` sort below
        ``~``, so prereleases precede their release.
        """
        key = f"{self.major:020d}.{self.minor:020d}.{self.patch:020d}"
        if not self.prerelease:
            return key + "~"
        parts = (f"0{int(i):020d}" if i.isdigit() else "1" + i for i in self.prerelease)
        return key + "!".join(parts)

    def bump_patch(self) -> SemVer:
        """Return the next patch release: 1.2.3 -> 1.2.4, 1.2.3-rc.1 -> 1.2.3."""
        if self.prerelease:
            return SemVer(self.major, self.minor, self.patch)
        return SemVer(self.major, self.minor, self.patch + 1)


def _check_number(number: object, version: object) -> None:
    if isinstance(number, bool) or not isinstance(number, int):
        raise InvalidInputError(f"invalid version {version!r}: numbers must be integers")
    if not 0 <= number < _NUMBER_LIMIT:
        raise InvalidInputError(f"invalid version {version!r}: number {number} out of range")
