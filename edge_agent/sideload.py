"""Sideload watcher: imports ``.skiff`` bundles dropped into a folder (removable media).

A bundle is read only once it is complete: its size and modification time must hold
still for a moment, and the tar must parse to the end. It is verified exactly like a
network sync (through :meth:`Agent.accept`), then moved to ``imported/`` or
``rejected/`` with a ``.result.json`` beside it saying what happened.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from watchfiles import awatch

from edge_agent.agent import Agent, BlobSource, Update
from edge_agent.downloads import import_blob
from shared.bundle import BundleReader, IncompleteBundleError
from shared.errors import FormatError, LengthError, RepositoryError, SkiffError
from shared.fleet import BlobVerifier
from shared.manifest import FileEntry
from shared.timeutil import format_time, utcnow

logger = logging.getLogger(__name__)

SUFFIX = ".skiff"
SETTLE_SECONDS = 1.0  # a file must hold still this long before it is read
MAX_SETTLE_CHECKS = 600
# An incomplete bundle (a copy that paused) is waited for; one that stays incomplete and
# unchanged this long is rejected.
INCOMPLETE_GRACE_SECONDS = 300.0


async def _settled(path: Path) -> bool:
    """Wait until ``path`` stops changing; False if it vanished."""
    last = None
    for _ in range(MAX_SETTLE_CHECKS):
        try:
            st = await asyncio.to_thread(path.stat)
        except FileNotFoundError:
            return False
        now = (st.st_size, st.st_mtime_ns)
        if now == last:
            return True
        last = now
        await asyncio.sleep(SETTLE_SECONDS)
    return False


def _blob_source(reader: BundleReader, agent: Agent, fallback: BlobSource | None) -> BlobSource:
    available = reader.blob_digests()

    async def fetch(entry: FileEntry) -> None:
        if entry.digest in available:

            def opener() -> BinaryIO:
                return reader.open_blob(entry.digest)[0]

            await import_blob(opener, agent.cache, entry)
        elif fallback is not None:
            await fallback(entry)
        else:
            raise RepositoryError(f"bundle lacks blob {entry.digest} ({entry.path})")

    return fetch


def verify_members(reader: BundleReader, entries: dict[str, FileEntry]) -> None:
    """Check every blob the bundle carries against the signed entry naming it (blocking).

    Even blobs the cache already holds are read, so a tampered bundle is reported as
    such rather than silently "imported"; a blob that no trusted manifest names is
    refused as well.

    Raises:
        RepositoryError: a blob is unnamed, too long, or does not match its entry.
    """
    for digest in sorted(reader.blob_digests()):
        entry = entries.get(digest)
        if entry is None:
            raise FormatError(f"bundle holds blob {digest}, which no trusted manifest names")
        f, size = reader.open_blob(digest)
        with f:
            if size != entry.zsize:
                raise LengthError(f"blob {digest}: expected {entry.zsize} bytes, got {size}")
            verifier = BlobVerifier(entry)
            while chunk := f.read(1 << 20):
                verifier.feed(chunk)
            verifier.finish()


def _documents(reader: BundleReader) -> Update:
    """The bundle's (untrusted) documents, read from the file."""
    return Update(reader.roots(), reader.fleet_state(), reader.manifests(), reader.metadata())


class Sideloader:
    """Watches one folder and imports the bundles that appear in it."""

    def __init__(
        self,
        folder: Path,
        agent: Agent,
        *,
        fallback: BlobSource | None = None,
        max_json_bytes: int = 16 * 1024**2,
    ) -> None:
        self.folder = folder
        self._agent = agent
        self._fallback = fallback
        self._max_json = max_json_bytes
        self.on_result: Callable[[Path, dict[str, Any]], None] | None = None
        self._incomplete: dict[Path, tuple[tuple[int, int], float]] = {}

    async def run(self, stop_event: asyncio.Event | None = None) -> None:
        """Import what is already there, then watch for new bundles until cancelled."""
        await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True)
        await self.scan()
        # rust_timeout: wake up now and then even without events, to revisit incomplete files
        async for _changes in awatch(
            self.folder,
            stop_event=stop_event,
            recursive=False,
            rust_timeout=5_000,
            yield_on_timeout=True,
        ):
            await self.scan()

    async def scan(self) -> None:
        names = await asyncio.to_thread(os.listdir, self.folder)
        for name in sorted(names):
            path = self.folder / name
            is_bundle = name.endswith(SUFFIX) and await asyncio.to_thread(path.is_file)
            if is_bundle and await _settled(path):
                await self.import_bundle(path)

    async def import_bundle(self, path: Path) -> dict[str, Any]:
        """Verify and install one bundle; move it aside with the result."""
        result: dict[str, Any] = {"bundle": path.name, "at": format_time(utcnow())}
        if await self._still_incomplete(path):
            return {"bundle": path.name, "outcome": "waiting"}
        try:
            reader = await asyncio.to_thread(BundleReader.open, path, max_json_bytes=self._max_json)
            try:
                update = await asyncio.to_thread(_documents, reader)  # file reads: off the loop
                state = await self._agent.accept(
                    update, _blob_source(reader, self._agent, self._fallback)
                )
                entries = await self._agent.trusted_entries()
                await asyncio.to_thread(verify_members, reader, entries)
            finally:
                await asyncio.to_thread(reader.close)
        except SkiffError as e:
            result.update(outcome="rejected", error=str(e), error_type=type(e).__name__)
            self._agent.record_error(f"sideload {path.name}", e)
        else:
            trusted = self._agent.trusted.fleet_state
            result.update(
                outcome="imported",
                fleet_serial=None if trusted is None else trusted.serial,
                new_state=state is not None,
            )
            logger.info("Imported bundle %s (fleet serial %s)", path.name, result["fleet_serial"])
        await asyncio.to_thread(self._move_aside, path, result)
        if self.on_result is not None:
            self.on_result(path, result)
        return result

    async def _still_incomplete(self, path: Path) -> bool:
        """Whether ``path`` is a bundle cut short that may still be growing."""
        try:
            reader = await asyncio.to_thread(BundleReader.open, path, max_json_bytes=self._max_json)
        except IncompleteBundleError as e:
            st = await asyncio.to_thread(path.stat)
            shape = (st.st_size, st.st_mtime_ns)
            seen = self._incomplete.get(path)
            now = asyncio.get_running_loop().time()
            if seen is None or seen[0] != shape:
                self._incomplete[path] = (shape, now)
                logger.info("Bundle %s is incomplete (%s); waiting for the copy", path.name, e)
                return True
            return now - seen[1] < INCOMPLETE_GRACE_SECONDS
        except SkiffError:
            pass  # import_bundle reports it
        else:
            await asyncio.to_thread(reader.close)
        self._incomplete.pop(path, None)
        return False

    def _move_aside(self, path: Path, result: dict[str, Any]) -> None:
        target_dir = self.folder / ("imported" if result["outcome"] == "imported" else "rejected")
        target_dir.mkdir(exist_ok=True)
        target = target_dir / path.name
        if target.exists():
            target = target_dir / f"{path.stem}-{utcnow().strftime('%Y%m%dT%H%M%S%f')}{SUFFIX}"
        shutil.move(str(path), target)
        target.with_name(target.name + ".result.json").write_text(
            json.dumps(result, indent=2) + "\n", encoding="utf-8"
        )
