"""A real agent with its cache encrypted at rest (``cache_key_file``) against a real central."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.edge_harness import Agent, point, setup_fleet, y_of
from tests.onnx_models import linear_model
from tests.support import CentralProcess, run_skiff, skiff_env


def serving(version: str) -> Callable[[dict[str, object]], bool]:
    return lambda s: any(x["serving"] == version for x in s["slots"])  # type: ignore[attr-defined]


def plaintext_copies(data_dir: Path, *models: bytes) -> list[str]:
    """Files under the agent's data directory holding any model's bytes in the clear."""
    found = []
    for path in data_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            content = path.read_bytes()
            found += [str(path) for m in models if m in content]
    return found


def gen_key(tmp_path: Path) -> Path:
    key = tmp_path / "device.key"
    run_skiff("edge", "gen-key", "-o", str(key), env=skiff_env())
    assert os.stat(key).st_mode & 0o777 == 0o600
    return key


def set_setting(agent: Agent, name: str, value: str | None) -> None:
    lines = [ln for ln in agent.config.read_text().splitlines() if ln.split(" = ")[0] != name]
    if value is not None:
        lines.append(f"{name} = {json.dumps(value)}")
    agent.config.write_text("\n".join(lines) + "\n")


def test_encrypted_agent_serves_keeps_no_plaintext_and_restarts_offline(
    central: CentralProcess, fleet: Callable[..., Agent], tmp_path: Path
) -> None:
    setup_fleet(central, fleet, "m")
    agent = fleet(cache_key_file=str(gen_key(tmp_path))).start()
    agent.wait_for(serving("1.0.0"), what="v1")
    assert y_of(agent.infer("m")) == pytest.approx(6.0)
    point(central, "m", "2.0.0")
    agent.wait_for(serving("2.0.0"), what="v2")
    assert y_of(agent.infer("m")) == pytest.approx(12.0)
    assert plaintext_copies(agent.data_dir, linear_model(1.0), linear_model(2.0)) == []
    assert not any((agent.data_dir / "models").iterdir())

    # restarted with central gone: serves from the encrypted cache
    central.stop()
    assert agent.stop() == 0
    started = time.monotonic()
    agent.start()
    agent.wait_for(serving("2.0.0"), what="the cached version")
    assert time.monotonic() - started < 15
    assert y_of(agent.infer("m")) == pytest.approx(12.0)
    assert agent.stop() == 0

    # without its key the agent refuses to start
    set_setting(agent, "cache_key_file", None)
    result = run_skiff("edge", "run", "--config", str(agent.config), env=skiff_env(), check=False)
    assert result.returncode == 1
    assert "is encrypted with device key" in result.stderr
    assert "cache_key_file" in result.stderr


def test_plain_cache_is_encrypted_when_a_key_is_set(
    central: CentralProcess, fleet: Callable[..., Agent], tmp_path: Path
) -> None:
    setup_fleet(central, fleet, "m")
    agent = fleet().start()
    agent.wait_for(serving("1.0.0"), what="v1")
    assert agent.stop() == 0
    assert plaintext_copies(agent.data_dir, linear_model(1.0))  # the plain layout

    set_setting(agent, "cache_key_file", str(gen_key(tmp_path)))
    agent.start()
    agent.wait_for(serving("1.0.0"), what="v1 from the encrypted cache")
    assert y_of(agent.infer("m")) == pytest.approx(6.0)
    assert plaintext_copies(agent.data_dir, linear_model(1.0)) == []


def test_group_readable_key_file_is_refused(
    central: CentralProcess, fleet: Callable[..., Agent], tmp_path: Path
) -> None:
    key = gen_key(tmp_path)
    os.chmod(key, 0o640)
    agent = fleet(cache_key_file=str(key))
    result = run_skiff("edge", "run", "--config", str(agent.config), env=skiff_env(), check=False)
    assert result.returncode == 1
    assert "accessible by group or others" in result.stderr
