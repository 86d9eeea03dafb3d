"""Fetching and importing blobs into the cache through the verifying writer."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import random
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

from edge_agent.cache import Cache
from edge_agent.downloads import fetch_blob, import_blob
from edge_agent.fetcher import Fetcher
from shared.codec import FRAME_SIZE
from shared.errors import (
    DigestMismatchError,
    DownloadError,
    DownloadHTTPError,
    FormatError,
    LengthError,
    RepositoryError,
)
from shared.manifest import FileEntry
from shared.segments import is_encrypted, new_key
from tests.edge.test_fetcher import TOKEN, BlobServer, make_blob, running_blob_server
from tests.support import frame_lengths


@pytest.fixture
async def server() -> AsyncIterator[BlobServer]:
    async with running_blob_server() as state:
        yield state


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[Cache]:
    c = await Cache.open(tmp_path / "data", budget_bytes=1 << 30)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def encrypted_cache(tmp_path: Path) -> AsyncIterator[Cache]:
    c = await Cache.open(tmp_path / "enc", budget_bytes=1 << 30, device_key=new_key())
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def client(server: BlobServer) -> AsyncIterator[Fetcher]:
    async with aiohttp.ClientSession() as session:
        yield Fetcher(session, server.url, TOKEN, timeout=2)


def leftovers(cache: Cache) -> list[Path]:
    """Partial and staged files left in the data directory."""
    data = cache.data_dir
    return sorted([*(data / "partial").iterdir(), *(data / "blobs" / "tmp").iterdir()])


def raw_of(entry: FileEntry, seed: int) -> bytes:
    return random.Random(seed).randbytes(entry.size)


async def assert_not_cached(cache: Cache, entry: FileEntry) -> None:
    assert not await cache.has_blob(entry.digest)
    assert not cache.blob_path(entry.digest).exists()
    assert await cache.usage() == 0


async def test_fetch_blob_stores_the_verified_blob(
    client: Fetcher, server: BlobServer, cache: Cache
) -> None:
    entry, packed = make_blob(300_000, 1)
    server.add(entry, packed)
    await fetch_blob(client, cache, entry)
    assert await cache.has_blob(entry.digest)
    assert cache.blob_path(entry.digest).read_bytes() == raw_of(entry, 1)
    assert leftovers(cache) == []
    await fetch_blob(client, cache, entry)  # cached: no second request
    assert len(server.log) == 1
    assert server.log[0]["path"] == f"/api/v1/blobs/{entry.digest}"


async def test_fetch_blob_resumes_after_a_cut(
    client: Fetcher, server: BlobServer, cache: Cache
) -> None:
    entry, packed = make_blob(300_000, 2)
    server.add(entry, packed)
    server.cut_after = 120_000
    with pytest.raises(DownloadError):
        await fetch_blob(client, cache, entry)
    assert cache.partial_path(entry.digest).stat().st_size == 120_000
    await assert_not_cached(cache, entry)
    await fetch_blob(client, cache, entry)
    assert cache.blob_path(entry.digest).read_bytes() == raw_of(entry, 2)
    assert [(r["range"], r["if_range"]) for r in server.log] == [
        (None, None),
        ("bytes=120000-", server.etags[entry.digest]),
    ]
    assert server.etags[entry.digest] == '"' + entry.zdigest.removeprefix("sha256:") + '"'
    assert leftovers(cache) == []


async def test_tampered_blob_is_a_digest_mismatch_and_nothing_is_stored(
    client: Fetcher, server: BlobServer, cache: Cache
) -> None:
    entry, packed = make_blob(200_000, 3)
    impostor_entry, impostor = make_blob(200_000, 4)
    assert impostor_entry.zsize == entry.zsize
    server.add(entry, packed)
    server.tamper[entry.digest] = impostor
    with pytest.raises(DigestMismatchError):
        await fetch_blob(client, cache, entry)
    await assert_not_cached(cache, entry)
    assert leftovers(cache) == []


async def test_flipped_byte_is_rejected_and_nothing_is_stored(
    client: Fetcher, server: BlobServer, cache: Cache
) -> None:
    entry, packed = make_blob(200_000, 5)
    flipped = bytearray(packed)
    flipped[len(flipped) // 2] ^= 0x40
    server.add(entry, packed)
    server.tamper[entry.digest] = bytes(flipped)
    with pytest.raises(RepositoryError):
        await fetch_blob(client, cache, entry)
    await assert_not_cached(cache, entry)
    assert leftovers(cache) == []


async def test_extra_bytes_are_a_length_error_and_nothing_is_stored(
    client: Fetcher, server: BlobServer, cache: Cache
) -> None:
    entry, packed = make_blob(100_000, 6)
    server.add(entry, packed)
    server.extra = b"x"
    server.announce_extra = False
    with pytest.raises(LengthError):
        await fetch_blob(client, cache, entry)
    await assert_not_cached(cache, entry)
    assert leftovers(cache) == []


async def test_a_corrupt_complete_part_is_dropped_then_fetched_again(
    client: Fetcher, server: BlobServer, cache: Cache
) -> None:
    entry, packed = make_blob(50_000, 7)
    server.add(entry, packed)
    part = cache.partial_path(entry.digest)
    part.write_bytes(b"\0" * entry.zsize)  # left by a crash, full length but wrong
    with pytest.raises(RepositoryError):
        await fetch_blob(client, cache, entry)
    assert not part.exists()
    assert server.log == []
    await fetch_blob(client, cache, entry)
    assert cache.blob_path(entry.digest).read_bytes() == raw_of(entry, 7)


async def test_http_error_keeps_nothing_and_is_retryable(
    client: Fetcher, server: BlobServer, cache: Cache
) -> None:
    entry, packed = make_blob(1000, 8)
    server.add(entry, packed)
    server.status = 503
    with pytest.raises(DownloadHTTPError) as info:
        await fetch_blob(client, cache, entry)
    assert info.value.status_code == 503
    await assert_not_cached(cache, entry)
    server.status = None
    await fetch_blob(client, cache, entry)
    assert await cache.has_blob(entry.digest)


async def test_concurrent_fetches_of_one_blob_download_once(
    client: Fetcher, server: BlobServer, cache: Cache
) -> None:
    entry, packed = make_blob(200_000, 9)
    server.add(entry, packed)
    await asyncio.gather(*(fetch_blob(client, cache, entry) for _ in range(3)))
    assert len(server.log) == 1
    assert cache.blob_path(entry.digest).read_bytes() == raw_of(entry, 9)


async def test_import_blob_from_a_tar_member(cache: Cache, tmp_path: Path) -> None:
    entry, packed = make_blob(100_000, 10)
    bundle = tmp_path / "fleet.skiff"
    with tarfile.open(bundle, "w") as tar:
        info = tarfile.TarInfo(f"blobs/{entry.digest.removeprefix('sha256:')}.zst")
        info.size = len(packed)
        tar.addfile(info, io.BytesIO(packed))
        tar.addfile(tarfile.TarInfo("after"), io.BytesIO(b""))
    with tarfile.open(bundle, "r") as tar:

        def member() -> IO[bytes]:
            f = tar.extractfile(f"blobs/{entry.digest.removeprefix('sha256:')}.zst")
            assert f is not None
            return f

        await import_blob(member, cache, entry)
    assert cache.blob_path(entry.digest).read_bytes() == raw_of(entry, 10)
    assert leftovers(cache) == []


async def test_import_blob_rejects_tampered_and_overlong_input(cache: Cache) -> None:
    entry, packed = make_blob(100_000, 11)
    _, impostor = make_blob(100_000, 12)
    with pytest.raises(DigestMismatchError):
        await import_blob(lambda: io.BytesIO(impostor), cache, entry)
    with pytest.raises(LengthError):
        await import_blob(lambda: io.BytesIO(packed + b"\0"), cache, entry)
    with pytest.raises(LengthError):
        await import_blob(lambda: io.BytesIO(packed[:-10]), cache, entry)
    await assert_not_cached(cache, entry)
    assert leftovers(cache) == []
    await import_blob(lambda: io.BytesIO(packed), cache, entry)
    assert await cache.has_blob(entry.digest)


# verified as it arrives

BIG = 3_000_000  # several batches of the fetcher


async def test_a_corrupt_stream_is_rejected_as_it_arrives_and_nothing_is_stored(
    client: Fetcher, server: BlobServer, cache: Cache
) -> None:
    entry, packed = make_blob(BIG, 20)
    server.add(entry, packed)
    server.tamper[entry.digest] = b"\0" * entry.zsize  # not a zstd frame from byte 0
    with pytest.raises(FormatError):
        await fetch_blob(client, cache, entry)
    await assert_not_cached(cache, entry)
    assert leftovers(cache) == []


async def test_resume_feeds_the_part_file_to_the_verifier_first(
    client: Fetcher, server: BlobServer, cache: Cache
) -> None:
    entry, packed = make_blob(BIG, 21)
    server.add(entry, packed)
    server.cut_after = 1_500_000
    with pytest.raises(DownloadError):
        await fetch_blob(client, cache, entry)
    assert cache.partial_path(entry.digest).read_bytes() == packed[:1_500_000]
    await assert_not_cached(cache, entry)
    await fetch_blob(client, cache, entry)
    assert cache.blob_path(entry.digest).read_bytes() == raw_of(entry, 21)
    assert [r["range"] for r in server.log] == [None, "bytes=1500000-"]
    assert leftovers(cache) == []


async def test_a_tampered_part_file_fails_on_resume_then_the_blob_is_fetched_whole(
    client: Fetcher, server: BlobServer, cache: Cache
) -> None:
    entry, packed = make_blob(BIG, 22)
    server.add(entry, packed)
    server.cut_after = 1_500_000
    with pytest.raises(DownloadError):
        await fetch_blob(client, cache, entry)
    part = cache.partial_path(entry.digest)
    kept = bytearray(part.read_bytes())
    kept[1_000_000] ^= 0x01
    part.write_bytes(bytes(kept))
    with pytest.raises(RepositoryError):
        await fetch_blob(client, cache, entry)
    await assert_not_cached(cache, entry)
    assert leftovers(cache) == []
    await fetch_blob(client, cache, entry)
    assert cache.blob_path(entry.digest).read_bytes() == raw_of(entry, 22)
    assert [r["range"] for r in server.log] == [None, "bytes=1500000-", None]


async def test_a_server_ignoring_the_range_restarts_the_verifier(
    client: Fetcher, server: BlobServer, cache: Cache
) -> None:
    entry, packed = make_blob(BIG, 23)
    server.add(entry, packed)
    cache.partial_path(entry.digest).write_bytes(packed[:1_200_000])
    server.ignore_range = True
    await fetch_blob(client, cache, entry)
    assert cache.blob_path(entry.digest).read_bytes() == raw_of(entry, 23)
    assert leftovers(cache) == []


async def test_encrypted_cache_stores_a_fetched_blob_encrypted_and_keeps_no_part(
    client: Fetcher, server: BlobServer, encrypted_cache: Cache
) -> None:
    entry, packed = make_blob(BIG, 24)
    server.add(entry, packed)
    server.cut_after = 1_000_000
    with pytest.raises(DownloadError):
        await fetch_blob(client, encrypted_cache, entry)
    assert leftovers(encrypted_cache) == []
    await fetch_blob(client, encrypted_cache, entry)
    assert is_encrypted(encrypted_cache.blob_path(entry.digest).read_bytes())
    assert await encrypted_cache.read_blob(entry.digest) == raw_of(entry, 24)
    assert [r["range"] for r in server.log] == [None, None]
    assert leftovers(encrypted_cache) == []


# Blobs of several frames resume from the last frame end on disk.

FRAMES = 3 * FRAME_SIZE + 3_000_000  # four frames


def frame_ends(packed: bytes) -> list[int]:
    """The compressed offset at which each frame of ``packed`` ends."""
    return list(itertools.accumulate(frame_lengths(packed)))


def resume_mark(cache: Cache, entry: FileEntry) -> dict[str, Any]:
    _, mark = cache.resume_paths(entry.digest)
    doc: dict[str, Any] = json.loads(mark.read_text())
    return doc


async def cut_download(
    client: Fetcher, server: BlobServer, cache: Cache, entry: FileEntry, packed: bytes
) -> dict[str, Any]:
    """Cut the download a little before its end; returns the resume mark it left."""
    server.add(entry, packed)
    server.cut_after = entry.zsize - 1_000_000
    with pytest.raises(DownloadError):
        await fetch_blob(client, cache, entry)
    await assert_not_cached(cache, entry)
    return resume_mark(cache, entry)


async def test_a_cut_download_resumes_at_the_last_frame_end_on_disk(
    client: Fetcher, server: BlobServer, cache: Cache
) -> None:
    entry, packed = make_blob(FRAMES, 41)
    mark = await cut_download(client, server, cache, entry, packed)
    assert mark["zdigest"] == entry.zdigest
    assert mark["compressed"] in frame_ends(packed)[:-1]
    assert mark["plain"] in (FRAME_SIZE, 2 * FRAME_SIZE, 3 * FRAME_SIZE)
    staged, _ = cache.resume_paths(entry.digest)
    assert staged.read_bytes()[: mark["plain"]] == raw_of(entry, 41)[: mark["plain"]]
    # Frames to resume from: no compressed bytes were written to disk.
    assert not cache.partial_path(entry.digest).exists()

    await fetch_blob(client, cache, entry)
    assert cache.blob_path(entry.digest).read_bytes() == raw_of(entry, 41)
    resumed = server.log[1]
    assert (resumed["range"], resumed["if_range"]) == (
        f"bytes={mark['compressed']}-",
        server.etags[entry.digest],
    )
    assert leftovers(cache) == []


async def test_a_staged_file_damaged_between_attempts_fails_then_is_fetched_whole(
    client: Fetcher, server: BlobServer, cache: Cache
) -> None:
    entry, packed = make_blob(FRAMES, 42)
    mark = await cut_download(client, server, cache, entry, packed)
    staged, _ = cache.resume_paths(entry.digest)
    with staged.open("r+b") as f:  # one bit, in what the next attempt keeps
        f.seek(mark["plain"] // 2)
        byte = f.read(1)[0]
        f.seek(mark["plain"] // 2)
        f.write(bytes([byte ^ 1]))
    with pytest.raises(DigestMismatchError):
        await fetch_blob(client, cache, entry)
    await assert_not_cached(cache, entry)
    assert leftovers(cache) == []
    await fetch_blob(client, cache, entry)
    assert cache.blob_path(entry.digest).read_bytes() == raw_of(entry, 42)
    assert [r["range"] for r in server.log] == [
        None,
        f"bytes={mark['compressed']}-",
        None,
    ]


async def test_a_resume_mark_off_a_frame_end_fails_then_the_blob_is_fetched_whole(
    client: Fetcher, server: BlobServer, cache: Cache
) -> None:
    entry, packed = make_blob(FRAMES, 43)
    mark = await cut_download(client, server, cache, entry, packed)
    _, path = cache.resume_paths(entry.digest)
    path.write_text(
        json.dumps({**mark, "compressed": mark["compressed"] - 100, "plain": mark["plain"] - 100})
    )
    with pytest.raises(RepositoryError):
        await fetch_blob(client, cache, entry)
    assert leftovers(cache) == []
    await fetch_blob(client, cache, entry)
    assert cache.blob_path(entry.digest).read_bytes() == raw_of(entry, 43)


@pytest.mark.parametrize(
    "mark",
    [
        b"not json",
        b'{"zdigest": "sha256:00", "compressed": 1, "plain": 1}',  # another compressed form
        b'{"zdigest": "ZD", "compressed": 0, "plain": 0}',
        b'{"zdigest": "ZD", "compressed": 99999999999, "plain": 1}',  # past the blob
        b'{"zdigest": "ZD", "compressed": 1000, "plain": 8388609}',  # past the staged file
        b'{"zdigest": "ZD", "compressed": "1000", "plain": 1000}',
    ],
    ids=["garbage", "other-form", "zero", "past-zsize", "past-staged", "string"],
)
async def test_a_resume_mark_that_does_not_fit_is_ignored(
    client: Fetcher, server: BlobServer, cache: Cache, mark: bytes
) -> None:
    entry, packed = make_blob(FRAMES, 44)
    server.add(entry, packed)
    staged, path = cache.resume_paths(entry.digest)
    staged.write_bytes(raw_of(entry, 44)[:FRAME_SIZE])
    path.write_bytes(mark.replace(b"ZD", entry.zdigest.encode()))
    await fetch_blob(client, cache, entry)
    assert cache.blob_path(entry.digest).read_bytes() == raw_of(entry, 44)
    assert [r["range"] for r in server.log] == [None]  # started over, from byte 0
    assert leftovers(cache) == []


async def test_an_encrypted_cache_writes_no_compressed_bytes_to_disk(
    client: Fetcher, server: BlobServer, encrypted_cache: Cache
) -> None:
    entry, packed = make_blob(FRAMES, 45)
    server.add(entry, packed)
    server.stall_after = entry.zsize // 2
    fetching = asyncio.create_task(fetch_blob(client, encrypted_cache, entry))
    for _ in range(200):  # bounded: 10 s
        if server.log:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # half the blob arrives and is written
    assert list((encrypted_cache.data_dir / "partial").iterdir()) == []
    server.release.set()
    with pytest.raises(DownloadError):
        await fetching
    assert leftovers(encrypted_cache) == []
