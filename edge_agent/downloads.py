"""Fetch or import one blob into the cache through the bounded, verifying writer.

Both paths, network and bundle, stream the compressed bytes through
:class:`shared.fleet.BlobVerifier` into a staged file next to the blob store;
only a blob that matches every signed size and digest is moved into the cache.
A download is verified as it arrives: each batch goes to the part file (kept for
resuming) and to the verifier, whose decompression and output hash run in
worker threads while the next bytes arrive. A resumed download first
feeds the verifier what the part file holds.

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
from typing import IO, BinaryIO

from edge_agent._worker import SerialWorker
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
_SYNC_EVERY = 4 << 20  # staged bytes written between two fdatasync calls


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
        staged = cache.staging_path(entry.digest)
        validator = etag if etag is not None else f'"{parse_digest(entry.zdigest)}"'
        data_key = new_key() if cache.encrypted else None
        try:
            out = await asyncio.to_thread(_create, staged)
            sink = _StagedBlob(entry, out, data_key)
            try:
                await fetcher.download_to(
                    f"/api/v1/blobs/{entry.digest}",
                    part,
                    max_length=entry.zsize,
                    etag=validator,
                    progress=progress,
                    sink=sink,
                )
                # Every byte is in the verifier now: the part file is no longer needed.
                await asyncio.gather(sink.finish(), asyncio.to_thread(part.unlink, missing_ok=True))
            except RepositoryError as e:
                logger.warning("Blob %s (%s) failed verification: %s", entry.digest, entry.path, e)
                await asyncio.to_thread(part.unlink, missing_ok=True)
                raise
            except BaseException:
                if cache.encrypted:  # compressed model bytes: never kept at rest
                    await asyncio.to_thread(part.unlink, missing_ok=True)
                raise
            finally:
                await sink.close()
            await cache.add_blob_from(staged, entry.digest, entry.size, data_key=data_key)
        finally:
            await asyncio.to_thread(staged.unlink, missing_ok=True)
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


class _StagedBlob:
    """The verifier of one download, writing its output to the staged file as bytes arrive.

    A :class:`~edge_agent.fetcher.DownloadSink`. Two worker threads share the work,
    each in order: one decompresses, the other hashes the output and writes it to the
    staged file. The loop hands each batch to the first and goes back to the network;
    the first hands its output to the second itself. A third thread writes the staged
    file back to disk as it grows. What the staged file holds is untrusted until
    :meth:`finish` returns.
    """

    def __init__(self, entry: FileEntry, out: BinaryIO, data_key: bytes | None) -> None:
        self._entry = entry
        self._out = out
        self._data_key = data_key
        self._unpacking = SerialWorker("blob-unzstd")
        self._plain = SerialWorker("blob-write", depth=4)
        self._syncing = SerialWorker("blob-sync", depth=1)
        # In the order they are settled and closed: each feeds the next.
        self._workers = (self._unpacking, self._plain, self._syncing)
        self._start()

    def _start(self) -> None:
        self._verifier = BlobVerifier(self._entry, output=self._pass_on)
        self._out.seek(0)
        self._out.truncate()
        self._unsynced = 0
        self._writer = None
        if self._data_key is not None:
            self._writer = SegmentWriter(self._out, key=self._data_key, digest=self._entry.digest)

    async def write(self, chunks: list[bytes]) -> None:
        await self._unpacking.submit(self._unpack, chunks)

    async def reset(self) -> None:
        # What was fed so far is dropped, so are its failures.
        for worker in self._workers:
            await worker.settle()
        await asyncio.to_thread(self._start)

    async def finish(self) -> None:
        """Check every signed size and digest, then fsync the staged file.

        Raises:
            RepositoryError: The bytes break a signed size or digest.
        """
        for worker in self._workers:
            await worker.wait()
        await asyncio.to_thread(self._seal)

    async def close(self) -> None:
        for worker in self._workers:
            await worker.close()
        await asyncio.to_thread(self._out.close)

    def _unpack(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self._verifier.unpack(chunk)

    def _pass_on(self, data: bytes) -> None:
        """The verifier's output, in the unzstd thread: on to the writing thread."""
        self._plain.put(self._write, data)

    def _write(self, data: bytes) -> None:
        self._verifier.hash_plain(data)
        if self._writer is None:
            self._out.write(data)
        else:
            self._writer.write(data)
        self._unsynced += len(data)
        if self._unsynced >= _SYNC_EVERY:
            # Written out as it goes, so that the one fsync that counts, in finish(), has
            # little left to do; by a thread of its own, so that this one never waits for
            # the disk (while one runs, the next is left to the next threshold).
            self._out.flush()
            if self._syncing.offer(os.fdatasync, self._out.fileno()):
                self._unsynced = 0

    def _seal(self) -> None:
        self._verifier.finish()
        if self._writer is not None:
            self._writer.finish()
        self._out.flush()
        os.fsync(self._out.fileno())


def _create(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), "wb")
