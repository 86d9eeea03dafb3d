"""Fixtures shared by every test: real central processes on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import CentralProcess, running_central


@pytest.fixture
def central(tmp_path: Path) -> Iterator[CentralProcess]:
    """A fresh central of its own, stopped at teardown."""
    with running_central(tmp_path / "central") as process:
        yield process


@pytest.fixture(scope="module")
def central_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralProcess]:
    """One central shared by the tests of a module; for read-mostly tests."""
    with running_central(tmp_path_factory.mktemp("central_module") / "central") as process:
        yield process
