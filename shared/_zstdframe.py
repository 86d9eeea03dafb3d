"""A walker over the structure of a stream of zstd frames (RFC 8878, section 3.1.1).

It reads only headers: it splits incoming compressed bytes at block ends so
that each piece handed to the decoder completes at most one block, whose
output the format caps at 128 KiB. That bounds the memory a hostile frame can
make the decoder allocate in one call. It also knows where each frame ends:
blobs are written as a sequence of independent frames, and a frame's end is a
point from which decoding can start afresh (a resumed download starts there).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from shared.errors import FormatError

_MAGIC = b"\x28\xb5\x2f\xfd"
_BLOCK_MAX = 128 * 1024
_FCS_SIZES = (0, 2, 4, 8)


class Piece(NamedTuple):
    """Compressed bytes that complete at most one block."""

    data: memoryview
    ends_frame: bool
    content_size: int | None  # as its frame declares it, if it does


class _State(enum.Enum):
    FRAME_HEADER = enum.auto()
    BLOCK_HEADER = enum.auto()
    BLOCK = enum.auto()
    CHECKSUM = enum.auto()
    DONE = enum.auto()  # between two frames


class FrameWalker:
    """Tracks where blocks and frames end in a stream of zstd frames fed in chunks."""

    def __init__(self) -> None:
        self._state = _State.DONE
        self._buf = bytearray()
        self._need = 0
        self._block_left = 0
        self._last_block = False
        self._has_checksum = False
        self.frames = 0  # frames complete so far
        self.content_size: int | None = None  # declared by the frame being walked

    @property
    def done(self) -> bool:
        """Whether the bytes so far are whole frames, at least one (checksums included)."""
        return self._state is _State.DONE and self.frames > 0

    def split(self, chunk: bytes) -> list[Piece]:
        """Split ``chunk`` into pieces that each complete at most one block.

        Returns:
            The pieces in order, each with whether it completes its frame and the
            content size that frame declares.

        Raises:
            FormatError: The bytes are not well-formed zstd frames.
        """
        view = memoryview(chunk)
        pieces: list[Piece] = []
        start = pos = 0
        while pos < len(view):
            if self._state is _State.DONE:
                self._start_frame()
            if self._state is _State.BLOCK:
                take = min(self._block_left, len(view) - pos)
                pos += take
                self._block_left -= take
                if self._block_left == 0:
                    self._end_block()
                    pieces.append(Piece(view[start:pos], self._between_frames(), self.content_size))
                    start = pos
                continue
            take = min(self._need - len(self._buf), len(view) - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) == self._need:
                self._parse_header()
                if self._between_frames():  # after a checksum, or a frame of empty blocks
                    pieces.append(Piece(view[start:pos], True, self.content_size))
                    start = pos
        if start < pos:
            pieces.append(Piece(view[start:pos], False, self.content_size))
        return pieces

    def _between_frames(self) -> bool:
        return self._state is _State.DONE

    def _start_frame(self) -> None:
        self._state, self._need = _State.FRAME_HEADER, 5  # magic number and descriptor
        self._buf.clear()
        self.content_size = None

    def _parse_header(self) -> None:
        buf = bytes(self._buf)
        if self._state is _State.FRAME_HEADER:
            self._parse_frame_header(buf)
        elif self._state is _State.BLOCK_HEADER:
            self._parse_block_header(buf)
        else:
            self._frame_done()
        if self._state is not _State.FRAME_HEADER:
            self._buf.clear()

    def _parse_frame_header(self, buf: bytes) -> None:
        if buf[:4] != _MAGIC:
            raise FormatError("not a zstd frame: bad magic number")
        desc = buf[4]
        if desc & 0x08:
            raise FormatError("invalid zstd frame header: reserved bit set")
        if desc & 0x03:
            raise FormatError("zstd frames with a dictionary are not supported")
        single_segment = bool(desc & 0x20)
        fcs_size = _FCS_SIZES[desc >> 6] or (1 if single_segment else 0)
        size = 5 + (0 if single_segment else 1) + fcs_size
        if len(buf) < size:
            self._need = size
            return
        self._has_checksum = bool(desc & 0x04)
        if fcs_size:
            fcs = int.from_bytes(buf[size - fcs_size : size], "little")
            self.content_size = fcs + 256 if fcs_size == 2 else fcs
        self._state, self._need = _State.BLOCK_HEADER, 3

    def _parse_block_header(self, buf: bytes) -> None:
        header = int.from_bytes(buf, "little")
        self._last_block = bool(header & 1)
        block_type = (header >> 1) & 3
        block_size = header >> 3
        if block_type == 3:
            raise FormatError("invalid zstd block: reserved block type")
        if block_size > _BLOCK_MAX:
            raise FormatError(f"invalid zstd block: size {block_size} exceeds {_BLOCK_MAX}")
        self._block_left = 1 if block_type == 1 else block_size
        self._state = _State.BLOCK
        if self._block_left == 0:
            self._end_block()

    def _end_block(self) -> None:
        if not self._last_block:
            self._state, self._need = _State.BLOCK_HEADER, 3
        elif self._has_checksum:
            self._state, self._need = _State.CHECKSUM, 4
        else:
            self._frame_done()

    def _frame_done(self) -> None:
        self._state = _State.DONE
        self.frames += 1
