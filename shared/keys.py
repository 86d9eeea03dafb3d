"""Ed25519 keys: public keys as they appear in root documents, signing keys on disk.

Key IDs are the hex SHA-256 of the raw 32-byte public key. Signing keys are
stored as unencrypted PKCS#8 PEM, readable by their owner only. Key material
is never logged or shown in a repr.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared._fsutil import atomic_writer, fsync_dir
from shared.errors import ConflictError, FormatError

__all__ = ["KEYTYPE", "SCHEME", "PublicKey", "SigningKey", "load_signing_key", "save_signing_key"]

logger = logging.getLogger(__name__)

KEYTYPE = "ed25519"
SCHEME = "ed25519"
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key (the raw 32 bytes)."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != 32:
            raise FormatError("an ed25519 public key is exactly 32 bytes")

    @property
    def keyid(self) -> str:
        """The hex SHA-256 of the raw public key."""
        return hashlib.sha256(self.raw).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """Return the key in its root-document form."""
        return {"keytype": KEYTYPE, "scheme": SCHEME, "keyval": {"public": self.raw.hex()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PublicKey:
        """Parse the root-document form of a key.

        Raises:
            FormatError: ``d`` is not an ed25519 key in that form.
        """
        if not isinstance(d, Mapping):
            raise FormatError(f"expected a key object, got {type(d).__name__}")
        if d.get("keytype") != KEYTYPE or d.get("scheme") != SCHEME:
            raise FormatError(
                f"expected keytype and scheme {KEYTYPE!r}, "
                f"got {d.get('keytype')!r:.32} and {d.get('scheme')!r:.32}"
            )
        keyval = d.get("keyval")
        public = keyval.get("public") if isinstance(keyval, Mapping) else None
        if not isinstance(public, str) or _HEX64.fullmatch(public) is None:
            raise FormatError("expected keyval.public to be 64 lowercase hex characters")
        return cls(bytes.fromhex(public))

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Tell whether ``signature`` is a valid signature of ``data`` by this key."""
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True


class SigningKey:
    """An Ed25519 private key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._public = PublicKey(raw)

    def __repr__(self) -> str:
        return f"SigningKey(keyid={self.keyid!r})"

    @classmethod
    def generate(cls) -> SigningKey:
        """Create a new random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        """Load an unencrypted PKCS#8 PEM key.

        Raises:
            FormatError: ``data`` is not an unencrypted Ed25519 private key.
        """
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            # The message of the underlying error may quote the input: omit it.
            raise FormatError("not an unencrypted PEM private key") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise FormatError(f"expected an Ed25519 private key, got {type(key).__name__}")
        return cls(key)

    def to_pem(self) -> bytes:
        """Return the key as unencrypted PKCS#8 PEM."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def public_key(self) -> PublicKey:
        """The matching public key."""
        return self._public

    @property
    def keyid(self) -> str:
        """The key ID of the public key."""
        return self._public.keyid

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)


def save_signing_key(path: Path, key: SigningKey, *, overwrite: bool = False) -> None:
    """Write ``key`` to ``path`` as PEM, with mode 0600 from the moment of creation.

    Raises:
        ConflictError: ``path`` exists and ``overwrite`` is false.
    """
    if overwrite:
        with atomic_writer(path, mode=0o600) as f:
            f.write(key.to_pem())
    else:
        _write_new(path, key.to_pem())
    logger.info("Saved signing key %s to %s", key.keyid, path)


def _write_new(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError as e:
        raise ConflictError(f"refusing to overwrite existing key file {path}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    fsync_dir(path.parent)


def load_signing_key(path: Path) -> SigningKey:
    """Read a PEM signing key.

    Raises:
        FormatError: The file does not hold an unencrypted Ed25519 key.
    """
    mode = path.stat().st_mode
    if mode & 0o077:
        logger.warning("Signing key file %s is readable by others (mode %o)", path, mode & 0o777)
    return SigningKey.from_pem(path.read_bytes())
