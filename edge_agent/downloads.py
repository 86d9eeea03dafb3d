"""Fetch or import one blob into the cache through the bounded, verifying writer.

Both paths, network and bundle, stream the compressed bytes through
:class:`shared.fleet.BlobVerifier` into a staged file next to the blob store;
only a blob that matches every signed size and digest is moved into the cache.
A download is verified as it arrives: each batch goes to the verifier, whose
decompression and output hash run in worker threads while the next bytes arrive.

A download resumes where it stopped. Blobs are sequences of independent zstd
frames: as each frame's output is written to the staged file and on disk, the
offsets of its end are recorded beside it, and a resumed download truncates the
staged file there, hashes what it keeps and asks central for the compressed bytes
from that frame's end on (``Range``). A blob of one frame (as earlier versions wrote
them) has no such point: its compressed bytes go to a part file, which a resumed
download replays instead. Nothing a partial download left is trusted: the verifier's
checks cover the whole blob whatever was resumed.

A verification failure leaves nothing behind: the partial download and the
staged file are deleted and the ``RepositoryError`` is raised. A transport
failure keeps them for the next attempt to resume, unless the cache is
encrypted: then the staged file is written encrypted as it is verified, nothing
is kept for resuming, and no compressed bytes are written to disk at all
(docs/encryption.md, "Edge cache").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

import zstandard

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
_HEADER_MAX = 18  # bytes of a zstd frame header, at most


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
        resumable = not cache.encrypted
        if resumable:
            staged, mark = cache.resume_paths(entry.digest)
        else:
            staged, mark = cache.staging_path(entry.digest), None
        validator = etag if etag is not None else f'"{parse_digest(entry.zdigest)}"'
        data_key = new_key() if cache.encrypted else None
        sink = await _StagedBlob.open(entry, staged, mark, data_key)
        keep = False  # what a partial download left, for the next attempt
        try:
            try:
                start = sink.resume_at[0]
                if start:
                    logger.info(
                        "Resuming blob %s (%s) at byte %d of %d",
                        entry.digest,
                        entry.path,
                        start,
                        entry.zsize,
                    )
                await fetcher.download_to(
                    f"/api/v1/blobs/{entry.digest}",
                    part,
                    max_length=entry.zsize,
                    etag=validator,
                    progress=progress,
                    sink=sink,
                    start=start,
                )
                # Every byte is in the verifier now: the part file is no longer needed.
                await asyncio.gather(sink.finish(), asyncio.to_thread(part.unlink, missing_ok=True))
            finally:
                await sink.close()
            await cache.add_blob_from(staged, entry.digest, entry.size, data_key=data_key)
        except RepositoryError as e:
            logger.warning("Blob %s (%s) failed verification: %s", entry.digest, entry.path, e)
            raise
        except BaseException:  # the transport failed, or the agent stops: resume later
            keep = resumable
            raise
        finally:
            if not keep:
                await asyncio.to_thread(_remove_partial, part, staged, mark)
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
    file back to disk as it grows and then, for a download kept for resuming, records
    in the resume mark the last frame end whose output is on disk. What the staged
    file holds is untrusted until :meth:`finish` returns.
    """

    def __init__(
        self,
        entry: FileEntry,
        out: BinaryIO,
        mark: Path | None,
        data_key: bytes | None,
        resume_at: tuple[int, int],
    ) -> None:
        self._entry = entry
        self._out = out
        self._mark = mark
        self._data_key = data_key
        self.resume_at = resume_at
        self._unpacking = SerialWorker("blob-unzstd")
        self._plain = SerialWorker("blob-write", depth=4)
        self._syncing = SerialWorker("blob-sync", depth=1)
        # In the order they are settled and closed: each feeds the next.
        self._workers = (self._unpacking, self._plain, self._syncing)
        self._start()

    @classmethod
    async def open(
        cls, entry: FileEntry, staged: Path, mark: Path | None, data_key: bytes | None
    ) -> _StagedBlob:
        """The sink of a download into ``staged``, resumed where ``mark`` says if it can be."""
        out, resume_at = await asyncio.to_thread(_open_staged, staged, mark, entry)
        sink = cls(entry, out, mark, data_key, resume_at)
        if resume_at[1]:
            try:
                await asyncio.to_thread(sink._hash_kept)
            except OSError as e:  # what was kept cannot be read back: start over
                logger.warning("Restarting blob %s from byte 0: %s", entry.digest, e)
                await sink.reset()
            except BaseException:
                await sink.close()
                raise
        return sink

    def _start(self) -> None:
        resumed = self.resume_at != (0, 0)
        self._verifier = BlobVerifier(
            self._entry,
            output=self._pass_on,
            frame_end=None if self._mark is None else self._frame_end,
            resume_at=self.resume_at,
        )
        if not resumed:
            self._out.seek(0)
            self._out.truncate()
        self._unsynced = 0
        self._reached: tuple[int, int] | None = None  # last frame end written (write thread)
        self._recorded = self.resume_at  # last frame end in the mark (sync thread)
        # The part file is needed until a frame end is recorded; never when nothing is
        # kept for resuming.
        self.part_wanted = self._mark is not None and not resumed
        self._seen_header = False
        self._writer = None
        if self._data_key is not None:
            self._writer = SegmentWriter(self._out, key=self._data_key, digest=self._entry.digest)

    def _hash_kept(self) -> None:
        """Hash what the staged file kept from the last attempt, before anything new."""
        fd, left, offset = self._out.fileno(), self.resume_at[1], 0
        while left > 0:
            data = os.pread(fd, min(_CHUNK, left), offset)
            if not data:
                raise OSError(f"staged file of {self._entry.digest} ended early")
            self._verifier.hash_plain(data)
            left -= len(data)
            offset += len(data)

    async def write(self, chunks: list[bytes]) -> None:
        if self.part_wanted and not self._seen_header:
            self._seen_header = True
            # A first frame holding less than the blob means frames to resume from: the
            # part file would only ever cover the first, which is quicker to fetch again.
            with contextlib.suppress(zstandard.ZstdError):
                first = zstandard.frame_content_size(chunks[0][:_HEADER_MAX])
                if 0 <= first < self._entry.size:
                    self.part_wanted = False
        await self._unpacking.submit(self._unpack, chunks)

    async def reset(self) -> None:
        # What was fed so far is dropped, so are its failures.
        for worker in self._workers:
            await worker.settle()
        self.resume_at = (0, 0)
        await asyncio.to_thread(self._restart)

    def _restart(self) -> None:
        if self._mark is not None:
            self._mark.unlink(missing_ok=True)
        self._start()

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

    def _frame_end(self, compressed: int, plain: int) -> None:
        """A frame ended, in the unzstd thread: after its output, on to the writing thread."""
        self._plain.put(self._frame_written, compressed, plain)

    def _frame_written(self, compressed: int, plain: int) -> None:
        self._reached = (compressed, plain)

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
            if self._syncing.offer(self._sync, self._out.fileno(), self._reached):
                self._unsynced = 0

    def _sync(self, fd: int, reached: tuple[int, int] | None) -> None:
        """Write the staged file back; then the frame end it reaches is one to resume from."""
        os.fdatasync(fd)
        if self._mark is not None and reached is not None and reached != self._recorded:
            _write_mark(self._mark, self._entry, reached)
            self._recorded = reached
            self.part_wanted = False

    def _seal(self) -> None:
        self._verifier.finish()
        if self._writer is not None:
            self._writer.finish()
        self._out.flush()
        os.fsync(self._out.fileno())


def _open_staged(
    staged: Path, mark: Path | None, entry: FileEntry
) -> tuple[BinaryIO, tuple[int, int]]:
    """Open (or create) the staged file; returns it and the point to resume from.

    The staged file is cut back to the frame end the mark records; without a usable
    mark (or one past what the file holds) the download starts from byte 0.
    """
    staged.parent.mkdir(parents=True, exist_ok=True)
    out = os.fdopen(os.open(staged, os.O_CREAT | os.O_RDWR, 0o644), "r+b")
    try:
        point = _read_mark(mark, entry) if mark is not None else None
        if point is None or point[1] > os.fstat(out.fileno()).st_size:
            point = (0, 0)
        out.truncate(point[1])
        out.seek(point[1])
    except BaseException:
        out.close()
        raise
    return out, point


def _read_mark(mark: Path, entry: FileEntry) -> tuple[int, int] | None:
    """The frame end a resume mark records, if it is one of this blob's compressed form."""
    try:
        doc = json.loads(mark.read_bytes())
        point = (doc["compressed"], doc["plain"])
        valid = (
            doc["zdigest"] == entry.zdigest
            and all(type(v) is int for v in point)
            and 0 < point[0] <= entry.zsize
            and 0 < point[1] <= entry.size
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("Ignoring the resume mark %s: %s", mark, e)
        return None
    if not valid:
        logger.warning("Ignoring the resume mark %s: it does not fit %s", mark, entry.digest)
        return None
    return point


def _write_mark(mark: Path, entry: FileEntry, point: tuple[int, int]) -> None:
    """Record ``point`` in ``mark``: replaced whole, so a crash leaves the old or the new."""
    doc = {"zdigest": entry.zdigest, "compressed": point[0], "plain": point[1]}
    tmp = _mark_tmp(mark)
    tmp.write_bytes(json.dumps(doc).encode())
    os.replace(tmp, mark)


def _mark_tmp(mark: Path) -> Path:
    return mark.with_name(mark.name + ".tmp")


def _remove_partial(part: Path, staged: Path, mark: Path | None) -> None:
    for path in (part, staged, *(() if mark is None else (mark, _mark_tmp(mark)))):
        path.unlink(missing_ok=True)
