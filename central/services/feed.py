"""The change feed: tells in-process listeners about every committed change, in order.

Changes committed by this process reach the listeners as the commit returns, without
reading them back; changes committed by other central replicas sharing the database
are picked up by polling the change log, so caches and long-polls stay right with
several replicas behind a load balancer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from central.domain import Change
from central.stores.sqlite import SqliteStore
from shared.aio import wait_set

logger = logging.getLogger(__name__)

Listener = Callable[[Change], None]
BATCH = 1000
COALESCE_SECONDS = 0.01  # the least time between two reads of the log in a burst


class ChangeFeed:
    """Reads the change log after ``last_seq`` and hands each change to the listeners."""

    def __init__(self, store: SqliteStore, *, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._listeners: list[Listener] = []
        self._poked = asyncio.Event()
        self.last_seq = 0

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def poke(self, committed: Sequence[Change] = ()) -> None:
        """This process committed ``committed``: hand them over, or read the log now.

        A commit that follows the last change handed over is passed on at once. After a
        gap (another replica's commit came between) the log is read now rather than at
        the next tick, in order. A commit that appended no change tells nobody anything.
        """
        if not committed:
            return
        if committed[0].seq == self.last_seq + 1:
            self._hand_over(committed)
        elif committed[0].seq > self.last_seq:
            self._poked.set()

    async def start(self) -> None:
        self.last_seq = await self._store.last_seq()
        self._store.on_commit = self.poke

    async def run(self) -> None:
        """Follow the change log until cancelled."""
        loop = asyncio.get_running_loop()
        last_read = float("-inf")
        while True:
            await wait_set(self._poked, self._interval)
            if self._poked.is_set():
                # Another replica's commit found after a quiet spell is read at once;
                # in a burst, reads come at most every COALESCE_SECONDS, each taking
                # all the commits since the last.
                delay = last_read + COALESCE_SECONDS - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            self._poked.clear()
            last_read = loop.time()
            try:
                await self.catch_up()
            except Exception:
                logger.exception("Reading the change log failed")

    async def catch_up(self) -> None:
        while True:
            changes = await self._store.list_changes(self.last_seq, BATCH)
            self._hand_over(changes)
            if len(changes) < BATCH:
                return

    def _hand_over(self, changes: Sequence[Change]) -> None:
        """Tell every listener about each change not handed over yet, in order."""
        for change in changes:
            if change.seq <= self.last_seq:  # read back while handed over at its commit
                continue
            self.last_seq = change.seq
            for listener in self._listeners:
                try:
                    listener(change)
                except Exception:  # the others are still told, and the commit stands
                    logger.exception("A change listener failed on change %d", change.seq)
