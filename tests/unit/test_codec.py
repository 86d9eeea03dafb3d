"""Tests for shared.codec, including zstd bombs and truncated frames."""

import os
import stat
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from shared.codec import (
    FRAME_SIZE,
    BoundedDecompressor,
    CompressedInfo,
    StreamCompressor,
    StreamDecompressor,
    compress,
    compress_file,
    decompress,
    decompress_file,
)
from shared.digest import sha256_digest, sha256_file
from shared.errors import DigestMismatchError, FormatError, InvalidInputError, LengthError
from tests.support import frame_lengths

MIB = 1 << 20


def _bomb(size: int) -> bytes:
    """A small frame of ``size`` zero bytes that does not declare its size."""
    obj = zstandard.ZstdCompressor(level=19, write_content_size=False).compressobj()
    return obj.compress(b"\0" * size) + obj.flush()


@pytest.mark.parametrize("size", [0, 1, 1000, 300_000])
def test_round_trip(size: int) -> None:
    data = os.urandom(size // 2) + b"a" * (size - size // 2)
    frame = compress(data)
    assert zstandard.frame_content_size(frame) == size
    assert decompress(frame, size) == data


def test_chunked_round_trip_with_tiny_chunks() -> None:
    data = os.urandom(50_000) + b"b" * 400_000
    frame = compress(data)
    dec = BoundedDecompressor(len(data))
    out = b"".join(dec.decompress(frame[i : i + 7]) for i in range(0, len(frame), 7))
    dec.finish()
    assert out == data
    assert dec.raw_size == len(data)


def test_stream_compressor_round_trip() -> None:
    comp = StreamCompressor()
    chunks = [os.urandom(1000), b"x" * 500_000, b"", b"tail"]
    frame = b"".join(comp.compress(c) for c in chunks) + comp.flush()
    assert comp.raw_size == sum(map(len, chunks))
    assert decompress(frame, comp.raw_size) == b"".join(chunks)


def test_declared_size_over_limit() -> None:
    with pytest.raises(LengthError, match="exceeds the signed size 99"):
        decompress(compress(b"z" * 100), 99)


def test_bomb_stops_at_limit_without_allocating_it_all() -> None:
    bomb = _bomb(256 * MIB)
    assert len(bomb) < 64_000
    dec = BoundedDecompressor(MIB)
    tracemalloc.start()
    try:
        with pytest.raises(LengthError, match="exceeds the signed size 1048576"):
            dec.decompress(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dec.raw_size <= MIB + 128 * 1024
    assert peak < 8 * MIB


def test_bomb_in_one_shot_decompress() -> None:
    with pytest.raises(LengthError):
        decompress(_bomb(64 * MIB), 4096)


def test_truncated_frame() -> None:
    frame = compress(os.urandom(100_000))
    for cut in (1, 4, 7, len(frame) // 2, len(frame) - 1):
        with pytest.raises(FormatError):
            decompress(frame[:cut], 100_000)


def test_truncated_frame_detected_by_finish() -> None:
    frame = compress(os.urandom(100_000))
    dec = BoundedDecompressor(100_000)
    dec.decompress(frame[:-10])
    with pytest.raises(FormatError, match="truncated"):
        dec.finish()


@pytest.mark.parametrize(
    "data",
    [b"not zstd at all", b"\x28\xb5\x2f\xfd\x08" + b"\0" * 20, b"\x50\x2a\x4d\x18" + b"\0" * 8],
)
def test_garbage(data: bytes) -> None:
    with pytest.raises(FormatError):
        decompress(data, 1000)


def test_corrupt_block() -> None:
    frame = bytearray(compress(os.urandom(1000) + b"c" * 10_000))
    frame[len(frame) // 2] ^= 0xFF
    with pytest.raises(FormatError):
        decompress(bytes(frame), 20_000)


def test_frames_in_sequence_decode_to_their_concatenation() -> None:
    assert decompress(compress(b"abc") + compress(b"") + compress(b"def"), 100) == b"abcdef"


def test_garbage_after_a_frame_is_rejected() -> None:
    with pytest.raises(FormatError, match="bad magic"):
        decompress(compress(b"abc") + b"trailing garbage", 100)


def test_large_content_is_written_as_frames_of_frame_size() -> None:
    data = os.urandom(1000) + bytes(range(256)) * (FRAME_SIZE * 5 // 2 // 256)
    blob = compress(data)
    lengths = frame_lengths(blob)
    assert len(lengths) == 3
    assert zstandard.frame_content_size(blob) == FRAME_SIZE
    assert zstandard.frame_content_size(blob[sum(lengths[:2]) :]) == len(data) - 2 * FRAME_SIZE
    assert decompress(blob, len(data)) == data
    comp = StreamCompressor()
    streamed = b"".join(comp.compress(data[i : i + 777_777]) for i in range(0, len(data), 777_777))
    assert streamed + comp.flush() == blob


def test_empty_stream_is_one_empty_frame() -> None:
    comp = StreamCompressor()
    assert comp.compress(b"") == b""
    blob = comp.flush()
    assert frame_lengths(blob) == [len(blob)]
    assert decompress(blob, 0) == b""


def test_a_frame_declaring_more_than_the_budget_left_is_refused() -> None:
    with pytest.raises(LengthError, match="declares 100 bytes"):
        decompress(compress(b"a" * 100) + compress(b"b" * 100), 150)


def test_a_frame_holding_other_than_it_declares_is_refused() -> None:
    frame = bytearray(compress(b"x" * 300))
    assert frame[4] >> 6 == 1 and frame[4] & 0x20  # single segment, 2-byte size (less 256)
    assert int.from_bytes(frame[5:7], "little") + 256 == 300
    frame[5:7] = (299 - 256).to_bytes(2, "little")
    with pytest.raises(FormatError):
        decompress(bytes(frame), 1000)


def test_stream_decompressor_reports_frame_ends_to_resume_from() -> None:
    data = bytes(range(256)) * (FRAME_SIZE * 3 // 256) + b"tail"
    blob = compress(data)
    lengths = frame_lengths(blob)
    ends: list[tuple[int, int]] = []
    out = bytearray()
    dec = StreamDecompressor(len(data), out.extend, frame_end=lambda c, p: ends.append((c, p)))
    for i in range(0, len(blob), 100_000):
        dec.feed(blob[i : i + 100_000])
    assert bytes(out) == data
    assert ends == [(sum(lengths[: i + 1]), min((i + 1) * FRAME_SIZE, len(data))) for i in range(4)]
    # Taking over at the end of the second frame yields the rest of the content.
    c, p = ends[1]
    rest = bytearray()
    later = StreamDecompressor(len(data), rest.extend, frame_end=lambda *_: None, start=(c, p))
    later.feed(blob[c:])
    assert bytes(rest) == data[p:]
    assert (later.compressed_size, later.raw_size) == (len(blob), len(data))


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(os.urandom(2 * MIB) + b"w" * (3 * MIB) + os.urandom(1000))
    return path


def test_file_round_trip(tmp_path: Path, big_file: Path) -> None:
    packed, unpacked = tmp_path / "blob.zst", tmp_path / "out"
    info = compress_file(big_file, packed)
    assert info == CompressedInfo(*sha256_file(big_file), *sha256_file(packed))
    assert info.zsize < info.size
    decompress_file(packed, unpacked, expected_digest=info.digest, max_size=info.size)
    assert unpacked.read_bytes() == big_file.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.zst", "model.onnx", "out"]


def test_file_wrong_digest_leaves_nothing(tmp_path: Path, big_file: Path) -> None:
    packed, unpacked = tmp_path / "blob.zst", tmp_path / "out"
    info = compress_file(big_file, packed)
    with pytest.raises(DigestMismatchError, match=f"got {info.digest}"):
        decompress_file(packed, unpacked, expected_digest=sha256_digest(b""), max_size=info.size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.zst", "model.onnx"]


def test_file_over_signed_size_leaves_nothing(tmp_path: Path, big_file: Path) -> None:
    packed, unpacked = tmp_path / "blob.zst", tmp_path / "out"
    info = compress_file(big_file, packed)
    with pytest.raises(LengthError):
        decompress_file(packed, unpacked, expected_digest=info.digest, max_size=info.size - 1)
    assert not unpacked.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.zst", "model.onnx"]


def test_file_truncated_leaves_nothing(tmp_path: Path, big_file: Path) -> None:
    packed, unpacked = tmp_path / "blob.zst", tmp_path / "out"
    info = compress_file(big_file, packed)
    packed.write_bytes(packed.read_bytes()[:-100])
    with pytest.raises(FormatError):
        decompress_file(packed, unpacked, expected_digest=info.digest, max_size=info.size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.zst", "model.onnx"]


def test_file_bad_expected_digest(tmp_path: Path) -> None:
    packed = tmp_path / "blob.zst"
    packed.write_bytes(compress(b"abc"))
    with pytest.raises(InvalidInputError):
        decompress_file(packed, tmp_path / "out", expected_digest="md5:x", max_size=3)


def test_compress_file_replaces_existing_dst(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"hello" * 1000)
    dst.write_bytes(b"stale")
    info = compress_file(src, dst)
    assert decompress(dst.read_bytes(), info.size) == src.read_bytes()
    assert stat.S_IMODE(dst.stat().st_mode) & 0o600 == 0o600
