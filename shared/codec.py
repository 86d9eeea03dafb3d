"""zstd compression of blobs, bounded by the signed size.

Blobs travel and rest zstd-compressed. Decompression never produces more than
the signed uncompressed size (endless-data and zstd-bomb defence): input is
handed to the decoder one block at a time, so a hostile frame cannot make it
allocate more than ``max_size`` plus one 128 KiB block before we stop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, cast

import zstandard

from shared._fsutil import atomic_writer
from shared._zstdframe import FrameWalker
from shared.digest import Hasher, parse_digest
from shared.errors import DigestMismatchError, FormatError, LengthError

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_LEVEL",
    "BoundedDecompressor",
    "CompressedInfo",
    "StreamCompressor",
    "StreamDecompressor",
    "compress",
    "compress_file",
    "decompress",
    "decompress_file",
]

logger = logging.getLogger(__name__)

DEFAULT_LEVEL = 3
CHUNK_SIZE = 1 << 20


def _compressor(level: int) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True)


def compress(data: bytes, level: int = DEFAULT_LEVEL) -> bytes:
    """Compress ``data`` into one zstd frame that records its content size."""
    return _compressor(level).compress(data)


def decompress(data: bytes, max_size: int) -> bytes:
    """Decompress one complete zstd frame of at most ``max_size`` bytes.

    Raises:
        LengthError: The content exceeds ``max_size``.
        FormatError: ``data`` is not exactly one complete zstd frame.
    """
    dec = BoundedDecompressor(max_size)
    out = dec.decompress(data)
    dec.finish()
    return out


class StreamCompressor:
    """Compress a stream chunk by chunk into one zstd frame."""

    def __init__(self, level: int = DEFAULT_LEVEL) -> None:
        self._obj = _compressor(level).compressobj()
        self.raw_size = 0

    def compress(self, chunk: bytes) -> bytes:
        """Feed uncompressed bytes; return whatever compressed bytes are ready."""
        self.raw_size += len(chunk)
        return self._obj.compress(chunk)

    def flush(self) -> bytes:
        """Finish the frame and return its last bytes."""
        return self._obj.flush()


class BoundedDecompressor:
    """Decompress one zstd frame fed in chunks, never beyond ``max_size`` bytes."""

    def __init__(self, max_size: int) -> None:
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size}")
        self.max_size = max_size
        self.raw_size = 0
        self._walker = FrameWalker()
        self._obj = zstandard.ZstdDecompressor().decompressobj()

    def decompress(self, chunk: bytes) -> bytes:
        """Feed compressed bytes; return the uncompressed bytes they complete.

        Raises:
            LengthError: The output would exceed ``max_size``.
            FormatError: The bytes are not a valid zstd frame.
        """
        out: list[bytes] = []
        for piece in self._walker.split(chunk):
            self._check_declared_size()
            try:
                data = self._obj.decompress(piece)
            except zstandard.ZstdError as e:
                raise FormatError(f"corrupt zstd frame: {e}") from e
            self.raw_size += len(data)
            if self.raw_size > self.max_size:
                raise LengthError(f"decompressed data exceeds the signed size {self.max_size}")
            out.append(data)
        return b"".join(out)

    def _check_declared_size(self) -> None:
        declared = self._walker.content_size
        if declared is not None and declared > self.max_size:
            raise LengthError(
                f"zstd frame declares {declared} bytes, which exceeds the signed size "
                f"{self.max_size}"
            )

    def finish(self) -> None:
        """Check that the frame is complete.

        Raises:
            FormatError: The frame is truncated.
        """
        if not (self._walker.done and self._obj.eof):
            raise FormatError(f"truncated zstd frame after {self.raw_size} bytes of output")


class StreamDecompressor:
    """Decompress zstd fed in chunks, handing the output on as it is produced.

    The output goes to ``output`` in pieces of at most ``piece_size`` bytes and never
    past ``max_size`` bytes in all: the piece that would go past raises instead
    (endless-data and zstd-bomb defence), so memory stays bounded by the piece size
    and the decoder's window, whatever the input. Each chunk costs one call into the
    decoder, which runs without the GIL: for large blobs this is the faster of the
    two decompressors, and the one to run beside other threads.

    Unlike :class:`BoundedDecompressor` it does not walk the frame structure: bytes
    after the frame are decoded as further frames and a truncated frame just ends
    early, so the caller checks the size and digest of the output (as
    :class:`shared.fleet.BlobVerifier` does). A frame that carries no content
    checksum may hold back the output of its last block; such a blob fails that
    check rather than being accepted short. Central writes every frame with one.
    """

    def __init__(
        self, max_size: int, output: Callable[[bytes], object], piece_size: int = CHUNK_SIZE
    ) -> None:
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size}")
        self.max_size = max_size
        self.raw_size = 0
        self._output = output
        # The decoder only ever calls our write(): we are the sink it writes to.
        self._writer = zstandard.ZstdDecompressor().stream_writer(
            cast("IO[bytes]", self), write_size=piece_size, write_return_read=True
        )

    def feed(self, chunk: bytes) -> None:
        """Feed compressed bytes; their output goes to ``output`` before this returns.

        Raises:
            LengthError: The output would exceed ``max_size``.
            FormatError: The bytes are not valid zstd.
        """
        try:
            self._writer.write(chunk)
        except zstandard.ZstdError as e:
            raise FormatError(f"corrupt zstd frame: {e}") from e

    def write(self, data: bytes) -> int:
        """The decoder's sink (not for callers): check the bound, pass the piece on."""
        self.raw_size += len(data)
        if self.raw_size > self.max_size:
            raise LengthError(f"decompressed data exceeds the signed size {self.max_size}")
        self._output(data)
        return len(data)


@dataclass(frozen=True, slots=True)
class CompressedInfo:
    """Digests and sizes of a blob, uncompressed and compressed."""

    digest: str
    size: int
    zdigest: str
    zsize: int


def compress_file(src: Path, dst: Path, level: int = DEFAULT_LEVEL) -> CompressedInfo:
    """Compress ``src`` into ``dst`` (temp file, fsync, rename), hashing both sides.

    Returns:
        The digests and sizes of the uncompressed and compressed bytes.
    """
    raw, packed = Hasher(), Hasher()
    comp = StreamCompressor(level)
    with open(src, "rb") as f, atomic_writer(dst) as out:
        while chunk := f.read(CHUNK_SIZE):
            raw.update(chunk)
            _write(out, packed, comp.compress(chunk))
        _write(out, packed, comp.flush())
    logger.debug("Compressed %s: %d -> %d bytes", raw.digest, raw.nbytes, packed.nbytes)
    return CompressedInfo(raw.digest, raw.nbytes, packed.digest, packed.nbytes)


def decompress_file(
    src: Path | BinaryIO, dst: Path, *, expected_digest: str, max_size: int
) -> None:
    """Decompress ``src`` (a path, or an open file the caller closes) into ``dst``.

    ``dst`` appears only if its digest matches.

    Raises:
        InvalidInputError: ``expected_digest`` is malformed.
        LengthError: The content exceeds ``max_size``.
        FormatError: ``src`` is not one complete zstd frame.
        DigestMismatchError: The content does not hash to ``expected_digest``.
    """
    parse_digest(expected_digest)
    if isinstance(src, Path):
        with open(src, "rb") as f:
            _decompress_to(f, dst, expected_digest, max_size)
    else:
        _decompress_to(src, dst, expected_digest, max_size)


def _decompress_to(f: BinaryIO, dst: Path, expected_digest: str, max_size: int) -> None:
    dec, hasher = BoundedDecompressor(max_size), Hasher()
    with atomic_writer(dst) as out:
        while chunk := f.read(CHUNK_SIZE):
            _write(out, hasher, dec.decompress(chunk))
        dec.finish()
        if hasher.digest != expected_digest:
            raise DigestMismatchError(f"expected {expected_digest}, got {hasher.digest}")


def _write(out: BinaryIO, hasher: Hasher, data: bytes) -> None:
    if data:
        hasher.update(data)
        out.write(data)
