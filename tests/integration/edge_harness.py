"""A real edge agent process and the helpers the end-to-end tests share."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from shared.tomlfile import render_toml
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

    def settings(self) -> dict[str, Any]:
        return tomllib.loads(self.config.read_text())

    @property
    def device_id(self) -> str:
        return str(self.settings()["device_id"])

    @property
    def data_dir(self) -> Path:
        return Path(self.settings()["data_dir"])

    def device_token(self) -> str:
        return str(self.settings()["token"])

    def post(self, path: str, body: Any) -> dict[str, Any]:
        req = urllib.request.Request(  # noqa: S310
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return dict(json.loads(resp.read()))

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:  # noqa: S310
            return json.loads(resp.read())

    def status(self) -> dict[str, Any]:
        return dict(self.get("/skiff/status"))

    def infer(self, model: str, x: list[list[float]] = X) -> dict[str, Any]:
        return self.infer_with_headers(model, {}, x)

    def infer_with_headers(
        self, model: str, headers: dict[str, str], x: list[list[float]] = X
    ) -> dict[str, Any]:
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
            headers={"Content-Type": "application/json", **headers},
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


def publish(central: CentralProcess, model: str, version: str, data: bytes) -> dict[str, Any]:
    return register(central, model, version, files={"model.onnx": data})


def point(central: CentralProcess, model: str, version: str) -> None:
    api_ok(central, "PUT", f"/api/v1/models/{model}/aliases/production", json={"version": version})


def setup_fleet(central: CentralProcess, fleet: Callable[..., Agent], model: str) -> None:
    publish(central, model, "1.0.0", linear_model(1.0))
    publish(central, model, "2.0.0", linear_model(2.0))
    point(central, model, "1.0.0")
    run_skiff(
        "fleet",
        "assign",
        fleet.fleet,
        model,
        "--alias",
        "production",  # type: ignore[attr-defined]
        env=central.env,
    )


def y_of(answer: dict[str, Any]) -> float:
    return float(answer["outputs"][0]["data"][0])


AGENT_DEFAULTS: dict[str, Any] = {
    "sync_wait_seconds": 2.0,
    "sync_backoff_initial_seconds": 0.2,
    "sync_backoff_max_seconds": 1.0,
    "report_interval_seconds": 1.0,
}


def enroll_agent(
    central: CentralProcess, fleet: str, folder: Path, device: str | None = None, **settings: Any
) -> Agent:
    """Enroll a device through the API and write its edge.toml (not started)."""
    device = device or unique("dev")
    enrolled = api_ok(
        central, "POST", f"/api/v1/fleets/{fleet}/devices", 201, json={"device": device}
    )
    config = folder / f"{device}.toml"
    values = {
        "central_url": central.url,
        "device_id": device,
        "token": enrolled["token"],
        "fleet": fleet,
        "trusted_root": json.dumps(enrolled["root"]),
        "data_dir": str(folder / device),
        **AGENT_DEFAULTS,
        **settings,
    }
    config.write_text(render_toml(values))
    return Agent(config, folder / f"{device}.log")
