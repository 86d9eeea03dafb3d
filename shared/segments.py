"""Encryption at rest: blob files as authenticated AES-256-GCM segments (docs/encryption.md).

A file is a 42-byte header (magic ``SKFE1``, format version, segment size, the
blob's raw SHA-256) followed by segments; segment ``i`` holds ``segment_size``
plaintext bytes (fewer in the last one) as ``nonce (12) || ciphertext || tag (16)``,
under the blob's own 32-byte data key, with associated data
``raw digest || i (u64, big-endian) || last (1 byte)``. So a flipped byte, a
dropped last segment, reordered segments and a segment taken from another blob
all fail authentication, and the offset of every segment is computable: reading
a byte range decrypts only the segments it touches.

Data keys are wrapped by a master key (:func:`wrap_key`). Pure: functions over
bytes and file objects; the caller opens files, stores wrapped keys and runs
this off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import struct
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.digest import parse_digest
from shared.errors import DecryptionError, FormatError, InvalidInputError

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "KEY_SIZE",
    "MAGIC",
    "MAX_SEGMENT_SIZE",
    "MIN_SEGMENT_SIZE",
    "SegmentReader",
    "SegmentWriter",
    "decode_key",
    "encrypt_stream",
    "is_encrypted",
    "key_id",
    "new_key",
    "open_plain",
    "unwrap_key",
    "wrap_key",
]

MAGIC = b"SKFE1"
FORMAT_VERSION = 1
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
DEFAULT_SEGMENT_SIZE = 1 << 20
MIN_SEGMENT_SIZE = 1024
MAX_SEGMENT_SIZE = 64 << 20  # bounds what one segment read may allocate
_HEADER = struct.Struct(">5sBI32s")  # magic, version, segment size, raw sha256
HEADER_SIZE = _HEADER.size
_AD_TAIL = struct.Struct(">QB")  # segment index, last flag


def new_key() -> bytes:
    """A fresh random 32-byte AES-256 key."""
    return os.urandom(KEY_SIZE)


def key_id(key: bytes) -> str:
    """The public name of a key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:16]


def decode_key(text: str, where: str) -> bytes:
    """A key from its base64 text; ``where`` names the source in errors (never the text).

    Raises:
        InvalidInputError: The text is not the base64 of exactly 32 bytes.
    """
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_SIZE:
        raise InvalidInputError(f"{where} must hold the base64 of {KEY_SIZE} random bytes")
    return key


def wrap_key(master: bytes, data_key: bytes, digest: str) -> bytes:
    """Encrypt a blob's data key under the master key: ``nonce || ciphertext || tag``."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(master).encrypt(nonce, data_key, digest.encode())


def unwrap_key(master: bytes, wrapped: bytes, digest: str) -> bytes:
    """The data key of blob ``digest``.

    Raises:
        DecryptionError: The wrapped key does not open with this master key for this blob.
    """
    try:
        key = AESGCM(master).decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], digest.encode())
    except (InvalidTag, ValueError) as e:
        raise DecryptionError(
            f"the data key of blob {digest} does not unwrap with master key {key_id(master)}"
        ) from e
    if len(key) != KEY_SIZE:
        raise DecryptionError(f"the data key of blob {digest} has {len(key)} bytes, not 32")
    return key


def is_encrypted(head: bytes) -> bool:
    """Whether a file starting with ``head`` is in this format (a zstd frame never is)."""
    return head[: len(MAGIC)] == MAGIC


def _ad(raw_digest: bytes, index: int, last: bool) -> bytes:
    return raw_digest + _AD_TAIL.pack(index, 1 if last else 0)


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    *,
    key: bytes,
    digest: str,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> int:
    """Write all of ``src`` to ``dst`` in the segment format; returns the plaintext length.

    An empty ``src`` still gets one (empty, last) segment, so truncation is always seen.
    """
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise InvalidInputError(
            f"segment size must be {MIN_SEGMENT_SIZE}..{MAX_SEGMENT_SIZE}, got {segment_size}"
        )
    raw = bytes.fromhex(parse_digest(digest))
    aead = AESGCM(key)
    dst.write(_HEADER.pack(MAGIC, FORMAT_VERSION, segment_size, raw))
    total, index = 0, 0
    chunk = _read_full(src, segment_size)
    while True:
        following = _read_full(src, segment_size) if len(chunk) == segment_size else b""
        last = not following
        nonce = os.urandom(NONCE_SIZE)
        dst.write(nonce + aead.encrypt(nonce, chunk, _ad(raw, index, last)))
        total += len(chunk)
        if last:
            return total
        chunk, index = following, index + 1


def _read_full(f: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = f.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


class SegmentReader(io.RawIOBase):
    """The plaintext of one encrypted file, seekable; decrypts a segment only when read.

    Args:
        f: The encrypted file, opened for binary reading and seekable (closed with this).
        key: The blob's data key.
        digest: The digest the file must belong to (``sha256:<hex>``).

    Raises:
        FormatError: The header is not this format.
        DecryptionError: The header names another blob, or the file is too short.
    """

    def __init__(self, f: BinaryIO, *, key: bytes, digest: str) -> None:
        super().__init__()
        self._f = f
        self._digest = digest
        self._raw_digest = bytes.fromhex(parse_digest(digest))
        self._aead = AESGCM(key)
        self._segment_size = self._read_header()
        body = f.seek(0, io.SEEK_END) - HEADER_SIZE
        stride = self._segment_size + OVERHEAD
        if body < OVERHEAD:
            raise DecryptionError(f"blob {digest}: segment 0 is missing or truncated")
        self._count = -(-body // stride)
        last_len = body - (self._count - 1) * stride - OVERHEAD
        if last_len < 0:
            raise DecryptionError(f"blob {digest}: segment {self._count - 1} is truncated")
        self.size = (self._count - 1) * self._segment_size + last_len
        self.segment_count = self._count
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    def _read_header(self) -> int:
        self._f.seek(0)
        head = self._f.read(HEADER_SIZE)
        if len(head) != HEADER_SIZE or not is_encrypted(head):
            raise FormatError(f"blob {self._digest}: not an encrypted blob file (no SKFE1 header)")
        _, version, segment_size, raw = _HEADER.unpack(head)
        if version != FORMAT_VERSION:
            raise FormatError(f"blob {self._digest}: format version {version}, expected 1")
        if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise FormatError(f"blob {self._digest}: segment size {segment_size} out of bounds")
        if raw != self._raw_digest:
            raise DecryptionError(
                f"blob file of sha256:{raw.hex()} found in place of {self._digest}"
            )
        return int(segment_size)

    def _segment(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        stride = self._segment_size + OVERHEAD
        self._f.seek(HEADER_SIZE + index * stride)
        blob = self._f.read(stride)
        last = index == self._count - 1
        try:
            plain = self._aead.decrypt(
                blob[:NONCE_SIZE], blob[NONCE_SIZE:], _ad(self._raw_digest, index, last)
            )
        except InvalidTag as e:
            raise DecryptionError(
                f"blob {self._digest}: segment {index} of {self._count} failed authentication"
                " (tampered, truncated, reordered, moved from another blob or wrong key)"
            ) from e
        self._cached = (index, plain)
        return plain

    @property
    def segment_size(self) -> int:
        return self._segment_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._pos >= self.size or len(buffer) == 0:
            return 0
        index, within = divmod(self._pos, self._segment_size)
        data = self._segment(index)[within : within + len(buffer)]
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def open_plain(f: BinaryIO, *, key: bytes, digest: str) -> BinaryIO:
    """A buffered, seekable reader of the plaintext of encrypted file ``f``."""
    try:
        reader = SegmentReader(f, key=key, digest=digest)
    except BaseException:
        f.close()
        raise
    return io.BufferedReader(reader, buffer_size=reader.segment_size)


class SegmentWriter:
    """Push-style :func:`encrypt_stream`: :meth:`write` plaintext as it comes, then :meth:`finish`.

    Produces exactly the bytes ``encrypt_stream`` would for the same plaintext and key
    (up to the random nonces), for a producer that cannot be read from (a verifier).
    """

    def __init__(
        self,
        dst: BinaryIO,
        *,
        key: bytes,
        digest: str,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> None:
        if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise InvalidInputError(
                f"segment size must be {MIN_SEGMENT_SIZE}..{MAX_SEGMENT_SIZE}, got {segment_size}"
            )
        self._dst = dst
        self._raw = bytes.fromhex(parse_digest(digest))
        self._aead = AESGCM(key)
        self._segment_size = segment_size
        self._buffer = bytearray()
        self._index = 0
        self.total = 0
        dst.write(_HEADER.pack(MAGIC, FORMAT_VERSION, segment_size, self._raw))

    def write(self, data: bytes) -> None:
        self._buffer += data
        self.total += len(data)
        # a full segment is written only once more data shows it is not the last one
        while len(self._buffer) > self._segment_size:
            self._emit(bytes(self._buffer[: self._segment_size]), last=False)
            del self._buffer[: self._segment_size]

    def finish(self) -> int:
        """Write the last segment; returns the plaintext length."""
        self._emit(bytes(self._buffer), last=True)
        self._buffer.clear()
        return self.total

    def _emit(self, chunk: bytes, *, last: bool) -> None:
        nonce = os.urandom(NONCE_SIZE)
        self._dst.write(nonce + self._aead.encrypt(nonce, chunk, _ad(self._raw, self._index, last)))
        self._index += 1
