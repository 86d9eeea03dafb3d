"""The worker thread that downloads hand their disk and CPU work to."""

from __future__ import annotations

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
        assert await worker.wait() == 19
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
    with pytest.raises(ValueError, match="bad bytes"):
        await worker.wait()
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
