"""A worker thread fed in order from the event loop, so disk and CPU work overlap the network.

A download hands each batch of bytes to a few such workers (the part file, the
compressed-side hash, decompression, the staged file) and goes back to receiving
while they run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["SerialWorker"]

T = TypeVar("T")


class SerialWorker:
    """Runs jobs in a thread of its own, one at a time and in the order given.

    Up to ``depth`` jobs may be queued or running: :meth:`submit` waits for the oldest
    once that many are (so a slow worker slows its producer down), and the thread
    starts the next job as soon as one ends, without waiting for the event loop. A
    job's exception is raised by a later :meth:`submit` or by :meth:`wait`. Call
    :meth:`close` when done.

    Args:
        name: Names the thread.
        depth: The most jobs queued or running at once.
    """

    def __init__(self, name: str, depth: int = 2) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._depth = depth
        self._jobs: deque[asyncio.Future[Any]] = deque()

    async def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)``, first waiting for the oldest job if ``depth`` are queued.

        Returns:
            The job's future, for its result.
        """
        while len(self._jobs) >= self._depth:
            await self._wait_oldest()
        job = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        self._jobs.append(job)
        return job

    async def wait(self) -> Any:
        """Wait for every job; return the last one's result or raise the first exception."""
        result = None
        while self._jobs:
            result = await self._wait_oldest()
        return result

    async def settle(self) -> None:
        """Wait for every job, ignoring their outcome (to start again, or clean up)."""
        while self._jobs:
            with contextlib.suppress(Exception):
                await self._wait_oldest()

    async def close(self) -> None:
        """Settle, then end the thread."""
        await self.settle()
        self._executor.shutdown(wait=False)

    async def _wait_oldest(self) -> Any:
        job = self._jobs[0]
        try:
            # Shielded, and forgotten only once done: a thread cannot be stopped, so a
            # cancelled caller leaves the job for close() to wait for.
            return await asyncio.shield(job)
        finally:
            if job.done():
                self._jobs.popleft()
