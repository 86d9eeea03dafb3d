"""The search index of versions (facets, tags, metrics, description words, blobs) and
of the audit log (actor, action, time), in batches.

Registering a version writes only the version: each entry of a search table lands on
its own B-tree page, and writing those pages one registration at a time cost more
than the rest of the registration's writes together (an FTS5 insert alone writes a new
index segment per transaction). The indexer adds the versions registered since its
last run in one transaction shortly after they commit, by this replica or another, in
a database file of its own (``central.stores.sqlite_search``) whose write lock no
registration waits for. Every search first brings it up to date, so it sees every
version committed before it; so does every audit listing, for the audit rows.
"""

from __future__ import annotations

import asyncio
import logging

from central.domain import Change
from central.stores.sqlite import SqliteStore

logger = logging.getLogger(__name__)

# Seconds between a registration and the run that indexes it with all that followed: the
# more versions a run takes, the more of their entries share B-tree pages.
INDEX_DELAY = 1.0
BATCH = 1000  # versions (and as many audit rows) per indexing transaction


class SearchIndexer:
    """Adds new versions to the search tables, in batches."""

    def __init__(self, store: SqliteStore, *, delay: float = INDEX_DELAY) -> None:
        self._store = store
        self._delay = delay
        self._lock = asyncio.Lock()
        self._pending = asyncio.Event()
        self._pending.set()  # versions left unindexed by a stop are indexed at start
        self._indexed_through = (-1, -1)  # the last version and audit row ids indexed

    @property
    def versions_indexed(self) -> int:
        """The last version id indexed: after :meth:`catch_up`, every version so far."""
        return max(self._indexed_through[0], 0)

    def on_change(self, change: Change) -> None:
        # Most changes come with an audit row; a registration with a version too.
        self._pending.set()

    async def run(self) -> None:
        """Index registrations a moment after they commit, until cancelled."""
        while True:
            await self._pending.wait()
            await asyncio.sleep(self._delay)  # one run takes a whole burst
            self._pending.clear()
            try:
                await self.catch_up()
            except Exception:  # the next change, search or audit listing tries again
                logger.exception("Indexing versions and audit rows for search failed")

    async def catch_up(self) -> int:
        """Index every version and audit row committed so far; returns how many versions
        it went through.

        Costs one read when there is nothing to index.
        """
        last = await self._store.last_ids()
        if last[0] <= self._indexed_through[0] and last[1] <= self._indexed_through[1]:
            return 0
        async with self._lock:
            total = 0
            while True:
                # In the index's own file, on its own thread: registrations go on.
                done = await self._store.search.index(BATCH)
                total += done.versions
                self._indexed_through = (
                    max(self._indexed_through[0], done.versions_through),
                    max(self._indexed_through[1], done.audit_through),
                )
                if done.versions < BATCH and done.audit_rows < BATCH:
                    return total
