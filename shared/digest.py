"""Content digests: ``sha256:<64 lowercase hex>`` names for blobs and documents.

Blobs are named by the SHA-256 of their uncompressed bytes. This module parses,
computes and checks such digests; it reads files only in ``sha256_file``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from shared.errors import DigestMismatchError, InvalidInputError

__all__ = [
    "DIGEST_RE",
    "Digest",
    "Hasher",
    "is_digest",
    "parse_digest",
    "sha256_digest",
    "sha256_file",
    "verify_digest",
]

logger = logging.getLogger(__name__)

Digest = str
"""A digest string of the form ``sha256:<64 lowercase hex>``."""

DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
_PREFIX = "sha256:"


def parse_digest(s: str) -> str:
    """Split a digest string and return its hex part.

    Raises:
        InvalidInputError: ``s`` is not ``sha256:<64 lowercase hex>``.
    """
    match = DIGEST_RE.fullmatch(s) if isinstance(s, str) else None
    if match is None:
        raise InvalidInputError(f"invalid digest {s!r}: expected 'sha256:' and 64 lowercase hex")
    return match.group(1)


def is_digest(s: object) -> bool:
    """Tell whether ``s`` is a well-formed digest string."""
    return isinstance(s, str) and DIGEST_RE.fullmatch(s) is not None


def sha256_digest(data: bytes) -> str:
    """Return the ``sha256:`` digest of ``data``."""
    return _PREFIX + hashlib.sha256(data).hexdigest()


class Hasher:
    """Incremental SHA-256 that also counts the bytes it has seen."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.nbytes = 0

    def update(self, data: bytes) -> None:
        """Feed more bytes."""
        self._hash.update(data)
        self.nbytes += len(data)

    def hexdigest(self) -> str:
        """Return the hex digest of the bytes seen so far."""
        return self._hash.hexdigest()

    @property
    def digest(self) -> str:
        """The ``sha256:`` digest of the bytes seen so far."""
        return _PREFIX + self._hash.hexdigest()


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> tuple[str, int]:
    """Hash a file in chunks.

    Args:
        path: The file to read.
        chunk_size: Bytes read at a time.

    Returns:
        The ``sha256:`` digest and the size in bytes.
    """
    hasher = Hasher()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            hasher.update(chunk)
    return hasher.digest, hasher.nbytes


def verify_digest(data: bytes, expected: str) -> None:
    """Check that ``data`` hashes to ``expected``.

    Raises:
        DigestMismatchError: The digests differ.
    """
    actual = sha256_digest(data)
    if actual != expected:
        raise DigestMismatchError(f"expected {expected}, got {actual}")
