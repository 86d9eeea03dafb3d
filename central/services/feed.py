"""The change feed: tells in-process listeners about every committed change, in order.

Changes committed by this process poke the feed at once; changes committed by other
central replicas sharing the database are picked up by polling the change log, so
caches and long-polls stay right with several replicas behind a load balancer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

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

    def poke(self) -> None:
        """Something was committed: read the log now rather than at the next tick."""
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
                # A commit after a quiet spell is read at once (an alias move reaches
                # long-polling devices without delay); in a burst, reads come at most
                # every COALESCE_SECONDS, each taking all the commits since the last.
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
            for change in changes:
                self.last_seq = change.seq
                for listener in self._listeners:
                    listener(change)
            if len(changes) < BATCH:
                return
