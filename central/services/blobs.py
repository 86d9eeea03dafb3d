"""Blob uploads and downloads.

An upload is streamed to a staging file while its SHA-256 is computed (over the
uncompressed bytes) and it is zstd-compressed; only a body whose digest matches the
name it was sent under is committed. CPU work on each chunk runs in a thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import BinaryIO

from central.domain import Actor, Blob
from central.services.permissions import READ, WRITE, require
from central.stores.blobs import LocalBlobStore
from central.stores.sqlite import SqliteStore
from shared.codec import BoundedDecompressor, StreamCompressor, decompress_file
from shared.digest import Hasher, parse_digest
from shared.errors import (
    ForbiddenError,
    FormatError,
    InvalidInputError,
    LengthError,
    NotFoundError,
    PayloadTooLargeError,
)
from shared.timeutil import format_time, utcnow

logger = logging.getLogger(__name__)


class _Ingest:
    """Hash, compress and write one upload (blocking; called from a thread)."""

    def __init__(self, out: BinaryIO, level: int, max_size: int, zstd_body: bool) -> None:
        self._out = out
        self._max = max_size
        self._raw = Hasher()
        self._z = Hasher()
        self._compressor = StreamCompressor(level)
        self._decompressor = BoundedDecompressor(max_size) if zstd_body else None

    def feed(self, chunk: bytes) -> None:
        try:
            raw = chunk if self._decompressor is None else self._decompressor.decompress(chunk)
        except LengthError as e:
            raise PayloadTooLargeError(f"blob exceeds the upload limit of {self._max} bytes") from e
        except FormatError as e:
            raise InvalidInputError(f"the zstd-encoded body is not valid: {e}") from e
        self._raw.update(raw)
        if self._raw.nbytes > self._max:
            raise PayloadTooLargeError(f"blob exceeds the upload limit of {self._max} bytes")
        self._write(self._compressor.compress(raw))

    def finish(self) -> tuple[str, int, str, int]:
        if self._decompressor is not None:
            try:
                self._decompressor.finish()
            except FormatError as e:
                raise InvalidInputError(f"the zstd-encoded body is truncated: {e}") from e
        self._write(self._compressor.flush())
        self._out.flush()
        return self._raw.digest, self._raw.nbytes, self._z.digest, self._z.nbytes

    def _write(self, data: bytes) -> None:
        if data:
            self._z.update(data)
            self._out.write(data)


@dataclass(frozen=True, slots=True)
class Download:
    """A blob's bytes to send: its file, for the kernel to send without copying, when
    the store keeps them as served; else a stream of chunks. The sender closes ``file``.
    """

    file: BinaryIO | None
    chunks: AsyncIterator[bytes] | None


class BlobService:
    """Stores and serves content-addressed blobs."""

    def __init__(
        self, store: SqliteStore, blobs: LocalBlobStore, *, level: int, max_upload: int
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._level = level
        self.max_upload = max_upload
        # Set by the app: raises unless a device's fleet state names the blob.
        self.device_access: Callable[[Actor, str], Awaitable[None]] | None = None
        # Set by the app: brings the search index, where blobs name their versions, up
        # to date with every commit so far.
        self.catch_up_index: Callable[[], Awaitable[object]] | None = None

    async def _may_read(self, actor: Actor, digest: str) -> None:
        if actor.role == "device" and self.device_access is not None:
            await self.device_access(actor, digest)
        else:
            require(actor, READ)
        if actor.models is not None:
            # a scoped token reads the blobs of its models, and those no version holds yet
            # (an upload it may be resuming)
            if self.catch_up_index is not None:
                await self.catch_up_index()
            models = await self._store.models_of_blob(digest)
            if models and not any(fnmatchcase(m, p) for m in models for p in actor.models):
                raise ForbiddenError(
                    f"token '{actor.name}' is not scoped to any model holding blob {digest}"
                )

    async def info(self, actor: Actor, digest: str) -> Blob:
        parse_digest(digest)
        await self._may_read(actor, digest)
        blob = await self._store.get_blob(digest)
        if blob is None:
            raise NotFoundError(f"blob {digest} is not stored")
        return blob

    async def put(
        self, actor: Actor, digest: str, body: AsyncIterator[bytes], *, zstd_body: bool = False
    ) -> tuple[Blob, bool]:
        """Store an upload under ``digest``; returns the record and whether it was new.

        Raises:
            InvalidInputError: the body does not hash to ``digest``.
            PayloadTooLargeError: the body is larger than the upload limit.
        """
        require(actor, WRITE)
        parse_digest(digest)
        existing = await self._store.get_blob(digest)
        if existing is not None and await self._blobs.exists(digest):
            return existing, False
        async with self._blobs.staging() as staged:
            blob = await self._receive(digest, body, staged, zstd_body)
            await self._blobs.commit(staged, blob)
        async with self._store.transaction() as tx:
            created = await tx.insert_blob(blob)
            if created:
                await tx.append_change("blob.stored", data={"digest": digest, "size": blob.size})
                await tx.append_audit(
                    actor=actor.name, role=actor.role, action="blob.put", target=digest
                )
        logger.info("Stored blob %s (%d bytes, %d compressed)", digest, blob.size, blob.zsize)
        return blob, True

    async def _receive(
        self, digest: str, body: AsyncIterator[bytes], staged: Path, zstd_body: bool
    ) -> Blob:
        f = await asyncio.to_thread(staged.open, "wb")
        try:
            ingest = _Ingest(f, self._level, self.max_upload, zstd_body)
            async for chunk in body:
                await asyncio.to_thread(ingest.feed, chunk)
            got, size, zdigest, zsize = await asyncio.to_thread(ingest.finish)
        finally:
            await asyncio.to_thread(f.close)
        if got != digest:
            raise InvalidInputError(f"digest mismatch: the body hashes to {got}, not {digest}")
        return Blob(digest, size, zdigest, zsize, format_time(utcnow()))

    async def open_download(
        self, actor: Actor, digest: str, start: int = 0, end: int | None = None
    ) -> Download:
        """The stored (compressed) bytes ``[start, end)`` of a blob, to send.

        Every download by a device is audited: what each device fetched is on record.
        """
        await self._start_download(actor, digest, start, end)
        stored = await self._blobs.open_stored(digest)
        if stored is not None:
            return Download(file=stored, chunks=None)
        return Download(file=None, chunks=self._blobs.read(digest, start, end))

    async def _start_download(self, actor: Actor, digest: str, start: int, end: int | None) -> None:
        await self._may_read(actor, digest)
        if actor.role == "device":
            span = {"start": start} if end is None else {"start": start, "end": end}
            async with self._store.transaction() as tx:
                await tx.append_audit(
                    actor=actor.name,
                    role=actor.role,
                    action="blob.download",
                    target=digest,
                    detail=span,
                )

    async def read_raw_to(self, digest: str, dst: Path, max_size: int) -> None:
        """Decompress a stored blob to ``dst`` (for validation), bounded by ``max_size``."""
        src = await self._blobs.open_plain(digest)
        try:
            await asyncio.to_thread(
                decompress_file, src, dst, expected_digest=digest, max_size=max_size
            )
        finally:
            await asyncio.to_thread(src.close)
