"""Two central processes on one registry, as behind a load balancer: each answers what
the other committed, and its own commits at once."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support import CentralProcess, api_ok, register, running_central


def _resolve(central: CentralProcess, model: str) -> str:
    return str(api_ok(central, "GET", f"/api/v1/models/{model}/aliases/production")["version"])


def _move(central: CentralProcess, model: str, version: str) -> None:
    path = f"/api/v1/models/{model}/aliases/production"
    api_ok(central, "PUT", path, json={"version": version})


def _wait_resolves(central: CentralProcess, model: str, version: str, within: float) -> float:
    start = time.monotonic()
    while (found := _resolve(central, model)) != version:
        assert time.monotonic() - start < within, f"{central} still resolves {found}"
        time.sleep(0.05)
    return time.monotonic() - start


def test_replicas_answer_each_others_alias_moves(tmp_path: Path) -> None:
    with running_central(tmp_path / "central", alias_cache_refresh_seconds=0.2) as first:
        second = CentralProcess(first.data_dir, first.token).start()
        try:
            register(first, "shared-model", "1.0.0")
            register(second, "shared-model", "1.1.0")
            _move(first, "shared-model", "1.0.0")
            _wait_resolves(second, "shared-model", "1.0.0", within=5)  # now in its cache

            for mover, other, version in ((first, second, "1.1.0"), (second, first, "1.0.0")):
                _move(mover, "shared-model", version)
                assert _resolve(mover, "shared-model") == version  # its own move, at once
                _wait_resolves(other, "shared-model", version, within=5)

            history = api_ok(
                second, "GET", "/api/v1/models/shared-model/aliases/production/history"
            )["items"]
            assert [h["version"] for h in history] == ["1.0.0", "1.1.0", "1.0.0"]
        finally:
            second.stop()
