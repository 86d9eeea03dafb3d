"""The interfaces services depend on, so other backends can be added without touching them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import BinaryIO, Protocol

from central.domain import Blob


class BlobStore(Protocol):
    """Content-addressed storage of zstd-compressed blobs, named by their raw SHA-256."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def staging(self) -> AbstractAsyncContextManager[Path]:
        """A private temp path to write a new blob into before :meth:`commit`."""
        ...

    async def commit(self, staged: Path, blob: Blob) -> None:
        """Make a fully written and verified staged file the blob's content (idempotent)."""
        ...

    async def exists(self, digest: str) -> bool: ...

    async def delete(self, digest: str) -> None: ...

    def read(self, digest: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream compressed bytes ``[start, end)`` of a blob."""
        ...

    async def read_all(self, digest: str) -> bytes:
        """The whole compressed blob (for small blobs only)."""
        ...

    async def open_plain(self, digest: str) -> BinaryIO:
        """The compressed bytes as a seekable file object, to read in a thread and close."""
        ...

    async def open_stored(self, digest: str) -> BinaryIO | None:
        """The file that holds exactly the compressed bytes, for the kernel to send as is.

        ``None`` when the bytes at rest are not the bytes served (e.g. encrypted): the
        caller then streams :meth:`read`. The caller closes the file.
        """
        ...
