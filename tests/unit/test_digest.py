"""Tests for shared.digest."""

import hashlib
from pathlib import Path

import pytest

from shared.digest import (
    DIGEST_RE,
    Hasher,
    is_digest,
    parse_digest,
    sha256_digest,
    sha256_file,
    verify_digest,
)
from shared.errors import DigestMismatchError, InvalidInputError

HEX = hashlib.sha256(b"abc").hexdigest()


def test_sha256_digest() -> None:
    assert sha256_digest(b"abc") == f"sha256:{HEX}"
    assert DIGEST_RE.fullmatch(sha256_digest(b""))


def test_parse_digest() -> None:
    assert parse_digest(f"sha256:{HEX}") == HEX
    assert is_digest(f"sha256:{HEX}")


@pytest.mark.parametrize(
    "value",
    ["", HEX, f"sha256:{HEX.upper()}", f"sha512:{HEX}", f"sha256:{HEX[:-1]}", f"sha256:{HEX}\n"],
)
def test_parse_digest_rejects(value: str) -> None:
    assert not is_digest(value)
    with pytest.raises(InvalidInputError, match="invalid digest"):
        parse_digest(value)


def test_hasher_counts_bytes() -> None:
    hasher = Hasher()
    hasher.update(b"a")
    hasher.update(b"bc")
    assert hasher.nbytes == 3
    assert hasher.hexdigest() == HEX
    assert hasher.digest == f"sha256:{HEX}"


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = b"x" * 3_000_001
    path.write_bytes(data)
    assert sha256_file(path, chunk_size=1000) == (sha256_digest(data), len(data))


def test_verify_digest() -> None:
    verify_digest(b"abc", f"sha256:{HEX}")
    with pytest.raises(DigestMismatchError, match=f"expected sha256:{HEX}, got sha256:"):
        verify_digest(b"abd", f"sha256:{HEX}")
