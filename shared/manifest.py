"""Manifests: the signed description of one model version.

A manifest names the model, its semver version, format, files (with the
digests and sizes of their plain and compressed bytes), the digest of its
metadata document, parent version, branch and creation time. It travels in an
envelope signed by the ``targets`` role. Constructors raise
``InvalidInputError`` on bad arguments; ``from_dict`` and ``verify_manifest``
read untrusted documents and raise ``RepositoryError`` subclasses.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.canonical import canonical_json
from shared.digest import is_digest, sha256_digest
from shared.errors import FormatError, InvalidInputError
from shared.names import validate_name
from shared.semver import SemVer
from shared.timeutil import parse_time
from shared.trust import Root

__all__ = [
    "MAX_PATH_LENGTH",
    "FileEntry",
    "Manifest",
    "manifest_digest",
    "metadata_digest",
    "validate_path",
    "verify_manifest",
]

logger = logging.getLogger(__name__)

MAX_PATH_LENGTH = 1024
MAX_FILES = 10_000
_MAX_SIZE = 2**63 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FORMAT = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def validate_path(path: str) -> str:
    """Check that ``path`` is a safe relative POSIX path and return it.

    Raises:
        InvalidInputError: The path is absolute, empty, too long, or has a
            backslash, a control character, or an empty, '.' or '..' segment.
    """
    ok = isinstance(path, str) and 0 < len(path) <= MAX_PATH_LENGTH
    ok = ok and "\\" not in path and _CONTROL.search(path) is None
    if not ok or any(seg in ("", ".", "..") for seg in path.split("/")):
        raise InvalidInputError(f"invalid file path {str(path)[:80]!r}: expected a relative path")
    return path


def _check_size(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SIZE:
        raise InvalidInputError(f"invalid {what} {value!r:.40}: expected an integer >= 0")


def _check_digest(value: object, what: str) -> None:
    if not is_digest(value):
        raise InvalidInputError(f"invalid {what} {value!r:.80}: expected sha256:<64 hex>")


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a model version."""

    path: str
    digest: str  # "sha256:<hex>" of the uncompressed bytes
    size: int
    zdigest: str  # "sha256:<hex>" of the zstd-compressed bytes
    zsize: int

    def __post_init__(self) -> None:
        validate_path(self.path)
        _check_digest(self.digest, "digest")
        _check_digest(self.zdigest, "zdigest")
        _check_size(self.size, "size")
        _check_size(self.zsize, "zsize")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FileEntry:
        """Parse the wire form. Raises ``FormatError`` on any invalid field."""
        fields = ("path", "digest", "size", "zdigest", "zsize")
        if not isinstance(d, Mapping) or set(d) != set(fields):
            raise FormatError(f"expected a file object with exactly {', '.join(fields)}")
        try:
            return cls(**{k: d[k] for k in fields})
        except InvalidInputError as e:
            raise FormatError(str(e)) from e

    def to_dict(self) -> dict[str, Any]:
        """Return the wire form."""
        return {
            "path": self.path,
            "digest": self.digest,
            "size": self.size,
            "zdigest": self.zdigest,
            "zsize": self.zsize,
        }


@dataclass(frozen=True, slots=True)
class Manifest:
    """The signed description of one model version. Files are kept sorted by path."""

    model: str
    version: str
    format: str
    files: tuple[FileEntry, ...]
    metadata_digest: str
    parent: str | None
    branch: str
    created_at: str

    def __post_init__(self) -> None:
        validate_name(self.model)
        SemVer.parse(self.version)
        if self.parent is not None:
            SemVer.parse(self.parent)
        validate_name(self.branch, "branch name")
        if not isinstance(self.format, str) or _FORMAT.fullmatch(self.format) is None:
            raise InvalidInputError(f"invalid format {self.format!r:.80}")
        _check_digest(self.metadata_digest, "metadata digest")
        try:
            parse_time(self.created_at)
        except FormatError as e:
            raise InvalidInputError(f"invalid created_at: {e}") from e
        self._check_files()

    def _check_files(self) -> None:
        files = tuple(self.files)
        if not all(isinstance(f, FileEntry) for f in files) or len(files) > MAX_FILES:
            raise InvalidInputError(f"expected at most {MAX_FILES} FileEntry objects")
        files = tuple(sorted(files, key=lambda f: f.path))
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise InvalidInputError("a manifest lists the same file path twice")
        object.__setattr__(self, "files", files)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        """Parse the ``signed`` part of a manifest envelope.

        Raises:
            FormatError: ``d`` is not a valid manifest.
        """
        keys = {"_type", "model", "version", "format", "files", "metadata_digest"}
        keys |= {"parent", "branch", "created_at"}
        if not isinstance(d, Mapping) or set(d) != keys or d["_type"] != "manifest":
            raise FormatError("expected a manifest object with exactly the manifest fields")
        if not isinstance(d["files"], list) or len(d["files"]) > MAX_FILES:
            raise FormatError(f"expected 'files' to be a list of at most {MAX_FILES}")
        files = tuple(FileEntry.from_dict(f) for f in d["files"])
        fields = {k: d[k] for k in keys - {"_type", "files"}}
        try:
            return cls(files=files, **fields)
        except InvalidInputError as e:
            raise FormatError(str(e)) from e

    def to_dict(self) -> dict[str, Any]:
        """Return the ``signed`` part of a manifest envelope."""
        return {
            "_type": "manifest",
            "model": self.model,
            "version": self.version,
            "format": self.format,
            "files": [f.to_dict() for f in self.files],
            "metadata_digest": self.metadata_digest,
            "parent": self.parent,
            "branch": self.branch,
            "created_at": self.created_at,
        }


def manifest_digest(signed: Mapping[str, Any]) -> str:
    """Return the digest naming a manifest: SHA-256 of its canonical JSON."""
    return sha256_digest(canonical_json(signed))


def metadata_digest(metadata: Mapping[str, Any]) -> str:
    """Return the digest of a metadata document (floats allowed)."""
    return sha256_digest(canonical_json(metadata, allow_floats=True))


def verify_manifest(root: Root, envelope: Mapping[str, Any]) -> Manifest:
    """Threshold-verify a manifest envelope with the ``targets`` role and parse it.

    Raises:
        FormatError: The envelope or manifest is malformed.
        UnsignedError: Too few ``targets`` keys signed it.
    """
    return Manifest.from_dict(root.verify_role("targets", envelope))
