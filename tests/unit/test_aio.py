"""shared.aio.wait_set: bounded waits on an event that never lose a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from shared.aio import wait_set


async def test_returns_true_once_set_and_false_on_timeout() -> None:
    event = asyncio.Event()
    assert await wait_set(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_set(event, 5) is True


async def test_a_cancellation_arriving_as_the_event_is_set_is_not_lost() -> None:
    # The race that asyncio.wait_for loses on Python 3.11: the event is set and the
    # waiting task is cancelled before it runs again. A loop built on it never stops.
    event = asyncio.Event()
    stopped = asyncio.Event()

    async def loop_until_cancelled() -> None:
        try:
            while True:
                await wait_set(event, 30)
                event.clear()
        finally:
            stopped.set()

    task = asyncio.create_task(loop_until_cancelled())
    await asyncio.sleep(0)  # the task now waits on the event
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert stopped.is_set()
