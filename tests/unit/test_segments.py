"""Tests for shared.segments: the encrypted segment format rejects every tampering."""

from __future__ import annotations

import io
import os
from collections.abc import Callable

import pytest

from shared.digest import sha256_digest
from shared.errors import DecryptionError, FormatError, InvalidInputError, RepositoryError
from shared.segments import (
    HEADER_SIZE,
    MAGIC,
    OVERHEAD,
    SegmentReader,
    decode_key,
    encrypt_stream,
    is_encrypted,
    key_id,
    new_key,
    open_plain,
    unwrap_key,
    wrap_key,
)

SEG = 1024
STRIDE = SEG + OVERHEAD
KEY = new_key()


def _encrypt(data: bytes, key: bytes = KEY, digest: str | None = None) -> bytes:
    out = io.BytesIO()
    encrypt_stream(
        io.BytesIO(data), out, key=key, digest=digest or sha256_digest(data), segment_size=SEG
    )
    return out.getvalue()


def _decrypt(blob: bytes, digest: str, key: bytes = KEY) -> bytes:
    with open_plain(io.BytesIO(blob), key=key, digest=digest) as f:
        return f.read()


def _segment(blob: bytes, i: int) -> bytes:
    return blob[HEADER_SIZE + i * STRIDE : HEADER_SIZE + (i + 1) * STRIDE]


def _with_segment(blob: bytes, i: int, seg: bytes) -> bytes:
    start = HEADER_SIZE + i * STRIDE
    return blob[:start] + seg + blob[start + len(seg) :]


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 17])
def test_round_trip(size: int) -> None:
    data = os.urandom(size)
    blob = _encrypt(data)
    assert is_encrypted(blob)
    assert _decrypt(blob, sha256_digest(data)) == data
    if size >= 16:  # shorter strings may occur in random ciphertext by chance
        assert data[:16] not in blob


def test_range_reads_decrypt_only_the_segments_touched() -> None:
    data = os.urandom(4 * SEG + 5)
    blob = bytearray(_encrypt(data))
    blob[HEADER_SIZE + 5] ^= 1  # segment 0 is corrupt, so a read of it would fail
    raw = SegmentReader(io.BytesIO(bytes(blob)), key=KEY, digest=sha256_digest(data))
    assert (raw.size, raw.segment_count) == (len(data), 5)
    raw.seek(2 * SEG + 10)
    assert raw.read(SEG) == data[2 * SEG + 10 : 3 * SEG]  # never past one segment
    reader = io.BufferedReader(raw)
    reader.seek(2 * SEG + 10)
    assert reader.read(SEG) == data[2 * SEG + 10 : 3 * SEG + 10]
    reader.seek(-3, io.SEEK_END)
    assert reader.read() == data[-3:]


def test_empty_source_still_writes_a_last_segment() -> None:
    blob = _encrypt(b"")
    assert len(blob) == HEADER_SIZE + OVERHEAD
    with pytest.raises(DecryptionError, match="segment 0"):
        _decrypt(blob[:-1], sha256_digest(b""))


DATA = os.urandom(3 * SEG + 100)
DIGEST = sha256_digest(DATA)
OTHER = os.urandom(3 * SEG + 100)


def _flip(blob: bytes) -> bytes:
    out = bytearray(blob)
    out[HEADER_SIZE + STRIDE + 40] ^= 0x01
    return bytes(out)


def _swap(blob: bytes) -> bytes:
    first, second = _segment(blob, 0), _segment(blob, 1)
    return _with_segment(_with_segment(blob, 0, second), 1, first)


def _moved(blob: bytes) -> bytes:
    # same data key, same position: only the digest in the associated data differs
    return _with_segment(blob, 1, _segment(_encrypt(OTHER), 1))


TAMPERINGS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "flipped byte": (_flip, "segment 1 "),
    "truncated mid-segment": (lambda b: b[:-50], "segment 3 "),
    "dropped last segment": (lambda b: b[: HEADER_SIZE + 3 * STRIDE], "segment 2 "),
    "swapped segments": (_swap, "segment 0 "),
    "segment moved from another blob": (_moved, "segment 1 "),
}


@pytest.mark.parametrize("case", sorted(TAMPERINGS))
def test_tampering_fails_naming_the_segment(case: str) -> None:
    tamper, where = TAMPERINGS[case]
    with pytest.raises(DecryptionError, match=where) as err:
        _decrypt(tamper(_encrypt(DATA)), DIGEST)
    assert isinstance(err.value, RepositoryError)


def test_wrong_key_fails_at_segment_zero() -> None:
    with pytest.raises(DecryptionError, match="segment 0 "):
        _decrypt(_encrypt(DATA), DIGEST, key=new_key())


def test_whole_file_of_another_blob_is_rejected() -> None:
    with pytest.raises(DecryptionError, match="in place of"):
        _decrypt(_encrypt(OTHER), DIGEST)


def test_plaintext_file_is_not_this_format() -> None:
    with pytest.raises(FormatError, match="SKFE1"):
        _decrypt(b"\x28\xb5\x2f\xfd" + bytes(100), DIGEST)
    assert not is_encrypted(b"\x28\xb5\x2f\xfd")
    assert MAGIC == b"SKFE1"


def test_header_with_unknown_version_is_rejected() -> None:
    blob = bytearray(_encrypt(DATA))
    blob[5] = 9
    with pytest.raises(FormatError, match="version 9"):
        _decrypt(bytes(blob), DIGEST)


def test_segment_size_out_of_bounds_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="segment size"):
        encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), key=KEY, digest=DIGEST, segment_size=10)


def test_key_wrap_round_trip_is_bound_to_the_digest() -> None:
    master, data_key = new_key(), new_key()
    wrapped = wrap_key(master, data_key, DIGEST)
    assert data_key not in wrapped
    assert unwrap_key(master, wrapped, DIGEST) == data_key
    with pytest.raises(DecryptionError, match="does not unwrap"):
        unwrap_key(new_key(), wrapped, DIGEST)
    with pytest.raises(DecryptionError):
        unwrap_key(master, wrapped, sha256_digest(OTHER))


def test_key_id_is_sixteen_hex_digits() -> None:
    ident = key_id(KEY)
    assert len(ident) == 16
    int(ident, 16)


@pytest.mark.parametrize("text", ["", "not base64!", "c2hvcnQ=", "A" * 60])
def test_decode_key_rejects_bad_text_without_echoing_it(text: str) -> None:
    with pytest.raises(InvalidInputError, match="key file") as err:
        decode_key(text, "key file")
    assert text not in str(err.value) or not text
