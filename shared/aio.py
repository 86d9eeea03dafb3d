"""Small asyncio helpers shared by central and the edge agent."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["wait_set"]


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
