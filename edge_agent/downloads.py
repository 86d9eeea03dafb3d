"""Fetch or import one blob into the cache through the bounded, verifying writer.

Both paths, network and bundle, stream the compressed bytes through
:class:`shared.fleet.BlobVerifier` into a staged file next to the blob store;
only a blob that matches every signed size and digest is moved into the cache.
A verification failure leaves nothing behind: the partial download and the
staged file are deleted and the ``RepositoryError`` is raised. A transport
failure keeps the partial download for the next attempt to resume, unless the
cache is encrypted: then the staged file is written encrypted as it is verified and
the partial download is deleted whatever happens (docs/encryption.md, "Edge cache").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from edge_agent.cache import Cache
from edge_agent.fetcher import Fetcher, ProgressCallback
from shared.digest import parse_digest
from shared.errors import RepositoryError
from shared.fleet import BlobVerifier
from shared.manifest import FileEntry
from shared.segments import SegmentWriter, new_key

__all__ = ["fetch_blob", "import_blob"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


async def fetch_blob(
    fetcher: Fetcher,
    cache: Cache,
    entry: FileEntry,
    *,
    etag: str | None = None,
    progress: ProgressCallback | None = None,
) -> None:
    """Download, verify and store the blob of ``entry`` unless the cache holds it.

    Args:
        fetcher: The fetcher to download with.
        cache: The cache that receives the blob.
        entry: The signed file entry (digest, size, zdigest, zsize).
        etag: The ``If-Range`` validator; ``"<zdigest hex>"`` by default.
        progress: Called with (bytes downloaded, zsize).

    Raises:
        RepositoryError: The bytes break a signed size or digest (nothing stored).
        DownloadError: The transport failed (the partial download is kept).
    """
    async with cache.blob_lock(entry.digest):
        if await cache.has_blob(entry.digest):
            return
        part = cache.partial_path(entry.digest)
        validator = etag if etag is not None else f'"{parse_digest(entry.zdigest)}"'
        try:
            await fetcher.download_to(
                f"/api/v1/blobs/{entry.digest}",
                part,
                max_length=entry.zsize,
                etag=validator,
                progress=progress,
            )
        except BaseException:
            if cache.encrypted:  # compressed model bytes: never kept at rest
                await asyncio.to_thread(part.unlink, missing_ok=True)
            raise

        def opener() -> IO[bytes]:
            return open(part, "rb")

        try:
            await _verify_and_store(opener, cache, entry)
        except RepositoryError:
            await asyncio.to_thread(part.unlink, missing_ok=True)
            raise
        await asyncio.to_thread(part.unlink, missing_ok=True)
        logger.info("Fetched blob %s (%s, %d bytes)", entry.digest, entry.path, entry.size)


async def import_blob(
    fileobj_factory: Callable[[], IO[bytes]], cache: Cache, entry: FileEntry
) -> None:
    """Verify and store a blob read from a file object (a bundle member).

    ``fileobj_factory`` is called in a worker thread and must return a fresh
    file object positioned at the first compressed byte; it is closed after use.
    Nothing is read past ``zsize`` + 1 bytes.

    Raises:
        RepositoryError: The bytes break a signed size or digest (nothing stored).
    """
    async with cache.blob_lock(entry.digest):
        if await cache.has_blob(entry.digest):
            return
        await _verify_and_store(fileobj_factory, cache, entry)
        logger.info("Imported blob %s (%s, %d bytes)", entry.digest, entry.path, entry.size)


async def _verify_and_store(
    opener: Callable[[], IO[bytes]], cache: Cache, entry: FileEntry
) -> None:
    staged = cache.staging_path(entry.digest)
    data_key = new_key() if cache.encrypted else None
    try:
        await asyncio.to_thread(_verify_to, opener, staged, entry, data_key)
        await cache.add_blob_from(staged, entry.digest, entry.size, data_key=data_key)
    except RepositoryError as e:
        logger.warning("Blob %s (%s) failed verification: %s", entry.digest, entry.path, e)
        raise
    finally:
        await asyncio.to_thread(staged.unlink, missing_ok=True)


def _verify_to(
    opener: Callable[[], IO[bytes]], staged: Path, entry: FileEntry, data_key: bytes | None
) -> None:
    """Stream compressed bytes through the verifier into ``staged`` and fsync it.

    With ``data_key`` the verified bytes are written encrypted under it.
    """
    verifier = BlobVerifier(entry)
    staged.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(staged, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(os.fdopen(fd, "wb"))
        src = stack.enter_context(opener())
        writer = None if data_key is None else SegmentWriter(out, key=data_key, digest=entry.digest)
        write = out.write if writer is None else writer.write
        remaining = entry.zsize + 1  # one byte more than allowed reveals an overlong input
        while remaining > 0 and (chunk := src.read(min(_CHUNK, remaining))):
            remaining -= len(chunk)
            data = verifier.feed(chunk)
            if data:
                write(data)
        verifier.finish()
        if writer is not None:
            writer.finish()
        out.flush()
        os.fsync(out.fileno())
