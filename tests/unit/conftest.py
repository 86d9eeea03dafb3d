"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from central.stores.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An open registry store on a database file of its own."""
    s = SqliteStore(tmp_path / "registry.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()
