"""sd_notify for both daemons: READY, WATCHDOG and STOPPING, when systemd asks for them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket


def sd_notify(message: str) -> None:
    """Send ``message`` to systemd if it set ``NOTIFY_SOCKET``; otherwise do nothing."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.sendall(message.encode())


async def watchdog() -> None:
    """Ping the watchdog at half the interval systemd set (``WATCHDOG_USEC``), forever."""
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    if usec <= 0:
        return
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(usec / 2_000_000)
