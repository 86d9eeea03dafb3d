"""Local filesystem blob store: ``<root>/sha256/<2 hex>/<64 hex>.zst``.

New blobs are written to ``<root>/tmp/`` and renamed into place after fsync, so a
reader never sees a partial blob and a crash leaves only temp files, which
:meth:`LocalBlobStore.open` removes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

from central.domain import Blob
from shared.digest import parse_digest
from shared.errors import NotFoundError

logger = logging.getLogger(__name__)

CHUNK = 1 << 20


async def read_range(f: BinaryIO, start: int, end: int | None) -> AsyncIterator[bytes]:
    """Stream bytes ``[start, end)`` of an open file in chunks, off the loop; closes it."""
    try:
        await asyncio.to_thread(f.seek, start)
        remaining = None if end is None else end - start
        while remaining is None or remaining > 0:
            n = CHUNK if remaining is None else min(CHUNK, remaining)
            chunk = await asyncio.to_thread(f.read, n)
            if not chunk:
                break
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
    finally:
        await asyncio.to_thread(f.close)


class LocalBlobStore:
    """Blobs as files on one local filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"

    async def open(self) -> None:
        await asyncio.to_thread(self._prepare)

    def _prepare(self) -> None:
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        if self._tmp.exists():
            leftovers = list(self._tmp.iterdir())
            if leftovers:
                logger.info("Removing %d partial uploads left by an earlier stop", len(leftovers))
            shutil.rmtree(self._tmp)
        self._tmp.mkdir()

    async def close(self) -> None:
        return None

    def path(self, digest: str) -> Path:
        hexd = parse_digest(digest)
        return self.root / "sha256" / hexd[:2] / f"{hexd}.zst"

    @asynccontextmanager
    async def staging(self) -> AsyncIterator[Path]:
        staged = self._tmp / f"{uuid.uuid4().hex}.part"
        try:
            yield staged
        finally:
            staged.unlink(missing_ok=True)

    async def open_stored(self, digest: str) -> BinaryIO | None:
        """The blob's file itself: it holds the compressed bytes as served."""
        return await LocalBlobStore.open_plain(self, digest)

    async def commit(self, staged: Path, blob: Blob) -> None:
        await asyncio.to_thread(self._commit, staged, self.path(blob.digest))

    @staticmethod
    def _commit(staged: Path, final: Path) -> None:
        with staged.open("rb+") as f:
            os.fsync(f.fileno())
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def exists(self, digest: str) -> bool:
        return await asyncio.to_thread(self.path(digest).is_file)

    async def delete(self, digest: str) -> None:
        await asyncio.to_thread(self.path(digest).unlink, True)

    async def size(self, digest: str) -> int:
        try:
            return (await asyncio.to_thread(self.path(digest).stat)).st_size
        except FileNotFoundError as e:
            raise NotFoundError(f"blob {digest} is not stored") from e

    async def read(
        self, digest: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self.path(digest)
        try:
            f = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError as e:
            raise NotFoundError(f"blob {digest} is not stored") from e
        async for chunk in read_range(f, start, end):
            yield chunk

    async def read_all(self, digest: str) -> bytes:
        try:
            return await asyncio.to_thread(self.path(digest).read_bytes)
        except FileNotFoundError as e:
            raise NotFoundError(f"blob {digest} is not stored") from e

    async def open_plain(self, digest: str) -> BinaryIO:
        """The stored (compressed) bytes as a seekable file, for blocking readers in a thread."""
        try:
            return await asyncio.to_thread(self.path(digest).open, "rb")
        except FileNotFoundError as e:
            raise NotFoundError(f"blob {digest} is not stored") from e
