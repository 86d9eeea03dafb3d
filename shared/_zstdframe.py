"""A walker over the structure of one zstd frame (RFC 8878, section 3.1.1).

It reads only headers: it splits incoming compressed bytes at block ends so
that each piece handed to the decoder completes at most one block, whose
output the format caps at 128 KiB. That bounds the memory a hostile frame can
make the decoder allocate in one call. It also knows when the frame is done.
"""

from __future__ import annotations

import enum

from shared.errors import FormatError

_MAGIC = b"\x28\xb5\x2f\xfd"
_BLOCK_MAX = 128 * 1024
_DID_SIZES = (0, 1, 2, 4)
_FCS_SIZES = (0, 2, 4, 8)


class _State(enum.Enum):
    FRAME_HEADER = enum.auto()
    BLOCK_HEADER = enum.auto()
    BLOCK = enum.auto()
    CHECKSUM = enum.auto()
    DONE = enum.auto()


class FrameWalker:
    """Tracks where block boundaries fall in a zstd frame fed in chunks."""

    def __init__(self) -> None:
        self._state = _State.FRAME_HEADER
        self._buf = bytearray()
        self._need = 5  # magic number and frame header descriptor
        self._block_left = 0
        self._last_block = False
        self._has_checksum = False
        self.content_size: int | None = None

    @property
    def done(self) -> bool:
        """Whether the whole frame, checksum included, has been seen."""
        return self._state is _State.DONE

    def split(self, chunk: bytes) -> list[memoryview]:
        """Split ``chunk`` into pieces that each complete at most one block.

        Raises:
            FormatError: The bytes are not one well-formed zstd frame.
        """
        view = memoryview(chunk)
        pieces: list[memoryview] = []
        start = pos = 0
        while pos < len(view):
            if self._state is _State.DONE:
                raise FormatError("unexpected data after the end of the zstd frame")
            if self._state is _State.BLOCK:
                take = min(self._block_left, len(view) - pos)
                pos += take
                self._block_left -= take
                if self._block_left == 0:
                    pieces.append(view[start:pos])
                    start = pos
                    self._end_block()
                continue
            take = min(self._need - len(self._buf), len(view) - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) == self._need:
                self._parse_header()
        if start < pos:
            pieces.append(view[start:pos])
        return pieces

    def _parse_header(self) -> None:
        buf = bytes(self._buf)
        if self._state is _State.FRAME_HEADER:
            self._parse_frame_header(buf)
        elif self._state is _State.BLOCK_HEADER:
            self._parse_block_header(buf)
        else:
            self._state = _State.DONE
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
            self._state = _State.DONE
