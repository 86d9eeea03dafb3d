"""zstd compression of blobs, bounded by the signed size.

Blobs travel and rest zstd-compressed, as a sequence of independent frames of at
most :data:`FRAME_SIZE` uncompressed bytes each (one frame for a small blob). Each
frame records its content size and checksum. A frame's end is a point from which
decoding starts afresh, so a download interrupted in frame ``n`` resumes at the end
of frame ``n - 1`` without the compressed bytes before it. Any sequence of frames
decodes; blobs written as one frame (by earlier versions) included.

Decompression never produces more than the signed uncompressed size (endless-data
and zstd-bomb defence): input is handed to the decoder one block at a time, so a
hostile frame cannot make it allocate more than ``max_size`` plus one 128 KiB block
before we stop.
"""

from __future__ import annotations

import logging
from collections import deque
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
    "FRAME_SIZE",
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
FRAME_SIZE = 8 << 20  # uncompressed bytes per frame: the granularity of a resumed download


def _compressor(level: int) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True)


def compress(data: bytes, level: int = DEFAULT_LEVEL) -> bytes:
    """Compress ``data`` into frames of at most :data:`FRAME_SIZE` bytes (one if smaller)."""
    comp = StreamCompressor(level)
    return comp.compress(data) + comp.flush()


def decompress(data: bytes, max_size: int) -> bytes:
    """Decompress complete zstd frames holding at most ``max_size`` bytes in all.

    Raises:
        LengthError: The content exceeds ``max_size``.
        FormatError: ``data`` is not a sequence of complete zstd frames.
    """
    dec = BoundedDecompressor(max_size)
    out = dec.decompress(data)
    dec.finish()
    return out


class StreamCompressor:
    """Compress a stream chunk by chunk into frames of :data:`FRAME_SIZE` bytes each.

    Holds at most one frame's worth of input (the chunks as given, not copied): a
    frame is compressed once all its bytes are in, so that it records its content size.
    """

    def __init__(self, level: int = DEFAULT_LEVEL) -> None:
        self._cctx = _compressor(level)
        self._pending: deque[bytes | memoryview] = deque()
        self._pending_size = 0
        self._frames = 0
        self.raw_size = 0

    def compress(self, chunk: bytes) -> bytes:
        """Feed uncompressed bytes; return the frames they complete."""
        self.raw_size += len(chunk)
        if chunk:
            self._pending.append(chunk)
            self._pending_size += len(chunk)
        if self._pending_size < FRAME_SIZE:
            return b""
        frame = self._frame(FRAME_SIZE)
        if self._pending_size < FRAME_SIZE:  # the usual case: no copy
            return frame
        frames = [frame]
        while self._pending_size >= FRAME_SIZE:
            frames.append(self._frame(FRAME_SIZE))
        return b"".join(frames)

    def flush(self) -> bytes:
        """Compress what is left into the last frame (an empty stream is one empty frame)."""
        if not self._pending_size and self._frames:
            return b""
        return self._frame(self._pending_size)

    def _frame(self, size: int) -> bytes:
        """One frame of the next ``size`` pending bytes."""
        obj = self._cctx.compressobj(size=size)
        out, need = [], size
        while need:
            chunk = self._pending.popleft()
            if len(chunk) > need:
                view = memoryview(chunk)
                chunk = view[:need]
                self._pending.appendleft(view[need:])
            out.append(obj.compress(chunk))
            need -= len(chunk)
        out.append(obj.flush())
        self._pending_size -= size
        self._frames += 1
        return b"".join(out)


class BoundedDecompressor:
    """Decompress zstd frames fed in chunks, never beyond ``max_size`` bytes in all."""

    def __init__(self, max_size: int) -> None:
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size}")
        self.max_size = max_size
        self.raw_size = 0
        self._walker = FrameWalker()
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._frame_start = 0  # output bytes before the frame being decoded

    def decompress(self, chunk: bytes) -> bytes:
        """Feed compressed bytes; return the uncompressed bytes they complete.

        Raises:
            LengthError: The output would exceed ``max_size``.
            FormatError: The bytes are not valid zstd frames.
        """
        out: list[bytes] = []
        for piece in self._walker.split(chunk):
            self._check_declared_size(piece.content_size)
            try:
                data = self._obj.decompress(piece.data)
            except zstandard.ZstdError as e:
                raise FormatError(f"corrupt zstd frame: {e}") from e
            self.raw_size += len(data)
            if self.raw_size > self.max_size:
                raise LengthError(f"decompressed data exceeds the signed size {self.max_size}")
            out.append(data)
            if piece.ends_frame:
                self._end_frame(piece.content_size)
        return b"".join(out)

    def _check_declared_size(self, declared: int | None) -> None:
        if declared is not None and self._frame_start + declared > self.max_size:
            raise LengthError(
                f"zstd frame declares {declared} bytes, which exceeds the signed size "
                f"{self.max_size}"
            )

    def _end_frame(self, declared: int | None) -> None:
        if not self._obj.eof:
            raise FormatError("corrupt zstd frame: the decoder did not finish it")
        if declared is not None and self.raw_size - self._frame_start != declared:
            raise FormatError(
                f"zstd frame declares {declared} bytes and holds "
                f"{self.raw_size - self._frame_start}"
            )
        self._frame_start = self.raw_size
        self._obj = self._dctx.decompressobj()

    def finish(self) -> None:
        """Check that the last frame is complete.

        Raises:
            FormatError: The input ends inside a frame, or holds no frame at all.
        """
        if not self._walker.done:
            raise FormatError(f"truncated zstd frame after {self.raw_size} bytes of output")


class StreamDecompressor:
    """Decompress zstd fed in chunks, handing the output on as it is produced.

    The output goes to ``output`` in pieces of at most ``piece_size`` bytes and never
    past ``max_size`` bytes in all: the piece that would go past raises instead
    (endless-data and zstd-bomb defence), so memory stays bounded by the piece size
    and the decoder's window, whatever the input. Each chunk costs one call into the
    decoder per frame it ends in, which runs without the GIL: for large blobs this is
    the faster of the two decompressors, and the one to run beside other threads.

    Given ``frame_end``, it is told ``(compressed, uncompressed)`` offsets each time a
    frame that declares its content size has been decoded whole and its output handed
    on: the points a resumed download can start from. ``start`` is such a point, for a
    decompressor that takes over there (``max_size`` still counts from zero).

    Unlike :class:`BoundedDecompressor` it does not check every frame's structure: a
    truncated frame just ends early, so the caller checks the size and digest of the
    output (as :class:`shared.fleet.BlobVerifier` does). A frame that carries no content
    checksum may hold back the output of its last block; such a blob fails that check
    rather than being accepted short. Central writes every frame with one.
    """

    def __init__(
        self,
        max_size: int,
        output: Callable[[bytes], object],
        piece_size: int = CHUNK_SIZE,
        *,
        frame_end: Callable[[int, int], object] | None = None,
        start: tuple[int, int] = (0, 0),
    ) -> None:
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size}")
        self.max_size = max_size
        self.compressed_size, self.raw_size = start
        self._output = output
        self._frame_end = frame_end
        self._walker = FrameWalker() if frame_end is not None else None
        self._frame_start = self.raw_size
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
        if self._walker is None:
            self._decode(chunk)
            return
        view, done = memoryview(chunk), 0
        offset = 0
        for piece in self._walker.split(chunk):
            offset += len(piece.data)
            if piece.ends_frame:
                self._decode(view[done:offset])
                done = offset
                self._ended(piece.content_size)
        if done < len(view):
            self._decode(view[done:])

    def _decode(self, data: bytes | memoryview) -> None:
        try:
            self._writer.write(data)
        except zstandard.ZstdError as e:
            raise FormatError(f"corrupt zstd frame: {e}") from e
        self.compressed_size += len(data)

    def _ended(self, declared: int | None) -> None:
        assert self._frame_end is not None
        whole = declared is not None and self.raw_size - self._frame_start == declared
        self._frame_start = self.raw_size
        if whole:
            self._frame_end(self.compressed_size, self.raw_size)

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
