"""Fixtures of the end-to-end tests with real edge agents."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.edge_harness import Agent
from tests.support import CentralProcess, run_skiff, unique


@pytest.fixture
def fleet(central: CentralProcess, tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """Make enrolled agents of one fleet that follows ``production`` of the model ``m``."""
    name = unique("plant")
    run_skiff("fleet", "create", name, env=central.env)
    agents: list[Agent] = []

    def make(device: str | None = None, **settings: Any) -> Agent:
        device = device or unique("dev")
        config = tmp_path / f"{device}.toml"
        run_skiff(
            "device",
            "enroll",
            device,
            "--fleet",
            name,
            "-o",
            str(config),
            "--data-dir",
            str(tmp_path / device),
            env=central.env,
        )
        text = config.read_text()
        defaults = {
            "sync_wait_seconds": 2.0,
            "sync_backoff_initial_seconds": 0.2,
            "sync_backoff_max_seconds": 1.0,
            "report_interval_seconds": 1.0,
        }
        chosen = {**defaults, **settings}
        lines = [ln for ln in text.splitlines() if ln.split(" = ")[0] not in chosen]
        lines += [f"{key} = {json.dumps(value)}" for key, value in chosen.items()]
        config.write_text("\n".join(lines) + "\n")
        agent = Agent(config, tmp_path / f"{device}.log")
        agents.append(agent)
        return agent

    make.fleet = name  # type: ignore[attr-defined]
    yield make
    for agent in agents:
        if agent.proc is not None:
            agent.stop()
