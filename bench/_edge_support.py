"""Pieces of the edge benchmark: processes, admin calls, ONNX models and the load client.

Everything listens on and talks to 127.0.0.1 only. Every wait is bounded, and every
process started here is stopped by the context manager that started it.

Run as a script, this module is the bare inference server of the baseline
(``python bench/_edge_support.py bare-infer --port P --model M``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # loopback only
START_TIMEOUT = 60.0  # seconds for a process to answer its health route
STOP_TIMEOUT = 15.0  # seconds between SIGTERM and SIGKILL
INIT_TIMEOUT = 60.0  # seconds for `skiff central init`
REQUEST_TIMEOUT = 300.0  # seconds for one admin request (a 100 MB upload included)
MB = 1_000_000
OPSET = 17
IR_VERSION = 8
ORT_MODEL = "mul_1.onnx"  # shipped in onnxruntime/datasets: Y = X * X, X float [3, 2]


class BenchError(Exception):
    """The benchmark could not run: a process failed, answered wrongly or was too slow."""


# processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def skiff_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.pop("NOTIFY_SOCKET", None)  # the children must not talk to our own service manager
    return env


def skiff_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "shared.cli", *args]


def _healthy(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class Process:
    """A child process serving HTTP on a loopback port, logging to a file."""

    def __init__(self, name: str, cmd: list[str], port: int, health: str, log: Path) -> None:
        self.name, self.cmd, self.port, self.health, self.log = name, cmd, port, health, log
        self.url = f"http://{HOST}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                env=skiff_env(),
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _healthy(self.port, self.health):
            code = self.proc.poll()
            if code is not None:
                raise BenchError(f"{self.name} exited {code} while starting\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} not healthy after {START_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # The agent writes every thread's stack to its log on SIGUSR2: where it hangs.
                proc.send_signal(signal.SIGUSR2)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(1)
                proc.kill()
                proc.wait()
                print(
                    f"{self.name} ignored SIGTERM for {STOP_TIMEOUT:.0f} s; killed\n"
                    f"{self.log_tail(8000)}",
                    file=sys.stderr,
                )
        self.exit_code = proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_bytes(self) -> int:
        """Resident set size from /proc/<pid>/status (VmRSS)."""
        status = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                value, unit = line.split()[1:3]
                if unit != "kB":
                    raise BenchError(f"unexpected VmRSS unit {unit!r}")
                return int(value) * 1024
        raise BenchError(f"no VmRSS in /proc/{self.pid}/status")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            text = self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return f"--- no {self.name} log"
        return f"--- {self.name} log (tail)\n{text}"


@contextlib.contextmanager
def started(process: Process) -> Iterator[Process]:
    """Start ``process``, stop it on exit (its log tail is printed if the block failed)."""
    try:
        process.start()
        yield process
    except BaseException:
        print(process.log_tail(), file=sys.stderr)
        raise
    finally:
        process.stop()


def central_init(data_dir: Path) -> str:
    """``skiff central init``; returns the admin token."""
    proc = subprocess.run(
        skiff_cmd("central", "init", "--data-dir", str(data_dir), "--json"),
        env=skiff_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=INIT_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"central init exited {proc.returncode}: {proc.stderr.strip()}")
    try:
        return str(json.loads(proc.stdout)["admin_token"])
    except (ValueError, KeyError) as e:
        raise BenchError(f"central init printed no admin_token: {proc.stdout!r}") from e


def _import_repo() -> None:
    """Make the repository's packages importable when the bench runs as a script."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def event_loop_name() -> str:
    """The event loop central, the agent and the bare server run on: uvloop or asyncio."""
    _import_repo()
    from shared.aio import event_loop_factory

    return event_loop_factory().__module__.partition(".")[0]


def central_process(data_dir: Path, log: Path) -> Process:
    port = free_port()
    cmd = skiff_cmd("central", "serve", "--data-dir", str(data_dir), "--listen", f"{HOST}:{port}")
    return Process("central", cmd, port, "/healthz", log)


def agent_process(work: Path, settings: dict[str, Any], log: Path) -> Process:
    """An edge agent with ``edge.toml`` written from ``settings`` (listen is added here)."""
    _import_repo()
    from edge_agent.config import render_toml

    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    config = work / "edge.toml"
    values = {**settings, "data_dir": str(work / "data"), "listen": f"{HOST}:{port}"}
    config.write_text(render_toml(values), encoding="utf-8")
    config.chmod(0o600)
    cmd = skiff_cmd("edge", "run", "--config", str(config))
    return Process(f"agent {settings['device_id']}", cmd, port, "/v2/health/live", log)


# the admin side of central


class Admin:
    """Admin calls to central over one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session = session
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(
        self, method: str, path: str, body: Any = None, expect: Sequence[int] = (200,)
    ) -> Any:
        async with self.session.request(
            method, self.base + path, json=body, headers=self.headers
        ) as resp:
            data = await resp.read()
        if resp.status not in expect:
            raise BenchError(f"{method} {path}: got {resp.status}: {data[:500]!r}")
        return json.loads(data) if data else None

    async def put_blob(self, payload: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        async with self.session.put(
            f"{self.base}/api/v1/blobs/{digest}", data=payload, headers=self.headers
        ) as resp:
            answer = await resp.read()
        if resp.status not in (200, 201):
            raise BenchError(f"PUT blob: got {resp.status}: {answer[:500]!r}")
        return digest

    async def register(self, model: str, version: str, payload: bytes) -> dict[str, Any]:
        """Upload an ONNX file and register it as ``model@version``; returns the version."""
        digest = await self.put_blob(payload)
        body = {"version": version, "files": [{"path": "model.onnx", "digest": digest}]}
        return dict(await self.call("POST", f"/api/v1/models/{model}/versions", body, (201,)))

    async def set_alias(self, model: str, version: str, alias: str = "production") -> None:
        await self.call("PUT", f"/api/v1/models/{model}/aliases/{alias}", {"version": version})

    async def fleet(self, name: str, models: Sequence[str]) -> None:
        await self.call("POST", "/api/v1/fleets", {"name": name}, (201,))
        for model in models:
            path = f"/api/v1/fleets/{name}/models/{model}"
            await self.call("PUT", path, {"alias": "production"})

    async def enroll(self, fleet: str, device: str) -> dict[str, Any]:
        body = {"device": device}
        return dict(await self.call("POST", f"/api/v1/fleets/{fleet}/devices", body, (201,)))


def edge_settings(central_url: str, fleet: str, enrolled: dict[str, Any]) -> dict[str, Any]:
    return {
        "central_url": central_url,
        "device_id": enrolled["device"],
        "token": enrolled["token"],
        "fleet": fleet,
        "trusted_root": json.dumps(enrolled["root"]),
        "sync_wait_seconds": 30.0,
        "report_interval_seconds": 30.0,
    }


async def serving(session: aiohttp.ClientSession, agent_url: str) -> dict[str, str | None]:
    """Model -> version served, from the agent's ``/skiff/status``."""
    async with session.get(agent_url + "/skiff/status") as resp:
        if resp.status != 200:
            raise BenchError(f"GET /skiff/status: got {resp.status}")
        body = await resp.json()
    return {slot["model"]: slot["serving"] for slot in body["slots"]}


async def wait_serving(
    session: aiohttp.ClientSession,
    agent_url: str,
    wanted: dict[str, str],
    *,
    within: float,
    interval: float = 0.01,
) -> float:
    """Poll ``/skiff/status`` until every model serves its wanted version; returns when."""
    deadline = time.monotonic() + within
    while True:
        now = await serving(session, agent_url)
        if all(now.get(model) == version for model, version in wanted.items()):
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise BenchError(f"agent serves {now} after {within:.0f} s, wanted {wanted}")
        await asyncio.sleep(interval)


# ONNX models


def _serialize(graph: Any) -> bytes:
    from onnx import checker, helper

    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="skiff-bench",
    )
    checker.check_model(model)
    return bytes(model.SerializeToString())


def weights_model(size_bytes: int, seed: int) -> bytes:
    """``Y = X * sum(W)``, X float [N, 1], W ~size_bytes of seeded random float32 in [0, 1).

    Random floats compress only a little, so zstd and the hashes do real work; the
    model uses every weight, so onnxruntime cannot drop it at load time.
    """
    from onnx import TensorProto, helper, numpy_helper

    count = max(1, size_bytes // 4)
    weights = np.random.default_rng(seed).random(count, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["W"], ["S"], keepdims=1),
            helper.make_node("Mul", ["X", "S"], ["Y"]),
        ],
        "weights",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(weights, name="W")],
    )
    return _serialize(graph)


def scale_model(scale: float) -> bytes:
    """``Y = X * scale``, X and Y float [N, 4]: a small model whose versions differ."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["X", "K"], ["Y"])],
        "scale",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(np.array([scale], dtype=np.float32), name="K")],
    )
    return _serialize(graph)


def ort_model_path() -> Path:
    import onnxruntime

    path = Path(onnxruntime.__file__).parent / "datasets" / ORT_MODEL
    if not path.is_file():
        raise BenchError(f"onnxruntime ships no {ORT_MODEL} at {path}")
    return path


def infer_body(shape: Sequence[int]) -> bytes:
    """An Open Inference Protocol request with one FP32 input ``X`` of ``shape``."""
    count = math.prod(shape)
    data = [round(0.5 + i, 3) for i in range(count)]
    body = {"inputs": [{"name": "X", "shape": list(shape), "datatype": "FP32", "data": data}]}
    return json.dumps(body).encode()


# the closed-loop load client


@dataclass
class LoadResult:
    """What one load run measured."""

    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    elapsed: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def fail(self, why: str) -> None:
        self.failed += 1
        self.errors[why] = self.errors.get(why, 0) + 1

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0


def merge(results: Sequence[LoadResult]) -> LoadResult:
    """Several load runs taken as one (their time windows added up)."""
    out = LoadResult()
    for r in results:
        out.ok += r.ok
        out.failed += r.failed
        out.latencies += r.latencies
        out.elapsed += r.elapsed
        for why, n in r.errors.items():
            out.errors[why] = out.errors.get(why, 0) + n
    return out


class CpuSteal:
    """The share of the CPUs' time a hypervisor gave to other guests, from now on.

    Read from ``/proc/stat`` (Linux). On a shared host it tells a run that had the CPUs
    to itself from one that did not: every timing figure moves with it.
    """

    def __init__(self) -> None:
        self._start = _steal_and_total()

    def percent(self) -> float | None:
        """Steal over all CPU time since construction; ``None`` where it cannot be read."""
        end = _steal_and_total()
        if self._start is None or end is None or end[1] <= self._start[1]:
            return None
        return 100 * (end[0] - self._start[0]) / (end[1] - self._start[1])


def _steal_and_total() -> tuple[int, int] | None:
    """(steal, total) ticks of all CPUs since boot, or ``None`` without ``/proc/stat``."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal [guest guest_nice]
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]
    return ticks[7], sum(ticks)


def steal_text(percent: float | None) -> str:
    """How a report states the steal it measured."""
    if percent is None:
        return "CPU steal: not measured (no /proc/stat)"
    return f"CPU steal during the run: {percent:.1f}% (time the hypervisor gave other guests)"


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of a non-empty sample."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


class _Conn:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes, limit: float) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, self.port), limit
            )
        assert self.reader is not None
        self.writer.write(raw)
        async with asyncio.timeout(limit):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length = None
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if length is None:
                raise BenchError("answer without Content-Length")
            body = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def closed_loop(
    port: int,
    path: str,
    body: bytes,
    *,
    connections: int,
    duration: float,
    max_requests: int,
    stop: asyncio.Event | None = None,
    request_timeout: float = 10.0,
) -> LoadResult:
    """``connections`` clients, each sending its next request when the last one answered.

    Runs for ``duration`` seconds, or until ``max_requests`` were sent, or until ``stop``
    is set, whichever comes first. A request fails on a non-200 answer, a transport error
    or no answer within ``request_timeout``; the connection is then opened again.
    """
    raw = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    result = LoadResult()
    sent = 0
    end = time.perf_counter() + duration

    async def client() -> None:
        nonlocal sent
        conn = _Conn(port)
        try:
            while sent < max_requests and time.perf_counter() < end:
                if stop is not None and stop.is_set():
                    return
                sent += 1
                start = time.perf_counter()
                try:
                    status, _answer = await conn.request(raw, request_timeout)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, BenchError) as e:
                    result.fail(type(e).__name__)
                    conn.close()
                    continue
                if status == 200:
                    result.ok += 1
                    result.latencies.append(time.perf_counter() - start)
                else:
                    result.fail(f"HTTP {status}")
        finally:
            conn.close()

    started_at = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    result.elapsed = time.perf_counter() - started_at
    return result


# the bare inference server (baseline of the inference figures)


def _bare_main(port: int, model: Path) -> None:
    """A bare aiohttp handler calling onnxruntime directly: parse, run, render.

    It runs on the event loop the agent runs on, so the ratio measures the agent's
    own work, not a faster loop.
    """
    import onnxruntime
    from aiohttp import web

    from shared.aio import event_loop_factory

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # as the agent's sessions
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]

    async def infer(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        feed = {
            item["name"]: np.asarray(item["data"], dtype=np.float32).reshape(item["shape"])
            for item in body["inputs"]
        }
        values = session.run(output_names, feed)
        outputs = [
            {"name": n, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()}
            for n, v in zip(output_names, values, strict=True)
        ]
        answer = {"model_name": request.match_info["name"], "outputs": outputs}
        return web.Response(body=json.dumps(answer).encode(), content_type="application/json")

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_get("/v2/health/live", live)
    loop = event_loop_factory()()
    web.run_app(app, host=HOST, port=port, access_log=None, print=None, loop=loop)


def bare_process(model: Path, log: Path) -> Process:
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "bare-infer", "--port", str(port)]
    cmd += ["--model", str(model)]
    return Process("bare server", cmd, port, "/v2/health/live", log)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bare inference server of the edge benchmark")
    parser.add_argument("command", choices=["bare-infer"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", type=Path, required=True)
    cli = parser.parse_args()
    _bare_main(cli.port, cli.model)
