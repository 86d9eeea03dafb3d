"""The master key that wraps every blob's data key: read from a key file or the environment.

A key file holds the base64 of 32 random bytes on one line and must be private to its
owner (mode 0600). The key itself is never logged, stored in the database or echoed in
an error; only its id (first 16 hex digits of its SHA-256) is shown.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import ConflictError, InvalidInputError
from shared.segments import decode_key, key_id, new_key

__all__ = ["ENV_VAR", "MasterKey", "generate_key_file", "load_master_key", "read_key_file"]

ENV_VAR = "SKIFF_MASTER_KEY"


@dataclass(frozen=True, slots=True)
class MasterKey:
    """A 32-byte AES-256 master key; its ``repr`` shows only the id."""

    key: bytes = field(repr=False)

    @property
    def id(self) -> str:
        return key_id(self.key)


def read_key_file(path: Path) -> MasterKey:
    """Read a master key file.

    Raises:
        InvalidInputError: The file is missing, readable by others, or not a key.
    """
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError as e:
        raise InvalidInputError(f"master key file {path} does not exist") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InvalidInputError(
            f"master key file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}): run chmod 600 {path}"
        )
    return MasterKey(decode_key(text, f"master key file {path}"))


def load_master_key(path: Path | None, environ: Mapping[str, str]) -> MasterKey:
    """The configured master key: ``path`` if set, else the ``SKIFF_MASTER_KEY`` variable.

    Raises:
        InvalidInputError: Neither is set, or the key is malformed.
    """
    if path is not None:
        return read_key_file(path)
    text = environ.get(ENV_VAR)
    if not text:
        raise InvalidInputError(
            "encryption is on but no master key is configured: set master_key_file in "
            f"central.toml or the {ENV_VAR} environment variable "
            "(create a key with 'skiff keys gen-master -o FILE')"
        )
    return MasterKey(decode_key(text, f"the {ENV_VAR} environment variable"))


def generate_key_file(path: Path) -> MasterKey:
    """Create ``path`` (mode 0600, never overwriting) holding a new random master key.

    Raises:
        ConflictError: ``path`` already exists.
    """
    key = MasterKey(new_key())
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError as e:
        raise ConflictError(f"{path} already exists; refusing to overwrite a key file") from e
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(base64.b64encode(key.key).decode("ascii") + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key
