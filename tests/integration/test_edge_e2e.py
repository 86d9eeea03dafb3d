"""The whole loop with real processes: central, the skiff CLI and edge agents on loopback.

A fleet follows ``production``; moving the alias makes every agent hot-swap; agents
keep serving with central gone; a corrupted blob or a broken model never replaces
what is served; bundles reach an agent with no network; key rotations are followed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.onnx_models import IR_VERSION, OPSET, linear_model
from tests.support import (
    SKIFF,
    CentralProcess,
    api_ok,
    free_port,
    register,
    run_skiff,
    skiff_env,
    unique,
)

X = [[1.0, 1.0, 1.0]]  # linear_model(scale) answers 6 * scale


def nan_model() -> bytes:
    """Same signature as linear_model, but every weight is NaN, so every output is."""
    weights = np.full((3, 1), np.nan, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "nan",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(weights, name="W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return bytes(model.SerializeToString())


class Agent:
    """One real ``skiff edge run`` process."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> Agent:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *SKIFF,
                    "edge",
                    "run",
                    "--config",
                    str(self.config),
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    *extra,
                ],
                stdout=log,
                stderr=log,
                env=skiff_env(),
            )
        self.wait_for(lambda s: True, what="the agent to answer", timeout=30)
        return self

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:  # noqa: S310
            return json.loads(resp.read())

    def status(self) -> dict[str, Any]:
        return dict(self.get("/skiff/status"))

    def infer(self, model: str, x: list[list[float]] = X) -> dict[str, Any]:
        body = {
            "inputs": [
                {
                    "name": "X",
                    "shape": [len(x), 3],
                    "datatype": "FP32",
                    "data": [v for row in x for v in row],
                }
            ]
        }
        req = urllib.request.Request(  # noqa: S310
            f"{self.url}/v2/models/{model}/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return dict(json.loads(resp.read()))

    def serving(self, model: str) -> str | None:
        for slot in self.status()["slots"]:
            if slot["model"] == model:
                return str(slot["serving"]) if slot["serving"] else None
        return None

    def wait_for(
        self, check: Callable[[dict[str, Any]], bool], *, what: str, timeout: float = 20
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                last = self.status()
                if check(last):
                    return dict(last)
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError(
            f"timed out waiting for {what}; last status {last}\n{self.log.read_text()[-3000:]}"
        )


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


def _publish(central: CentralProcess, model: str, version: str, data: bytes) -> dict[str, Any]:
    return register(central, model, version, files={"model.onnx": data})


def _point(central: CentralProcess, model: str, version: str) -> None:
    api_ok(central, "PUT", f"/api/v1/models/{model}/aliases/production", json={"version": version})


def _setup(central: CentralProcess, fleet: Callable[..., Agent], model: str) -> None:
    _publish(central, model, "1.0.0", linear_model(1.0))
    _publish(central, model, "2.0.0", linear_model(2.0))
    _point(central, model, "1.0.0")
    run_skiff(
        "fleet",
        "assign",
        fleet.fleet,
        model,
        "--alias",
        "production",  # type: ignore[attr-defined]
        env=central.env,
    )


def _y(answer: dict[str, Any]) -> float:
    return float(answer["outputs"][0]["data"][0])


def test_enrolled_agent_serves_and_follows_the_alias(
    central: CentralProcess, fleet: Callable[..., Agent]
) -> None:
    _setup(central, fleet, "m")
    agent = fleet().start()
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="v1")
    assert _y(agent.infer("m")) == pytest.approx(6.0)
    _point(central, "m", "2.0.0")
    started = time.monotonic()
    agent.wait_for(lambda s: any(x["serving"] == "2.0.0" for x in s["slots"]), what="v2")
    assert time.monotonic() - started < 10
    assert _y(agent.infer("m")) == pytest.approx(12.0)
    # central shows what the device reported
    shown = json.loads(
        run_skiff(
            "fleet",
            "show",
            fleet.fleet,
            "--json",  # type: ignore[attr-defined]
            env=central.env,
        ).stdout
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reports = [d["report"] for d in shown["devices"] if d["report"]]
        if reports and reports[0]["serving"].get("m") == "2.0.0":
            break
        time.sleep(0.3)
        shown = api_ok(central, "GET", f"/api/v1/fleets/{fleet.fleet}")  # type: ignore[attr-defined]
    assert reports[0]["serving"] == {"m": "2.0.0"}
    assert reports[0]["previous"] == {"m": "1.0.0"}
    assert agent.stop() == 0


def test_twenty_swaps_under_load_drop_no_request(
    central: CentralProcess, fleet: Callable[..., Agent]
) -> None:
    _setup(central, fleet, "m")
    agent = fleet().start()
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="v1")
    failures: list[str] = []
    answers: set[float] = set()
    stop = threading.Event()

    def client() -> None:
        for _ in range(100_000):
            if stop.is_set():
                return
            try:
                answers.add(round(_y(agent.infer("m")), 3))
            except Exception as e:  # any failure is what this test is about
                failures.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            version = "2.0.0" if i % 2 == 0 else "1.0.0"
            _point(central, "m", version)
            agent.wait_for(
                lambda s, v=version: any(x["serving"] == v for x in s["slots"]),
                what=f"swap {i} to {version}",
            )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert answers == {6.0, 12.0}


def test_offline_first_keeps_serving_without_central(
    central: CentralProcess, fleet: Callable[..., Agent]
) -> None:
    _setup(central, fleet, "m")
    agent = fleet().start()
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="v1")
    central.stop()
    time.sleep(1.5)  # a few failed syncs
    assert _y(agent.infer("m")) == pytest.approx(6.0)
    status = agent.wait_for(lambda s: not s["connected"], what="the agent to notice")
    assert status["slots"][0]["serving"] == "1.0.0"
    # restarted with central still down: serves from its cache
    assert agent.stop() == 0
    started = time.monotonic()
    agent.start()
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="cache")
    assert time.monotonic() - started < 15
    assert _y(agent.infer("m")) == pytest.approx(6.0)
    # central comes back: the agent catches up by itself
    central.start()
    _point(central, "m", "2.0.0")
    agent.wait_for(
        lambda s: any(x["serving"] == "2.0.0" for x in s["slots"]), what="v2", timeout=30
    )


def test_corrupted_blob_on_central_is_rejected(
    central: CentralProcess, fleet: Callable[..., Agent]
) -> None:
    _setup(central, fleet, "m")
    agent = fleet().start()
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="v1")
    v3 = _publish(central, "m", "3.0.0", linear_model(3.0))
    digest = v3["files"][0]["digest"]
    stored = central.data_dir / "blobs" / "sha256" / digest[7:9] / f"{digest[7:]}.zst"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(stored, 0o600)
    stored.write_bytes(bytes(data))
    _point(central, "m", "3.0.0")
    status = agent.wait_for(
        lambda s: any("3.0.0" in e["where"] for e in s["errors"]),
        what="the corrupt blob to be rejected",
    )
    assert status["slots"][0]["serving"] == "1.0.0"
    assert _y(agent.infer("m")) == pytest.approx(6.0)
    assert not list((agent.config.parent / agent.config.stem / "blobs").rglob(digest[7:]))


def test_nan_model_is_rolled_back_locally_and_reported(
    central: CentralProcess, fleet: Callable[..., Agent], tmp_path: Path
) -> None:
    _publish(central, "m", "1.0.0", linear_model(1.0))
    _point(central, "m", "1.0.0")
    run_skiff("fleet", "assign", fleet.fleet, "m", env=central.env)  # type: ignore[attr-defined]
    agent = fleet().start()
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="v1")
    path = tmp_path / "nan.onnx"
    path.write_bytes(nan_model())
    run_skiff("push", "m", str(path), "--version", "1.2.0", env=central.env)
    _point(central, "m", "1.2.0")
    status = agent.wait_for(lambda s: s["slots"][0]["bad_versions"], what="a bad version")
    assert "1.2.0" in status["slots"][0]["bad_versions"]
    assert "not finite" in status["slots"][0]["bad_versions"]["1.2.0"]
    assert status["slots"][0]["serving"] == "1.0.0"
    assert _y(agent.infer("m")) == pytest.approx(6.0)
    deadline = time.monotonic() + 10
    reported: dict[str, Any] = {}
    while time.monotonic() < deadline and not reported:
        shown = api_ok(central, "GET", f"/api/v1/fleets/{fleet.fleet}")  # type: ignore[attr-defined]
        reported = (shown["devices"][0]["report"] or {}).get("bad_versions", {})
        time.sleep(0.3)
    assert "1.2.0" in reported.get("m", {})


def test_bundle_reaches_an_agent_without_network(
    central: CentralProcess, fleet: Callable[..., Agent], tmp_path: Path
) -> None:
    _setup(central, fleet, "m")
    # an agent whose central is unreachable: a closed port
    agent = fleet(central_url=f"http://127.0.0.1:{free_port()}")
    sideload = tmp_path / "usb"
    agent.start("--sideload-dir", str(sideload))
    assert agent.status()["slots"] == []
    bundle = tmp_path / "site.skiff"
    run_skiff(
        "bundle",
        "export",
        "--fleet",
        fleet.fleet,
        "-o",
        str(bundle),  # type: ignore[attr-defined]
        env=central.env,
    )
    (sideload / "site.skiff").write_bytes(bundle.read_bytes())
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="import")
    assert _y(agent.infer("m")) == pytest.approx(6.0)
    assert (sideload / "imported" / "site.skiff").exists()
    result = json.loads((sideload / "imported" / "site.skiff.result.json").read_text())
    assert result["outcome"] == "imported"
    # the same bundle again is nothing new; a tampered one is rejected
    data = bytearray(bundle.read_bytes())
    frame = data.rfind(b"\x28\xb5\x2f\xfd")  # the last blob member's zstd frame
    assert frame > 0
    data[frame + 40] ^= 0x01
    (sideload / "tampered.skiff").write_bytes(bytes(data))
    deadline = time.monotonic() + 20
    while not (sideload / "rejected" / "tampered.skiff").exists():
        assert time.monotonic() < deadline, agent.log.read_text()[-3000:]
        time.sleep(0.2)
    assert agent.serving("m") == "1.0.0"


def test_key_rotations_are_followed(central: CentralProcess, fleet: Callable[..., Agent]) -> None:
    _setup(central, fleet, "m")
    agent = fleet().start()
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="v1")
    run_skiff("keys", "rotate", "--role", "targets", env=central.env)
    run_skiff("keys", "rotate", "--role", "root", env=central.env)
    agent.wait_for(lambda s: s["root_version"] == 3, what="root version 3")
    _point(central, "m", "2.0.0")  # signed with the new targets key
    agent.wait_for(lambda s: any(x["serving"] == "2.0.0" for x in s["slots"]), what="v2")
    # and after a restart the rotated chain is still trusted
    assert agent.stop() == 0
    agent.start()
    status = agent.wait_for(
        lambda s: any(x["serving"] == "2.0.0" for x in s["slots"]), what="v2 from cache"
    )
    assert status["root_version"] == 3
    assert status["errors"] == []
