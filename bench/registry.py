"""Benchmark of a real central: register throughput, read latency and blob transfer rates.

Runs ``skiff central init`` and ``skiff central serve`` as a subprocess in a temporary
data directory on a free 127.0.0.1 port, drives it over HTTP with sequential requests on
one keep-alive connection (a small HTTP/1.1 client; blobs stream through aiohttp) and prints
figures. Timing is reported, never asserted: the product bars and the quoted MLflow
figures are printed beside each value for reading.

Usage (from the repository root)::

    .venv/bin/python bench/registry.py [--versions N] [--models M] [--blob-mb MB]
                                       [--samples S] [--seed K] [--json] [--keep DIR]

``bench/README.md`` says what each figure measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import http.client
import importlib.util
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from _edge_support import (
    BenchError,
    CpuSteal,
    event_loop_name,
    free_port,
    percentile,
    skiff_cmd,
    skiff_env,
    steal_text,
)
from aiohttp import web

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # loopback only: nothing here listens on or talks to another address
START_TIMEOUT = 30.0  # seconds for a new central to answer /healthz
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
INIT_TIMEOUT = 60.0  # seconds for `skiff central init`
MAX_HEAD_BYTES = 1 << 16  # an answer's status line and headers
REQUEST_TIMEOUT = 120.0  # seconds for one metadata request (a batch of 500 included)
BLOB_TIMEOUT = 600.0  # seconds for one blob transfer
BATCH_SIZE = 500  # versions per POST /api/v1/versions:batch
SINGLE_WINDOW = 1000  # single-request registrations per timed window (at most)
SINGLE_WINDOWS = 5  # windows; the median window's rate is the figure held to the bar
WARMUP = 20  # untimed requests before each query kind (the alias kinds add one per model)
ALIAS_SETTLE = 2.5  # seconds: central evicts moved aliases from its cache within 1 s by default
DOWNLOAD_REPEATS = 3  # downloads per server; the median is reported
CHUNK = 1 << 20  # bytes per read or write when streaming a blob
MB = 1_000_000  # bytes; every MB and MB/s figure uses this unit
TEAMS = 10  # values of the `team` tag: t0..t9
SHARDS = 100  # values of the `shard` tag: s00..s99
ALIAS = "production"
ONNX_FILE = "mul_1.onnx"  # a tiny model shipped in onnxruntime/datasets


# figures, bars and the quoted reference


@dataclass(frozen=True, slots=True)
class Bar:
    """A product target: ``value <op> limit``."""

    op: str  # "<" or ">="
    limit: float

    def met(self, value: float) -> bool:
        return value < self.limit if self.op == "<" else value >= self.limit

    def __str__(self) -> str:
        return f"{self.op} {self.limit:g}"


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    value: float
    unit: str


REGISTER_BAR = Bar(">=", 1000)
BARS: dict[str, Bar] = {
    "register_single_per_s": REGISTER_BAR,
    "register_batch_versions_per_s": REGISTER_BAR,
    "resolve_alias_p99_ms": Bar("<", 2),
    "search_tag_p99_ms": Bar("<", 10),
    "search_metric_p99_ms": Bar("<", 10),
}
# Quoted from the product spec for MLflow 3.17 on SQLite; this script does not run MLflow.
QUOTED_MLFLOW: dict[str, str] = {
    "register_single_per_s": "~150/s",
    "resolve_alias_p50_ms": "3.8 ms",
    "resolve_alias_p99_ms": "5.6 ms",
    "search_tag_p99_ms": "11.6 ms @ 2,000 versions",
    "search_metric_p99_ms": "11.6 ms @ 2,000 versions",
}


class Deadline:
    """A time limit shared by every loop of the run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def check(self, what: str) -> None:
        if time.monotonic() > self._end:
            raise BenchError(f"{what}: the run exceeded its time limit of {self.seconds:.0f} s")


def note(message: str) -> None:
    """Progress on stderr, so that stdout holds only the report."""
    print(f"bench: {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# the central process


class CentralProcess:
    """``skiff central serve`` on a free loopback port, logging to ``log_path``."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.token = ""
        self.exit_code: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def init(self) -> None:
        """Run ``skiff central init`` and keep the admin token it prints."""
        proc = subprocess.run(
            skiff_cmd("central", "init", "--data-dir", str(self.data_dir), "--json"),
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
            self.token = json.loads(proc.stdout)["admin_token"]
        except (ValueError, KeyError) as e:
            raise BenchError(f"central init printed no admin_token: {proc.stdout!r}") from e

    def start(self) -> None:
        """Start serving and wait, at most START_TIMEOUT, for ``/healthz``."""
        cmd = skiff_cmd("central", "serve", "--data-dir", str(self.data_dir))
        cmd += ["--listen", f"{HOST}:{self.port}"]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                env=skiff_env(),
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._healthy():
            code = self._proc.poll()
            if code is not None:
                raise BenchError(f"central exited {code} while starting\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"central not healthy after {START_TIMEOUT:.0f} s")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self) -> None:
        """SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self.exit_code = None if proc is None else proc.returncode
            return
        proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            self.exit_code = proc.wait()
            print(f"central ignored SIGTERM for {STOP_TIMEOUT:.0f} s; killed", file=sys.stderr)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return "--- central log (tail)\n" + self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "--- no central log"


@contextlib.contextmanager
def running_central(keep: Path | None) -> Iterator[CentralProcess]:
    """Init and start a central in ``keep`` or a temporary directory; stop it on exit."""
    with contextlib.ExitStack() as stack:
        if keep is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="skiff-bench-")))
            data_dir, log_path = work / "central", work / "central.log"
        else:
            data_dir, log_path = keep, keep.parent / f"{keep.name}.log"
        central = CentralProcess(data_dir, log_path)
        central.init()
        try:
            central.start()
            note(f"central serving {data_dir} at {central.url}")
            yield central
        except BaseException:
            print(central.log_tail(), file=sys.stderr)
            raise
        finally:
            central.stop()


# HTTP clients


class Client:
    """Metadata requests on one keep-alive HTTP/1.1 connection, one at a time.

    A sequential client adds its own time to every figure, so this one speaks just enough
    of the protocol (as the edge benchmark's load client does): the request is written in
    one ``sendall``, the answer read by its ``Content-Length`` or chunked encoding. Per
    registration it spends 40 to 60 µs of CPU where stdlib ``http.client`` spends 160 to
    220 and an aiohttp session 260 to 290, so more of each figure is central's.
    """

    def __init__(self, port: int, token: str) -> None:
        self._port = port
        self._head = f"Host: {HOST}:{port}\r\nAuthorization: Bearer {token}\r\n"
        self._sock: socket.socket | None = None
        self._buffer = b""

    def call(
        self, method: str, path: str, body: bytes | None = None, expect: Sequence[int] = (200,)
    ) -> bytes:
        """Send one request and read the whole answer; raise unless its status is expected."""
        if self._sock is None:
            self._sock = socket.create_connection((HOST, self._port), timeout=REQUEST_TIMEOUT)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buffer = b""
        head = f"{method} {path} HTTP/1.1\r\n{self._head}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        try:
            self._sock.sendall(head.encode() + b"\r\n" + (body or b""))
            status, headers = self._read_head()
            if method == "HEAD" or status in (204, 304):
                data = b""
            elif "content-length" in headers:
                data = self._read_exactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                data = self._read_chunked()
            else:
                raise BenchError(f"{method} {path}: answer has neither length nor chunks")
        except BaseException:
            self.close()  # the connection's state is unknown: the next call opens a new one
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        if status not in expect:
            raise BenchError(f"{method} {path}: got {status}: {data[:500]!r}")
        return data

    def _fill(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(1 << 16)
        if not chunk:
            raise BenchError("central closed the connection")
        self._buffer += chunk

    def _read_line_block(self, end_mark: bytes) -> bytes:
        while (end := self._buffer.find(end_mark)) < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise BenchError("answer head too large")
            self._fill()
        block, self._buffer = self._buffer[:end], self._buffer[end + len(end_mark) :]
        return block

    def _read_head(self) -> tuple[int, dict[str, str]]:
        lines = self._read_line_block(b"\r\n\r\n").decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise BenchError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def _read_exactly(self, length: int) -> bytes:
        while len(self._buffer) < length:
            self._fill()
        data, self._buffer = self._buffer[:length], self._buffer[length:]
        return data

    def _read_chunked(self) -> bytes:
        pieces = []
        while True:
            size = int(self._read_line_block(b"\r\n").split(b";", 1)[0], 16)
            if size == 0:
                while self._read_line_block(b"\r\n"):  # trailers, up to the empty line
                    pass
                return b"".join(pieces)
            pieces.append(self._read_exactly(size))
            self._read_exactly(2)  # the CRLF after the chunk

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None


class BlobClient:
    """Streamed blob transfers on one keep-alive aiohttp connection."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self._session = session
        self._base = base

    async def upload(self, path: str, payload: bytes) -> tuple[float, bytes]:
        """PUT ``payload`` as the raw body; returns the seconds taken and the answer."""
        start = time.perf_counter()
        async with self._session.put(self._base + path, data=payload) as resp:
            answer = await resp.read()
        elapsed = time.perf_counter() - start
        if resp.status not in (200, 201):
            raise BenchError(f"PUT {path}: got {resp.status}: {answer[:500]!r}")
        return elapsed, answer

    async def download(self, path: str, expected_bytes: int) -> float:
        """GET ``path``, discarding the body as it streams; returns the seconds taken."""
        start = time.perf_counter()
        received = 0
        async with self._session.get(self._base + path) as resp:
            if resp.status != 200:
                raise BenchError(f"GET {path}: got {resp.status}")
            async for chunk in resp.content.iter_chunked(CHUNK):
                received += len(chunk)
        elapsed = time.perf_counter() - start
        if received != expected_bytes:
            raise BenchError(f"GET {path}: expected {expected_bytes} bytes, got {received}")
        return elapsed


@contextlib.asynccontextmanager
async def connect_blobs(base: str, token: str | None) -> AsyncIterator[BlobClient]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(limit=1)  # one connection, reused by every request
    timeout = aiohttp.ClientTimeout(total=BLOB_TIMEOUT)
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=timeout
    ) as session:
        yield BlobClient(session, base)


# register phase


@dataclass(frozen=True, slots=True)
class Plan:
    versions: int
    models: int
    seed: int

    def model(self, i: int) -> str:
        return f"bench-{i % self.models:05d}"

    def version(self, i: int) -> str:
        return f"1.0.{i // self.models}"

    def latest(self, model_index: int) -> str:
        """The highest version registered for model ``model_index``."""
        return f"1.0.{(self.versions - 1 - model_index) // self.models}"


def onnx_model_bytes() -> bytes:
    """The small ONNX model that onnxruntime ships, found without importing onnxruntime."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("onnxruntime is not installed: its datasets/mul_1.onnx is the model")
    return (Path(next(iter(spec.submodule_search_locations))) / "datasets" / ONNX_FILE).read_bytes()


def version_bodies(plan: Plan, digest: str) -> Iterator[dict[str, Any]]:
    """Register bodies for versions 0..N-1, from one seeded generator (so reproducible)."""
    rng = random.Random(plan.seed)
    for i in range(plan.versions):
        team, shard = f"t{rng.randrange(TEAMS)}", f"s{rng.randrange(SHARDS):02d}"
        yield {
            "model": plan.model(i),
            "version": plan.version(i),
            "description": f"benchmark version {i} for team {team}, shard {shard}",
            "tags": {"team": team, "shard": shard},
            "files": [{"path": "model.onnx", "digest": digest}],
            "metadata": {"training": {"metrics": {"auc": round(rng.random(), 6)}}},
        }


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


REGISTER_ROUTE = "/api/v1/models/{model}/versions"  # its label in central's /metrics


def _register_one(client: Client, body: dict[str, Any]) -> None:
    single = {k: v for k, v in body.items() if k != "model"}
    client.call("POST", f"/api/v1/models/{body['model']}/versions", _encode(single), (201,))


def register_phase(client: Client, plan: Plan, deadline: Deadline, figures: list[Figure]) -> None:
    """Register N versions of one stored ONNX blob: first one, bulk in batches, single sample.

    The single-request sample comes last so that it writes into existing models in a
    registry already holding the bulk, as a CI pipeline registering one version would.
    It is timed in windows of about a second: the median window's rate is the figure, so
    that a second in which other work on the machine took the CPU does not decide it
    (the slowest and fastest windows are printed beside it).
    """
    model = onnx_model_bytes()
    digest = "sha256:" + hashlib.sha256(model).hexdigest()
    client.call("PUT", f"/api/v1/blobs/{digest}", model, (200, 201))
    bodies = version_bodies(plan, digest)
    n_single = min(SINGLE_WINDOW * SINGLE_WINDOWS, (plan.versions - 1) // 2)
    n_batch = plan.versions - 1 - n_single
    phase_start = time.perf_counter()
    note(f"registering {plan.versions:,} versions ({n_batch:,} in batches, {n_single:,} singly)")

    start = time.perf_counter()
    _register_one(client, next(bodies))  # the only one that loads the model in onnxruntime
    figures.append(Figure("register_first_ms", (time.perf_counter() - start) * 1000, "ms"))

    start = time.perf_counter()
    for first in range(0, n_batch, BATCH_SIZE):
        deadline.check("batch registration")
        chunk = [next(bodies) for _ in range(min(BATCH_SIZE, n_batch - first))]
        client.call("POST", "/api/v1/versions:batch", _encode({"versions": chunk}), (201,))
    batch_rate = n_batch / (time.perf_counter() - start)
    figures.append(Figure("register_batch_versions_per_s", batch_rate, "versions/s"))

    singles = list(bodies)
    size = -(-len(singles) // SINGLE_WINDOWS)  # ceiling: at most SINGLE_WINDOWS windows
    windows = [singles[i : i + size] for i in range(0, len(singles), size)]
    before = server_seconds(client, REGISTER_ROUTE, "POST")
    gc.collect()
    rates: list[float] = []
    single_start = time.perf_counter()
    for window in windows:
        start = time.perf_counter()
        for body in window:
            deadline.check("single registration")
            _register_one(client, body)
        rates.append(len(window) / (time.perf_counter() - start))
    overall = len(singles) / (time.perf_counter() - single_start)
    after = server_seconds(client, REGISTER_ROUTE, "POST")
    figures.append(Figure("register_single_per_s", statistics.median(rates), "versions/s"))
    figures.append(Figure("register_single_window_min_per_s", min(rates), "versions/s"))
    figures.append(Figure("register_single_window_max_per_s", max(rates), "versions/s"))
    figures.append(Figure("register_single_overall_per_s", overall, "versions/s"))
    counted = after[1] - before[1]
    if counted != len(singles):
        raise BenchError(f"/metrics counted {counted} registrations, not {len(singles)}")
    mean = (after[0] - before[0]) / len(singles) * 1000
    figures.append(Figure("register_single_server_mean_ms", mean, "ms"))
    figures.append(Figure("register_duration_s", time.perf_counter() - phase_start, "s"))


def set_aliases(client: Client, plan: Plan, deadline: Deadline, figures: list[Figure]) -> float:
    """Point ``production`` of every model at its latest version; returns when it finished."""
    note(f"setting alias {ALIAS} on {plan.models:,} models")
    start = time.perf_counter()
    for m in range(plan.models):
        deadline.check("setting aliases")
        body = _encode({"version": plan.latest(m)})
        client.call("PUT", f"/api/v1/models/{plan.model(m)}/aliases/{ALIAS}", body)
    rate = plan.models / (time.perf_counter() - start)
    figures.append(Figure("alias_set_per_s", rate, "aliases/s"))
    return time.monotonic()


# latency phase


def _search_path(filter_text: str, **params: str) -> str:
    query = urllib.parse.urlencode({"filter": filter_text, **params}, quote_via=urllib.parse.quote)
    return f"/api/v1/search?{query}"


def query_paths(plan: Plan, samples: int) -> dict[str, tuple[list[str], list[str]]]:
    """Per query kind: (warm-up paths, timed paths), drawn from a seeded generator."""
    rng = random.Random(plan.seed + 1)

    def paths(make: Callable[[], str], warmup: list[str]) -> tuple[list[str], list[str]]:
        return warmup + [make() for _ in range(WARMUP)], [make() for _ in range(samples)]

    def alias(path: str) -> Callable[[], str]:
        return lambda: path.format(plan.model(rng.randrange(plan.models)))

    def search(filter_text: Callable[[], str], **params: str) -> Callable[[], str]:
        return lambda: _search_path(filter_text(), limit="50", **params)

    alias_path = "/api/v1/models/{}/aliases/" + ALIAS
    # every model once first, so that the timed sample reads central's alias cache warm
    every_model = [alias_path.format(plan.model(m)) for m in range(plan.models)]
    return {
        "search_tag": paths(search(lambda: f"tags.shard = 's{rng.randrange(SHARDS):02d}'"), []),
        "search_metric": paths(
            search(
                lambda: f"metrics.auc > 0.9 and tags.team = 't{rng.randrange(TEAMS)}'",
                order_by="metrics.auc",
            ),
            [],
        ),
        "resolve_alias": paths(alias(alias_path), every_model),
        "resolve_version_by_alias": paths(alias("/api/v1/models/{}/versions/" + ALIAS), []),
    }


# the route label central's /metrics uses for each query kind
ROUTES = {
    "search_tag": "/api/v1/search",
    "search_metric": "/api/v1/search",
    "resolve_alias": "/api/v1/models/{model}/aliases/{alias}",
    "resolve_version_by_alias": "/api/v1/models/{model}/versions/{ref}",
}


def server_seconds(client: Client, route: str, method: str = "GET") -> tuple[float, int]:
    """Central's own time spent in, and count of, requests on ``route`` so far (/metrics)."""
    total, count = 0.0, 0
    for line in client.call("GET", "/metrics").decode().splitlines():
        name, _, value = line.rpartition(" ")
        if f'route="{route}"' not in name or f'method="{method}"' not in name:
            continue
        if name.startswith("skiff_http_request_seconds_sum{"):
            total = float(value)
        elif name.startswith("skiff_http_request_seconds_count{"):
            count = int(value)
    return total, count


def time_requests(
    client: Client, warmup: list[str], timed: list[str], deadline: Deadline
) -> list[float]:
    """Seconds per timed GET, after the untimed warm-up GETs."""
    for path in warmup:
        deadline.check("warm-up")
        client.call("GET", path)
    gc.collect()
    out = []
    for path in timed:
        deadline.check("latency sample")
        start = time.perf_counter()
        client.call("GET", path)
        out.append(time.perf_counter() - start)
    return out


def latency_phase(
    client: Client,
    plan: Plan,
    samples: int,
    aliases_set_at: float,
    deadline: Deadline,
    figures: list[Figure],
) -> None:
    for kind, (warmup, timed) in query_paths(plan, samples).items():
        if kind.startswith("resolve"):
            # let central's cache drop the aliases just moved, so the warm-up refills it
            time.sleep(max(0.0, aliases_set_at + ALIAS_SETTLE - time.monotonic()))
        note(f"timing {kind}: {len(warmup):,} warm-up, {len(timed):,} timed requests")
        time_requests(client, warmup, [], deadline)
        before = server_seconds(client, ROUTES[kind])
        seconds = time_requests(client, [], timed, deadline)
        after = server_seconds(client, ROUTES[kind])
        total, count = after[0] - before[0], after[1] - before[1]
        if count != len(timed):
            raise BenchError(f"/metrics counted {count} {ROUTES[kind]} GETs, not {len(timed)}")
        for pct in (50, 99):
            figures.append(Figure(f"{kind}_p{pct}_ms", percentile(seconds, pct) * 1000, "ms"))
        figures.append(Figure(f"{kind}_server_mean_ms", total / count * 1000, "ms"))


# blob phase


def blob_payload(size_mb: int, seed: int) -> bytes:
    """Seeded random float32s: reproducible, and zstd still has work to do on them."""
    count = size_mb * MB // 4
    return np.random.default_rng(seed).random(count, dtype=np.float32).tobytes()


async def _sink(request: web.Request) -> web.Response:
    async for _ in request.content.iter_chunked(CHUNK):
        pass
    return web.json_response({"ok": True}, status=201)


async def _source(request: web.Request) -> web.StreamResponse:
    data = memoryview(request.app[SOURCE])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = len(data)
    await response.prepare(request)
    for offset in range(0, len(data), CHUNK):
        await response.write(data[offset : offset + CHUNK])
    await response.write_eof()
    return response


SOURCE = web.AppKey("source", bytes)


@contextlib.asynccontextmanager
async def bare_server(source: bytes) -> AsyncIterator[str]:
    """A bare aiohttp server in this process: PUT /sink discards, GET /source streams."""
    app = web.Application()
    app[SOURCE] = source
    app.router.add_put("/sink", _sink)
    app.router.add_get("/source", _source)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://{HOST}:{port}"
    finally:
        await runner.cleanup()


async def _median_download(client: BlobClient, path: str, size: int, deadline: Deadline) -> float:
    times = []
    for _ in range(DOWNLOAD_REPEATS):
        deadline.check("blob download")
        times.append(await client.download(path, size))
    return sorted(times)[len(times) // 2]


async def blob_phase(
    base: str, token: str, size_mb: int, seed: int, deadline: Deadline
) -> list[Figure]:
    note(f"uploading and downloading a {size_mb} MB blob, then the same to a bare server")
    payload = blob_payload(size_mb, seed)
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()  # computed before, not timed
    path = f"/api/v1/blobs/{digest}"
    async with connect_blobs(base, token) as blobs:
        up, answer = await blobs.upload(path, payload)
        zsize = int(json.loads(answer)["zsize"])  # the blob's record, as stored
        down = await _median_download(blobs, path, zsize, deadline)
    async with bare_server(payload[:zsize]) as bare_base, connect_blobs(bare_base, None) as bare:
        bare_up, _ = await bare.upload("/sink", payload)
        bare_down = await _median_download(bare, "/source", zsize, deadline)
    rates = {
        "blob_upload": len(payload) / up / MB,
        "bare_upload": len(payload) / bare_up / MB,
        "blob_download": zsize / down / MB,
        "bare_download": zsize / bare_down / MB,
    }
    figures = [Figure(f"{k}_mb_per_s", v, "MB/s") for k, v in rates.items()]
    figures.append(Figure("blob_upload_vs_bare", rates["blob_upload"] / rates["bare_upload"], "x"))
    figures.append(
        Figure("blob_download_vs_bare", rates["blob_download"] / rates["bare_download"], "x")
    )
    figures.append(Figure("blob_stored_ratio", zsize / len(payload), "zsize/size"))
    return figures


# the run and its report


def run(args: argparse.Namespace, central: CentralProcess) -> list[Figure]:
    deadline = Deadline(args.time_limit)
    plan = Plan(args.versions, args.models, args.seed)
    figures: list[Figure] = []
    client = Client(central.port, central.token)
    try:
        register_phase(client, plan, deadline, figures)
        aliases_set_at = set_aliases(client, plan, deadline, figures)
        latency_phase(client, plan, args.samples, aliases_set_at, deadline, figures)
        figures += asyncio.run(
            blob_phase(central.url, central.token, args.blob_mb, args.seed, deadline)
        )
    finally:
        client.close()
    return figures


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}" if value < 1 else f"{value:.2f}"


def render_table(figures: list[Figure], header: list[str]) -> str:
    rows = [("figure", "value", "unit", "bar", "met", "MLflow 3.17+SQLite (quoted, not measured)")]
    for f in figures:
        bar = BARS.get(f.name)
        met = "" if bar is None else ("yes" if bar.met(f.value) else "NO")
        bar_text = "" if bar is None else str(bar)
        rows.append((f.name, _fmt(f.value), f.unit, bar_text, met, QUOTED_MLFLOW.get(f.name, "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [*header, ""]
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].rjust(widths[1])]
        cells += [c.ljust(w) for c, w in zip(r[2:-1], widths[2:], strict=True)]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    return "\n".join(lines)


def environment(load_before: tuple[float, ...], steal: float | None) -> dict[str, Any]:
    """The machine, its load average (1, 5, 15 min) before and after the run, and the
    share of CPU time the hypervisor took during it."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "aiohttp": aiohttp.__version__,
        "event_loop": event_loop_name(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_steal_percent": None if steal is None else round(steal, 2),
    }


def report(args: argparse.Namespace, figures: list[Figure], env: dict[str, Any]) -> str:
    config = {
        "versions": args.versions,
        "models": args.models,
        "blob_mb": args.blob_mb,
        "samples": args.samples,
        "seed": args.seed,
    }
    if args.json:
        doc = {
            "config": config,
            "environment": env,
            "figures": {f.name: f.value for f in figures},
            "units": {f.name: f.unit for f in figures},
            "bars": {name: str(bar) for name, bar in BARS.items()},
            "quoted_mlflow_not_measured": QUOTED_MLFLOW,
        }
        return json.dumps(doc, indent=2)
    header = [
        f"Skiff central benchmark: {args.versions:,} versions over {args.models:,} models, "
        f"{args.blob_mb} MB blob, {args.samples:,} samples per query kind, seed {args.seed}",
        f"Python {env['python']}, aiohttp {env['aiohttp']}, {env['event_loop']} event loop, "
        f"{env['cpus']} CPUs, {env['platform']}",
        f"Load average (1/5/15 min) {env['load_before']} before, {env['load_after']} after; "
        "client and central on 127.0.0.1, sequential requests on one keep-alive connection "
        "(a small HTTP/1.1 client for metadata, aiohttp for blob streams).",
        steal_text(env["cpu_steal_percent"]) + ".",
    ]
    return render_table(figures, header)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=10_000, help="versions to register")
    parser.add_argument("--models", type=int, default=1000, help="models the versions spread over")
    parser.add_argument("--blob-mb", type=int, default=100, help="size of the transfer blob, MB")
    parser.add_argument("--samples", type=int, default=1000, help="timed requests per query kind")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    parser.add_argument("--time-limit", type=float, default=1800, help="seconds for the run")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="data dir to create and keep")
    args = parser.parse_args(argv)
    if args.versions < 10 or not 1 <= args.models <= args.versions:
        parser.error("need --versions >= 10 and 1 <= --models <= --versions")
    if args.blob_mb < 1 or args.samples < 1 or args.time_limit <= 0:
        parser.error("--blob-mb, --samples and --time-limit must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()
    steal = CpuSteal()
    started = time.perf_counter()
    try:
        with running_central(args.keep) as central:
            figures = run(args, central)
    except (
        BenchError,
        aiohttp.ClientError,
        http.client.HTTPException,
        OSError,
        subprocess.SubprocessError,
    ) as e:
        kind = "" if isinstance(e, BenchError) else f"{type(e).__name__}: "
        print(f"bench: error: {kind}{e}", file=sys.stderr)
        return 1
    figures.append(Figure("total_duration_s", time.perf_counter() - started, "s"))
    print(report(args, figures, environment(load_before, steal.percent())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
