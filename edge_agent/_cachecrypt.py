"""File work of the encrypted edge cache (docs/encryption.md, "Edge cache"); run in threads.

Blob files are in the segment format of :mod:`shared.segments`, each under its own
data key; the cache keeps the data keys wrapped by the device key.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from shared.errors import DecryptionError, FormatError, LengthError
from shared.segments import MAGIC, SegmentReader, encrypt_stream, is_encrypted, open_plain

__all__ = ["encrypt_file", "file_is_encrypted", "hash_plain", "plain_size", "read_plain"]

_CHUNK = 1 << 20


def file_is_encrypted(path: Path) -> bool:
    with open(path, "rb") as f:
        return is_encrypted(f.read(len(MAGIC)))


def encrypt_file(src: Path, dst: Path, *, key: bytes, digest: str) -> None:
    """Write ``src`` encrypted to the new file ``dst`` (mode 0600) and fsync it."""
    fd = os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as plain:
            encrypt_stream(plain, out, key=key, digest=digest)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


def plain_size(path: Path, *, key: bytes, digest: str) -> int:
    """The plaintext length of an encrypted file (from its layout, nothing decrypted).

    Raises:
        LengthError: The file is not a well-formed encrypted blob of ``digest``.
    """
    try:
        with SegmentReader(open(path, "rb"), key=key, digest=digest) as reader:
            return reader.size
    except (FormatError, DecryptionError) as e:
        raise LengthError(f"staged blob {digest} is not a complete encrypted file: {e}") from e


def hash_plain(path: Path, *, key: bytes, digest: str) -> tuple[str, int]:
    """Decrypt ``path`` streaming and hash the plaintext: ``(sha256:<hex>, size)``.

    Raises:
        DecryptionError: A segment fails authentication (or the file names another blob).
        FormatError: The file is not in the segment format.
    """
    h, size = hashlib.sha256(), 0
    with open_plain(open(path, "rb"), key=key, digest=digest) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return f"sha256:{h.hexdigest()}", size


def read_plain(path: Path, *, key: bytes, digest: str) -> bytes:
    """The whole plaintext of an encrypted blob, in memory; checked against ``digest``.

    Raises:
        DecryptionError: A segment fails authentication, or the plaintext does not hash
            to ``digest``.
        FormatError: The file is not in the segment format.
    """
    with open_plain(open(path, "rb"), key=key, digest=digest) as f:
        data = f.read()
    actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
    if actual != digest:
        raise DecryptionError(f"blob {digest} decrypts to bytes hashing to {actual}")
    return data
