"""The device key that encrypts the edge cache at rest (``cache_key_file``).

A key file holds the base64 of 32 random bytes on one line and must be private to
its owner (mode 0600), like central's master key file. The key is never logged or
stored in the cache; only its id (first 16 hex digits of its SHA-256) is.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

from shared.errors import ConflictError, InvalidInputError
from shared.segments import decode_key, new_key

__all__ = ["generate_cache_key_file", "read_cache_key"]


def read_cache_key(path: Path) -> bytes:
    """Read a device key file.

    Raises:
        InvalidInputError: The file is missing, accessible by group or others, or not a key.
    """
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError as e:
        raise InvalidInputError(f"cache_key_file {path} does not exist") from e
    except OSError as e:
        raise InvalidInputError(f"cannot read cache_key_file {path}: {e.strerror}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InvalidInputError(
            f"cache_key_file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}): run chmod 600 {path}"
        )
    return decode_key(text, f"cache_key_file {path}")


def generate_cache_key_file(path: Path) -> bytes:
    """Create ``path`` (mode 0600, never overwriting) holding a new random device key.

    Raises:
        ConflictError: ``path`` already exists.
    """
    key = new_key()
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError as e:
        raise ConflictError(f"{path} already exists; refusing to overwrite a key file") from e
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(base64.b64encode(key).decode("ascii") + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key
