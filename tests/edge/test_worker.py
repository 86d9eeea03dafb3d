"""The worker thread that downloads hand their disk and CPU work to."""

from __future__ import annotations

import asyncio
import threading

import pytest

from edge_agent._worker import SerialWorker


async def test_jobs_run_in_order_in_one_thread() -> None:
    worker = SerialWorker("test", depth=3)
    seen: list[tuple[int, int]] = []
    try:
        futures = [
            await worker.submit(lambda i=i: seen.append((i, threading.get_ident())) or i)
            for i in range(20)
        ]
        await worker.wait()
    finally:
        await worker.close()
    assert [i for i, _ in seen] == list(range(20))
    assert len({thread for _, thread in seen}) == 1
    assert threading.get_ident() not in {thread for _, thread in seen}
    assert [f.result() for f in futures] == list(range(20))


async def test_a_failed_job_is_raised_by_wait_and_close_ignores_it() -> None:
    worker = SerialWorker("test")

    def fail() -> None:
        raise ValueError("bad bytes")

    await worker.submit(fail)
    later = await worker.submit(lambda: "ran")
    with pytest.raises(ValueError, match="bad bytes"):
        await worker.wait()
    assert later.result() == "ran"  # the jobs after a failure still run
    await worker.wait()  # raised once
    await worker.submit(fail)
    await worker.close()


async def test_submit_waits_once_depth_jobs_are_queued() -> None:
    worker = SerialWorker("test", depth=1)
    release = threading.Event()
    try:
        first = await worker.submit(release.wait, 5)
        assert not first.done()
        release.set()
        await worker.submit(lambda: None)  # returns only once the first is done
        assert first.done()
    finally:
        await worker.close()


async def test_a_cancelled_wait_leaves_the_worker_usable() -> None:
    worker = SerialWorker("test", depth=1)
    release = threading.Event()
    try:
        first = await worker.submit(release.wait, 5)
        blocked = asyncio.ensure_future(worker.submit(lambda: "second"))
        await asyncio.sleep(0.05)
        assert not blocked.done()  # the queue is full
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        release.set()
        third = await worker.submit(lambda: "third")
        await worker.wait()
        assert first.result() is True
        assert third.result() == "third"
    finally:
        release.set()
        await worker.close()


async def test_offer_queues_only_while_there_is_room_and_never_blocks() -> None:
    worker = SerialWorker("test", depth=1)
    release = threading.Event()
    ran: list[str] = []
    try:
        assert worker.offer(release.wait, 5)
        assert not worker.offer(ran.append, "refused")  # full: refused at once
        release.set()
        await worker.wait()
        assert worker.offer(ran.append, "taken")
        await worker.wait()
    finally:
        release.set()
        await worker.close()
    assert ran == ["taken"]
    assert not worker.offer(ran.append, "closed")


async def test_every_waiting_coroutine_wakes() -> None:
    worker = SerialWorker("test", depth=1)
    release = threading.Event()
    try:
        await worker.submit(release.wait, 5)
        waits = [asyncio.ensure_future(worker.wait()) for _ in range(3)]
        queued = asyncio.ensure_future(worker.submit(lambda: "next"))
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in [*waits, queued])
        release.set()
        async with asyncio.timeout(5):
            await asyncio.gather(*waits)
            assert (await queued).result(5) == "next"
    finally:
        release.set()
        await worker.close()
