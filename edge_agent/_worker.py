"""A worker thread that runs jobs in order, so disk and CPU work overlap the network.

A download hands each batch of bytes to such workers (the part file, decompression)
and goes back to receiving while they run; the decompressing thread hands its output
to another (hash and staged file), which hands write-back to a third. The thread
takes the next job as soon as one ends and wakes the event loop only when the loop
waits for it (the queue is full, or it asked for every job to end): a batch costs
the loop no round trip, which matters when a download is a few hundred of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["SerialWorker"]

T = TypeVar("T")

_Job = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...]]


class SerialWorker:
    """Runs jobs in a thread of its own, one at a time and in the order given.

    Up to ``depth`` jobs may be queued or running: :meth:`submit` waits once that
    many are (so a slow worker slows its producer down). A job's exception is raised
    by a later :meth:`submit` or by :meth:`wait`, once; the jobs after it still run.
    Call :meth:`close` when done.

    Args:
        name: Names the thread.
        depth: The most jobs queued or running at once.
    """

    def __init__(self, name: str, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._depth = depth
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # a job was queued, or closing
        self._room = threading.Condition(self._lock)  # a job ended, or closing
        self._jobs: deque[_Job] = deque()
        self._pending = 0  # queued or running
        self._error: BaseException | None = None
        self._closing = False
        # The loop's waits: each resolved by the thread once at most `limit` jobs are pending.
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)``, first waiting while ``depth`` jobs are queued or running.

        Returns:
            The job's future (a :class:`concurrent.futures.Future`), for its result.
        """
        await self._until(self._depth - 1)
        self._raise_error()
        job: Future[T] = Future()
        with self._lock:
            if self._closing:
                raise RuntimeError("submit after close")
            self._enqueue(job, fn, args)
        return job

    def put(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` from another thread (not the event loop's), blocking while
        ``depth`` jobs are queued or running. Its outcome goes where :meth:`submit`'s do.
        """
        with self._lock:
            while self._pending >= self._depth and not self._closing:
                self._room.wait()
            if self._closing:
                raise RuntimeError("put after close")
            self._enqueue(Future(), fn, args)

    def offer(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Queue ``fn(*args)`` from any thread if fewer than ``depth`` jobs are queued or
        running; never blocks. Returns whether it was queued."""
        with self._lock:
            if self._pending >= self._depth or self._closing:
                return False
            self._enqueue(Future(), fn, args)
            return True

    def _enqueue(self, job: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Queue a job (the lock held)."""
        self._jobs.append((job, fn, args))
        self._pending += 1
        self._ready.notify()

    async def wait(self) -> None:
        """Wait for every job; raise the first exception not raised yet."""
        await self._until(0)
        self._raise_error()

    async def settle(self) -> None:
        """Wait for every job, ignoring their outcome (to start again, or clean up)."""
        await self._until(0)
        with self._lock:
            self._error = None

    async def close(self) -> None:
        """Settle, then end the thread."""
        await self.settle()
        with self._lock:
            self._closing = True
            self._ready.notify()
            self._room.notify_all()

    def _raise_error(self) -> None:
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    async def _until(self, limit: int) -> None:
        """Return once at most ``limit`` jobs are queued or running."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._pending <= limit:
                    return
                waiter: asyncio.Future[None] = loop.create_future()
                entry = (limit, loop, waiter)
                self._waiters.append(entry)
            try:
                await waiter  # cancelling it leaves the jobs running, for close() to wait for
            finally:
                with self._lock:
                    if entry in self._waiters:
                        self._waiters.remove(entry)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._jobs and not self._closing:
                    self._ready.wait()
                if not self._jobs:
                    return
                job, fn, args = self._jobs.popleft()
            if job.set_running_or_notify_cancel():
                try:
                    job.set_result(fn(*args))
                except BaseException as e:  # handed to the loop, as an executor would
                    job.set_exception(e)
                    with self._lock:
                        if self._error is None:
                            self._error = e
            with self._lock:
                self._pending -= 1
                self._room.notify()
                if self._waiters:
                    due = [w for w in self._waiters if self._pending <= w[0]]
                    self._waiters = [w for w in self._waiters if self._pending > w[0]]
                    for _, loop, waiter in due:
                        with contextlib.suppress(RuntimeError):  # the loop is closed
                            loop.call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
