"""shared.aio: the event loop services run on; bounded waits that never lose a cancellation."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from shared.aio import EVENT_LOOP_ENV, event_loop_factory, loop_name, run, wait_set
from shared.errors import InvalidInputError


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


@pytest.mark.parametrize("value", ["", "uvloop", " UVLOOP "])
def test_uvloop_is_the_default_and_can_be_asked_for(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, value)
    assert event_loop_factory() is uvloop.new_event_loop


def test_the_standard_loop_can_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    assert event_loop_factory() is asyncio.new_event_loop

    seen: list[str] = []

    async def record() -> None:
        seen.append(loop_name())

    run(record())
    assert seen == ["asyncio"]


def test_an_unknown_loop_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "trio")
    with pytest.raises(InvalidInputError, match="SKIFF_EVENT_LOOP must be uvloop or asyncio"):
        event_loop_factory()
