"""The edge half of ``skiff quickstart``: a fleet, an enrolled device, a real agent.

The agent runs as its own process (``skiff edge run``), syncs from the quickstart's
central, answers an Open Inference Protocol request, then hot-swaps when the alias
moves and answers again with the new version.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import aiohttp

from central.cli.client import api_path
from central.cli.errors import CliError
from central.cli.localcentral import _child_env, free_port
from central.cli.output import table
from shared.tomlfile import render_toml

if TYPE_CHECKING:
    from central.cli.quickstart import Quickstart

FLEET = "demo-site"
DEVICE = "demo-device-1"
X = [1.0] * 6  # mul_1.onnx: Y = X * W, so Y shows the weights
WAIT_SECONDS = 30.0


class LocalAgent:
    """One ``skiff edge run`` child process."""

    def __init__(self, qs: Quickstart) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = qs.workdir / "edge.toml"
        self.log_path = qs.workdir / "edge.log"
        self._proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        cmd = [sys.executable, "-m", "shared.cli", "edge", "run", "--config", str(self.config)]
        self._proc = await asyncio.to_thread(self._spawn, cmd)

    def _spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                cmd,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    async def serving(self, model: str, version: str) -> dict[str, Any]:
        """Wait until the agent serves ``model`` at ``version``; its status."""
        deadline = time.monotonic() + WAIT_SECONDS
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while time.monotonic() < deadline:
                if self._proc is not None and self._proc.poll() is not None:
                    raise CliError(f"the edge agent exited\n{self.log_tail()}")
                try:
                    async with session.get(self.url + "/skiff/status") as resp:
                        status: dict[str, Any] = await resp.json()
                    if any(
                        s["model"] == model and s["serving"] == version for s in status["slots"]
                    ):
                        return status
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    pass
                await asyncio.sleep(0.2)
        raise CliError(
            f"the agent did not serve {model}@{version} in {WAIT_SECONDS:.0f} s\n{self.log_tail()}"
        )

    async def infer(self, model: str) -> dict[str, Any]:
        body = {"inputs": [{"name": "X", "shape": [3, 2], "datatype": "FP32", "data": X}]}
        url = f"{self.url}/v2/models/{model}/infer"
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json=body) as resp,
        ):
            answer: dict[str, Any] = await resp.json()
            if resp.status != 200:
                raise CliError(f"inference failed ({resp.status}): {answer}")
            return answer


async def enroll(qs: Quickstart) -> None:
    from central.cli.quickstart import ALIAS, MODEL

    client = qs.api()
    await client.send_json("POST", api_path("fleets"), {"name": FLEET})
    await client.send_json("PUT", api_path("fleets", FLEET, "models", MODEL), {"alias": ALIAS})
    enrolled = await client.send_json(
        "POST", api_path("fleets", FLEET, "devices"), {"device": DEVICE}
    )
    agent = LocalAgent(qs)
    settings = {
        "central_url": qs.url,
        "device_id": DEVICE,
        "token": enrolled["token"],
        "fleet": FLEET,
        "trusted_root": json.dumps(enrolled["root"], separators=(",", ":")),
        "data_dir": str(qs.workdir / "edge-data"),
        "listen": f"127.0.0.1:{agent.port}",
        "sync_wait_seconds": 10.0,
    }
    await asyncio.to_thread(agent.config.write_text, render_toml(settings))
    await asyncio.to_thread(agent.config.chmod, 0o600)
    qs.agent = agent
    qs.show(f"fleet create {FLEET}", f"fleet {FLEET}: signed state serial 1, no models")
    qs.show(f"fleet assign {FLEET} {MODEL} --alias {ALIAS}", f"{FLEET} follows {MODEL}@{ALIAS}")
    qs.show(
        f"device enroll {DEVICE} --fleet {FLEET} -o {agent.config}",
        f"wrote {agent.config} (device token, trusted root, listen {agent.url})",
    )


async def start_agent(qs: Quickstart) -> None:
    from central.cli.quickstart import MODEL

    agent = _agent(qs)
    qs.cleanup.push_async_callback(agent.stop)
    started = time.monotonic()
    await agent.start()
    status = await agent.serving(MODEL, "1.0.0")
    rows = [(s["model"], s["serving"], s["previous"] or "-") for s in status["slots"]]
    qs.show(
        f"edge run --config {agent.config}   # then: skiff edge status --url {agent.url}",
        table(["MODEL", "SERVING", "PREVIOUS"], rows)
        + f"\n(synced, verified and loaded in {time.monotonic() - started:.1f} s)",
    )


async def infer_v1(qs: Quickstart) -> None:
    await _infer(qs, "1.0.0")


async def swap(qs: Quickstart) -> None:
    from central.cli.aliases import set_alias
    from central.cli.quickstart import ALIAS, MODEL

    started = time.monotonic()
    await set_alias(qs.api(), MODEL, ALIAS, "1.1.0")
    await _agent(qs).serving(MODEL, "1.1.0")
    qs.show(
        f"alias set {MODEL} {ALIAS} 1.1.0",
        f"the device hot-swapped to 1.1.0 in {time.monotonic() - started:.2f} s",
    )


async def infer_v2(qs: Quickstart) -> None:
    await _infer(qs, "1.1.0")


async def _infer(qs: Quickstart, expected: str) -> None:
    from central.cli.quickstart import MODEL

    answer = await _agent(qs).infer(MODEL)
    if answer.get("model_version") != expected:
        raise CliError(f"expected version {expected} to answer, got {answer.get('model_version')}")
    y = answer["outputs"][0]["data"]
    qs.out.text(
        f"$ curl -d '<X = ones(3, 2) as JSON>' {_agent(qs).url}/v2/models/{MODEL}/infer\n"
        f"answered by {MODEL}@{answer['model_version']}: Y = {y}\n"
    )


def _agent(qs: Quickstart) -> LocalAgent:
    if qs.agent is None:
        raise RuntimeError("the edge agent has not been set up")
    agent: LocalAgent = qs.agent
    return agent
