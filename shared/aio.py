"""Small asyncio helpers shared by central and the edge agent."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine
from typing import Any

from shared.errors import InvalidInputError

__all__ = ["EVENT_LOOP_ENV", "event_loop_factory", "loop_name", "run", "wait_set"]

EVENT_LOOP_ENV = "SKIFF_EVENT_LOOP"
"""``uvloop`` (the default where it is installed) or ``asyncio`` (the standard loop)."""


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The loop a service runs on: uvloop unless ``SKIFF_EVENT_LOOP=asyncio`` or not installed.

    uvloop runs the same asyncio code with its socket and callback handling in C
    (libuv); a server's time per request outside its handlers drops accordingly.

    Raises:
        InvalidInputError: ``SKIFF_EVENT_LOOP`` names neither loop, or names uvloop and it
            is not installed.
    """
    wanted = os.environ.get(EVENT_LOOP_ENV, "").strip().lower()
    if wanted not in ("", "uvloop", "asyncio"):
        raise InvalidInputError(f"{EVENT_LOOP_ENV} must be uvloop or asyncio, not {wanted!r}")
    if wanted == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if wanted == "uvloop":
            message = f"{EVENT_LOOP_ENV}=uvloop but uvloop is not installed"
            raise InvalidInputError(message) from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a service's ``main`` to completion on the loop ``event_loop_factory`` picks."""
    factory = event_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def loop_name() -> str:
    """The running event loop's kind, for start-up lines: ``uvloop`` or ``asyncio``."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


async def wait_set(event: asyncio.Event, seconds: float) -> bool:
    """Wait at most ``seconds`` for ``event``; return whether it is set.

    Built on ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11 the latter
    swallows a cancellation that arrives just as the event is set, and a background
    loop waiting that way would then never stop.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
