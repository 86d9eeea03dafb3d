"""Download one blob into a file, verifying it against its signed entry.

Reads at most the signed compressed size, decompresses with a bound of the
signed size while hashing, and checks both digests and sizes. The bytes are
written to the given temp path; the caller renames it into place only after
this returns, and removes it otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path
from typing import BinaryIO

from central.cli.client import RegistryClient
from central.cli.errors import CliError
from central.cli.output import Output
from shared.codec import BoundedDecompressor
from shared.digest import Hasher
from shared.errors import RepositoryError
from shared.manifest import FileEntry

__all__ = ["fetch_blob"]

CHUNK_SIZE = 1 << 20


class _Sink:
    """Compressed bytes in; verified-so-far uncompressed bytes out to a file."""

    def __init__(self, entry: FileEntry, out: BinaryIO) -> None:
        self.entry = entry
        self.packed = Hasher()
        self.raw = Hasher()
        self._decompressor = BoundedDecompressor(max_size=entry.size)
        self._out = out

    @property
    def remaining(self) -> int:
        return self.entry.zsize - self.packed.nbytes

    def feed(self, chunk: bytes) -> None:
        if self.packed.nbytes + len(chunk) > self.entry.zsize:
            raise RepositoryError(f"central sent more than the signed {self.entry.zsize} bytes")
        self.packed.update(chunk)
        data = self._decompressor.decompress(chunk)
        self.raw.update(data)
        self._out.write(data)

    def finish(self) -> None:
        entry = self.entry
        _expect("compressed size", entry.zsize, self.packed.nbytes)
        _expect("compressed digest", entry.zdigest, self.packed.digest)
        self._decompressor.finish()
        _expect("size", entry.size, self.raw.nbytes)
        _expect("digest", entry.digest, self.raw.digest)
        self._out.flush()


def _expect(what: str, expected: str | int, actual: str | int) -> None:
    same = (
        hmac.compare_digest(expected, actual)
        if isinstance(expected, str) and isinstance(actual, str)
        else expected == actual
    )
    if not same:
        raise RepositoryError(f"{what} mismatch: expected {expected}, got {actual}")


async def fetch_blob(client: RegistryClient, out: Output, entry: FileEntry, dest: Path) -> None:
    """Download ``entry``'s blob into ``dest`` and verify it.

    Raises:
        CliError: The download failed, or the bytes do not match ``entry`` (the
            message names the file and what mismatched). ``dest`` may then hold
            partial bytes: the caller removes it.
    """
    progress = out.progress(f"pull {entry.path}", entry.zsize)
    f = await asyncio.to_thread(dest.open, "wb")
    try:
        sink = _Sink(entry, f)
        async with client.open_blob(entry.digest) as resp:
            if (resp.content_length or 0) > entry.zsize:
                raise RepositoryError(
                    f"central offers {resp.content_length} compressed bytes, "
                    f"the signed size is {entry.zsize}"
                )
            # one byte beyond the signed size is enough to prove the excess
            while chunk := await resp.content.read(min(CHUNK_SIZE, sink.remaining + 1)):
                await asyncio.to_thread(sink.feed, chunk)
                progress.advance(len(chunk))
        await asyncio.to_thread(sink.finish)
    except RepositoryError as e:
        raise CliError(f"{entry.path} failed verification: {e}") from e
    finally:
        progress.close()
        f.close()
