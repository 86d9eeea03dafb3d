"""The full-text index of version descriptions, kept up to date beside the write path.

Registering a version does not touch the index: an FTS5 insert writes a new index
segment in every transaction, which cost a registration more than all of its other
indexes together. The indexer adds the versions registered since its last run in one
transaction shortly after they commit, by this replica or another, and a search on
descriptions first brings it up to date, so it sees every version committed before it.
"""

from __future__ import annotations

import asyncio
import logging

from central.domain import Change
from central.stores.sqlite import SqliteStore

logger = logging.getLogger(__name__)

INDEX_DELAY = 0.2  # seconds between a registration and the run that indexes it (and its burst)
BATCH = 500  # versions per indexing transaction


class TextIndexer:
    """Adds new versions' descriptions to the full-text index, in batches."""

    def __init__(self, store: SqliteStore, *, delay: float = INDEX_DELAY) -> None:
        self._store = store
        self._delay = delay
        self._lock = asyncio.Lock()
        self._pending = asyncio.Event()
        self._pending.set()  # versions left unindexed by a stop are indexed at start

    def on_change(self, change: Change) -> None:
        if change.kind == "version.registered":
            self._pending.set()

    async def run(self) -> None:
        """Index registrations a moment after they commit, until cancelled."""
        while True:
            await self._pending.wait()
            await asyncio.sleep(self._delay)  # one run takes a whole burst
            self._pending.clear()
            try:
                await self.catch_up()
            except Exception:  # the next registration, or search, tries again
                logger.exception("Indexing version descriptions failed")

    async def catch_up(self) -> int:
        """Index every version committed so far; returns how many it went through."""
        async with self._lock:
            total = 0
            while True:
                # On the writer's thread: a batch of FTS inserts holds it for milliseconds.
                async with self._store.transaction(offload=True) as tx:
                    done = await tx.index_descriptions(BATCH)
                total += done
                if done < BATCH:
                    return total
