"""Fixtures of the edge tests that run real agents against the central simulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.simulator import AgentPool, CentralSimulator


@pytest.fixture
async def sim() -> AsyncIterator[CentralSimulator]:
    async with CentralSimulator() as simulator:
        yield simulator


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[AgentPool]:
    pool = AgentPool(tmp_path)
    try:
        yield pool
    finally:
        await pool.aclose()


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll a condition on the simulator's records, bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        await asyncio.sleep(0.05)
