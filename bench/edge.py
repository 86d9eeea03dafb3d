"""Benchmark of a real edge agent against central, beside baselines measured in the same run.

Starts ``skiff central serve`` and ``skiff edge run`` as subprocesses on free 127.0.0.1
ports, in a temporary directory, and measures:

(a) installing a large model: from the alias move to the blob verified and stored in the
    agent's cache (and, reported beside it, to the model served), against the raw
    pipeline (loopback download of the same blob + SHA-256 + zstd decompression, in
    this process);
(b) inference through the agent against a bare aiohttp handler calling onnxruntime,
    both driven by the same closed-loop client;
(c) latency and failed requests while the alias flips between two versions under load,
    against the same load without swaps;
(d) the agent's resident memory after many swaps against after a few.

Figures are printed beside their bars; nothing is asserted. Usage (repository root)::

    .venv/bin/python bench/edge.py [--model-mb 100] [--swaps 50] [--rss-swaps 200]
                                   [--duration 10] [--quick] [--json]

``bench/README.md`` says what each figure measures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import zstandard
from _edge_support import (
    MB,
    REQUEST_TIMEOUT,
    Admin,
    BenchError,
    CpuSteal,
    LoadResult,
    Process,
    agent_process,
    bare_process,
    central_init,
    central_process,
    closed_loop,
    edge_settings,
    event_loop_name,
    infer_body,
    merge,
    ort_model_path,
    percentile,
    scale_model,
    started,
    steal_text,
    wait_serving,
    weights_model,
)

FLEET = "bench"
RSS_FLEET = "bench-rss"
BIG, MUL, SWAP, MID = "big", "mul", "swap", "mid"
SWAP_VERSIONS = ("1.0.0", "1.0.1")
BIG_VERSIONS = ("1.0.0", "1.0.1", "1.0.2", "1.0.3", "1.0.4")  # distinct weights: each fetched anew
SERVE_TIMEOUT = 120.0  # seconds for one alias move to be served
SETTLE_SECONDS = 2.0  # pause before reading RSS, so evicted sessions are released
MAX_REQUESTS = 5_000_000  # cap on the requests of one load run
CHUNK = 1 << 20


class Deadline:
    """A time limit shared by every loop of the run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def check(self, what: str) -> None:
        if time.monotonic() > self._end:
            raise BenchError(f"{what}: the run exceeded its time limit of {self.seconds:.0f} s")


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class Comparison:
    """One line of the side-by-side table: the agent, its baseline, the ratio and its bar."""

    label: str
    agent: str
    baseline: str
    ratio_name: str
    bar: str
    met: bool


class Report:
    def __init__(self) -> None:
        self.figures: dict[str, Figure] = {}
        self.counts: dict[str, int] = {}
        self.comparisons: list[Comparison] = []
        self.cpu_steal_percent: float | None = None  # over the whole run

    def add(self, name: str, value: float, unit: str) -> float:
        self.figures[name] = Figure(name, value, unit)
        return value

    def value(self, name: str) -> float:
        return self.figures[name].value


# (a) install a large model


async def raw_pipeline(
    session: aiohttp.ClientSession, url: str, token: str, digest: str, verify: bool
) -> float:
    """Seconds to GET the blob (and, if ``verify``, zstd-decompress and SHA-256 it)."""
    headers = {"Authorization": f"Bearer {token}"}
    hasher = hashlib.sha256()
    decompressor = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    start = time.perf_counter()
    async with session.get(f"{url}/api/v1/blobs/{digest}", headers=headers, timeout=timeout) as r:
        if r.status != 200:
            raise BenchError(f"GET blob: got {r.status}")
        async for chunk in r.content.iter_chunked(CHUNK):
            if verify:
                hasher.update(decompressor.decompress(chunk))
    elapsed = time.perf_counter() - start
    if verify and "sha256:" + hasher.hexdigest() != digest:
        raise BenchError("raw pipeline: the blob does not match its digest")
    return elapsed


def ort_load_seconds(payload: bytes, work: Path) -> float:
    """Seconds for onnxruntime to build a session on ``payload`` and run it once."""
    import numpy as np
    import onnxruntime

    path = work / "ort-load.onnx"
    path.write_bytes(payload)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    start = time.perf_counter()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"X": np.zeros((1, 1), dtype=np.float32)})
    elapsed = time.perf_counter() - start
    del session
    path.unlink()
    gc.collect()
    return elapsed


class LogWatch:
    """Follows the agent's log from where it ends now; times come from the lines' stamps."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.offset = log.stat().st_size
        self.wall = time.time()

    def _new_entries(self) -> list[dict[str, Any]]:
        with self.log.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        entries = []
        for line in complete.decode(errors="replace").splitlines():
            try:
                entry = json.loads(line)
                entry["at"] = datetime.fromisoformat(entry["ts"]).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            entries.append(entry)
        return entries

    async def wait(self, marks: dict[str, str], *, within: float) -> dict[str, float]:
        """Seconds after the watch began of the first line starting with each mark.

        The log is read every 10 ms, but each time is the line's own stamp (ms), so the
        reading interval does not enter the figures; reading a file does not load the agent.
        """
        found: dict[str, float] = {}
        deadline = time.monotonic() + within
        while len(found) < len(marks):
            for entry in self._new_entries():
                for name, prefix in marks.items():
                    if name not in found and str(entry.get("msg", "")).startswith(prefix):
                        found[name] = max(entry["at"] - self.wall, 0.001)
            if len(found) < len(marks):
                if time.monotonic() > deadline:
                    raise BenchError(f"agent log shows {sorted(found)} of {sorted(marks)}")
                await asyncio.sleep(0.01)
        return found


async def phase_install(
    ctx: Context, installs: list[tuple[str, str]], payload: bytes, report: Report
) -> None:
    """Install each (version, blob digest) in turn, each after its raw pipeline runs."""
    stored: list[float] = []
    served: list[float] = []
    raw: list[float] = []
    download: list[float] = []
    for version, digest in installs:
        ctx.deadline.check("install")
        # Writes still queued for the disk (the setup's gigabyte of blobs and caches) would
        # hold up the agent's fsync and not the baseline, which writes nothing: each pair
        # starts with none.
        await asyncio.to_thread(os.sync)
        raw.append(await raw_pipeline(ctx.session, ctx.central.url, ctx.token, digest, True))
        download.append(await raw_pipeline(ctx.session, ctx.central.url, ctx.token, digest, False))
        gc.collect()
        await asyncio.sleep(0.5)
        watch = LogWatch(ctx.agent_log)
        await ctx.admin.set_alias(BIG, version)
        found = await watch.wait(
            {"stored": f"Fetched blob {digest}", "served": f"Slot {BIG} now serves {version} "},
            within=SERVE_TIMEOUT,
        )
        await wait_serving(ctx.session, ctx.agent_url, {BIG: version}, within=SERVE_TIMEOUT)
        stored.append(found["stored"])
        served.append(found["served"])
    install = report.add("a_agent_install_s", statistics.median(stored), "s")
    baseline = report.add("a_raw_pipeline_s", statistics.median(raw), "s")
    ratio = report.add("a_install_vs_raw", install / baseline, "x")
    report.add("a_raw_download_only_s", statistics.median(download), "s")
    to_serve = report.add("a_agent_served_s", statistics.median(served), "s")
    report.add("a_served_vs_raw", to_serve / baseline, "x")
    loads = [ort_load_seconds(payload, ctx.work) for _ in installs]
    ort_load = report.add("a_ort_session_load_s", statistics.median(loads), "s")
    report.add("a_served_vs_raw_plus_load", to_serve / (baseline + ort_load), "x")
    report.add("a_model_mb", len(payload) / MB, "MB")
    report.counts["a_installs"] = len(stored)
    report.comparisons.append(
        Comparison(
            f"(a) install a {len(payload) / MB:.0f} MB model (median of {len(stored)})",
            f"{install:.2f} s alias move -> verified in cache (served at {to_serve:.2f} s)",
            f"{baseline:.2f} s download+sha256+unzstd",
            "a_install_vs_raw",
            "<= 1.3x",
            ratio <= 1.3,
        )
    )


# (b) inference throughput


# Windows of agent and baseline per comparison, alternated (others share the CPUs) in
# the order agent, bare, bare, agent, ...: a machine slowing down or speeding up over the
# phase weighs on both alike.
ROUNDS = 4


async def load_window(
    port: int, path: str, body: bytes, args: argparse.Namespace, deadline: Deadline, seconds: float
) -> LoadResult:
    deadline.check("load run")
    return await closed_loop(
        port,
        path,
        body,
        connections=args.connections,
        duration=min(seconds, deadline.remaining()),
        max_requests=MAX_REQUESTS,
    )


def _check_load(what: str, result: LoadResult) -> None:
    if result.ok == 0:
        raise BenchError(f"{what}: no request succeeded ({result.errors})")


async def phase_inference(ctx: Context, args: argparse.Namespace, report: Report) -> None:
    body = infer_body([3, 2])
    path = f"/v2/models/{MUL}/infer"
    warm = min(1.0, args.duration / 4)
    window = args.duration / ROUNDS
    agent_runs: list[LoadResult] = []
    bare_runs: list[LoadResult] = []
    with started(bare_process(ort_model_path(), ctx.work / "bare.log")) as bare:
        for port in (ctx.agent_port, bare.port):
            await load_window(port, path, body, args, ctx.deadline, warm)
        sides = [(ctx.agent_port, agent_runs), (bare.port, bare_runs)]
        for i in range(ROUNDS):
            for port, runs in sides if i % 2 == 0 else sides[::-1]:
                runs.append(await load_window(port, path, body, args, ctx.deadline, window))
    agent, base = merge(agent_runs), merge(bare_runs)
    _check_load("agent inference", agent)
    _check_load("bare inference", base)
    for who, res in (("agent", agent), ("bare", base)):
        report.add(f"b_{who}_req_per_s", res.rate, "req/s")
        report.add(f"b_{who}_p50_ms", percentile(res.latencies, 50) * 1000, "ms")
        report.add(f"b_{who}_p99_ms", percentile(res.latencies, 99) * 1000, "ms")
    # Each round's two windows are adjacent in time: the median of their ratios is what a
    # burst of other work on the machine, landing in one window, cannot move.
    pairs = [a.rate / b.rate for a, b in zip(agent_runs, bare_runs, strict=True)]
    ratio = report.add("b_throughput_vs_bare", statistics.median(pairs), "x")
    report.add("b_throughput_vs_bare_pooled", agent.rate / base.rate, "x")
    report.add("b_throughput_vs_bare_min", min(pairs), "x")
    report.add("b_throughput_vs_bare_max", max(pairs), "x")
    report.counts["b_agent_failed_requests"] = agent.failed
    report.counts["b_bare_failed_requests"] = base.failed
    report.comparisons.append(
        Comparison(
            f"(b) inference, {ORT_LABEL}, {args.connections} connections",
            f"{agent.rate:,.0f} req/s, p50 {_ms(agent, 50)} p99 {_ms(agent, 99)} ms",
            f"{base.rate:,.0f} req/s, p50 {_ms(base, 50)} p99 {_ms(base, 99)} ms (bare)",
            "b_throughput_vs_bare",
            ">= 0.7x",
            ratio >= 0.7,
        )
    )


ORT_LABEL = "mul_1.onnx"


def _ms(result: LoadResult, pct: float) -> str:
    return f"{percentile(result.latencies, pct) * 1000:.2f}"


# swaps


async def swap_loop(
    ctx: Context,
    agent_url: str,
    model: str,
    swaps: int,
    *,
    first_index: int = 0,
    interval: float = 0.02,
) -> list[float]:
    """Flip ``model``'s alias between its two versions ``swaps`` times, each served
    before the next; returns the seconds from each alias move to the new version served."""
    times = []
    for i in range(first_index, first_index + swaps):
        ctx.deadline.check("swaps")
        target = SWAP_VERSIONS[(i + 1) % 2]
        start = time.perf_counter()
        await ctx.admin.set_alias(model, target)
        served = await wait_serving(
            ctx.session, agent_url, {model: target}, within=SERVE_TIMEOUT, interval=interval
        )
        times.append(served - start)
    return times


async def load_during_swaps(
    ctx: Context, args: argparse.Namespace, path: str, body: bytes, swaps: int, first: int
) -> tuple[LoadResult, list[float]]:
    stop = asyncio.Event()
    load = asyncio.create_task(
        closed_loop(
            ctx.agent_port,
            path,
            body,
            connections=args.connections,
            duration=ctx.deadline.remaining(),
            max_requests=MAX_REQUESTS,
            stop=stop,
        )
    )
    try:
        await asyncio.sleep(0.2)
        # status polled every 50 ms: more often, the polling itself would load the agent
        swap_times = await swap_loop(
            ctx, ctx.agent_url, SWAP, swaps, first_index=first, interval=0.05
        )
    finally:
        stop.set()
        result = await load
    return result, swap_times


async def phase_hot_swap(ctx: Context, args: argparse.Namespace, report: Report) -> None:
    body = infer_body([1, 4])
    path = f"/v2/models/{SWAP}/infer"
    warm = min(1.0, args.duration / 4)
    await load_window(ctx.agent_port, path, body, args, ctx.deadline, warm)
    # steady and swapping windows alternate, so that noise from elsewhere hits both alike
    batches = [args.swaps // 2, args.swaps - args.swaps // 2]
    steady_runs: list[LoadResult] = []
    swap_runs: list[LoadResult] = []
    swap_times: list[float] = []
    for batch in batches:
        window = args.duration / len(batches)
        steady_runs.append(
            await load_window(ctx.agent_port, path, body, args, ctx.deadline, window)
        )
        if batch:
            result, times = await load_during_swaps(ctx, args, path, body, batch, len(swap_times))
            swap_runs.append(result)
            swap_times += times
    steady, under_swaps = merge(steady_runs), merge(swap_runs)
    _check_load("steady load", steady)
    _check_load("load during swaps", under_swaps)

    steady_p99 = report.add("c_steady_p99_ms", percentile(steady.latencies, 99) * 1000, "ms")
    swap_p99 = report.add("c_swaps_p99_ms", percentile(under_swaps.latencies, 99) * 1000, "ms")
    report.add("c_steady_p50_ms", percentile(steady.latencies, 50) * 1000, "ms")
    report.add("c_swaps_p50_ms", percentile(under_swaps.latencies, 50) * 1000, "ms")
    report.add("c_steady_req_per_s", steady.rate, "req/s")
    report.add("c_swaps_req_per_s", under_swaps.rate, "req/s")
    ratio = report.add("c_p99_swaps_vs_steady", swap_p99 / steady_p99, "x")
    report.add("c_swap_served_p50_s", percentile(swap_times, 50), "s")
    report.add("c_swap_served_max_s", max(swap_times), "s")
    report.counts["c_swaps"] = len(swap_times)
    report.counts["c_failed_requests_steady"] = steady.failed
    report.counts["c_failed_requests_during_swaps"] = under_swaps.failed
    report.counts["c_requests_during_swaps"] = under_swaps.ok + under_swaps.failed
    if under_swaps.errors:
        print(f"failures during swaps: {under_swaps.errors}", file=sys.stderr)
    report.comparisons.append(
        Comparison(
            f"(c) {len(swap_times)} hot-swaps under load",
            f"p99 {swap_p99:.2f} ms, {under_swaps.failed} failed of "
            f"{under_swaps.ok + under_swaps.failed:,}",
            f"p99 {steady_p99:.2f} ms steady, {steady.failed} failed",
            "c_p99_swaps_vs_steady",
            "<= 2x, 0 failed",
            ratio <= 2 and under_swaps.failed == 0,
        )
    )


async def phase_rss(ctx: Context, agent: Process, args: argparse.Namespace, report: Report) -> None:
    agent_url = agent.url
    early = min(10, args.rss_swaps // 2)
    report.add("d_rss_start_mb", agent.rss_bytes() / MB, "MB")
    times = await swap_loop(ctx, agent_url, MID, early)
    await asyncio.sleep(SETTLE_SECONDS)
    rss_early = report.add(f"d_rss_after_{early}_mb", agent.rss_bytes() / MB, "MB")
    times += await swap_loop(ctx, agent_url, MID, args.rss_swaps - early, first_index=early)
    await asyncio.sleep(SETTLE_SECONDS)
    rss_late = report.add(f"d_rss_after_{args.rss_swaps}_mb", agent.rss_bytes() / MB, "MB")
    ratio = report.add("d_rss_ratio", rss_late / rss_early, "x")
    report.add("d_swap_served_p50_s", percentile(times, 50), "s")
    report.counts["d_swaps"] = len(times)
    report.comparisons.append(
        Comparison(
            f"(d) agent RSS, {args.mid_mb} MB model swapped",
            f"{rss_late:.0f} MB after {args.rss_swaps} swaps",
            f"{rss_early:.0f} MB after {early} swaps",
            "d_rss_ratio",
            "<= 1.2x",
            ratio <= 1.2,
        )
    )


# the run


@dataclass
class Context:
    session: aiohttp.ClientSession
    admin: Admin
    central: Process
    token: str
    work: Path
    deadline: Deadline
    agent_url: str = ""
    agent_port: int = 0
    agent_log: Path = Path()


async def run(args: argparse.Namespace, work: Path, report: Report) -> None:
    deadline = Deadline(args.time_limit)
    token = await asyncio.to_thread(central_init, work / "central")
    central = central_process(work / "central", work / "central.log")
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    with started(central):
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await setup_and_measure(args, work, report, central, session, token, deadline)


async def setup_and_measure(
    args: argparse.Namespace,
    work: Path,
    report: Report,
    central: Process,
    session: aiohttp.ClientSession,
    token: str,
    deadline: Deadline,
) -> None:
    if True:
        ctx = Context(session, Admin(session, central.url, token), central, token, work, deadline)
        await ctx.admin.register(BIG, "0.0.1", scale_model(1.0))
        installs: list[tuple[str, str]] = []
        for i, version in enumerate(BIG_VERSIONS):
            big = weights_model(args.model_mb * MB, args.seed + 100 * i)
            record = (await ctx.admin.register(BIG, version, big))["files"][0]
            installs.append((version, record["digest"]))
        report.add("a_stored_ratio", record["zsize"] / len(big), "zsize/size")
        await ctx.admin.register(MUL, "1.0.0", ort_model_path().read_bytes())
        for i, version in enumerate(SWAP_VERSIONS):
            await ctx.admin.register(SWAP, version, scale_model(2.0 + i))
            mid = weights_model(args.mid_mb * MB, args.seed + 1 + i)
            await ctx.admin.register(MID, version, mid)
        for model, version in ((BIG, "0.0.1"), (MUL, "1.0.0"), (SWAP, "1.0.0"), (MID, "1.0.0")):
            await ctx.admin.set_alias(model, version)
        await ctx.admin.fleet(FLEET, [BIG, MUL, SWAP])
        await ctx.admin.fleet(RSS_FLEET, [MID])
        enrolled = await ctx.admin.enroll(FLEET, "bench-a")
        enrolled_rss = await ctx.admin.enroll(RSS_FLEET, "bench-b")
        deadline.check("setup")

        agent_a = agent_process(
            work / "agent-a", edge_settings(central.url, FLEET, enrolled), work / "agent-a.log"
        )
        with started(agent_a):
            ctx.agent_url, ctx.agent_port, ctx.agent_log = agent_a.url, agent_a.port, agent_a.log
            await wait_serving(
                session, agent_a.url, {BIG: "0.0.1", MUL: "1.0.0", SWAP: "1.0.0"}, within=60
            )
            await phase_install(ctx, installs, big, report)
            del big
            gc.collect()
            await phase_inference(ctx, args, report)
            await phase_hot_swap(ctx, args, report)
        settings = edge_settings(central.url, RSS_FLEET, enrolled_rss)
        agent_b = agent_process(work / "agent-b", settings, work / "agent-b.log")
        with started(agent_b):
            await wait_serving(session, agent_b.url, {MID: "1.0.0"}, within=60)
            await phase_rss(ctx, agent_b, args, report)
        for name, process in (("agent_a", agent_a), ("agent_b", agent_b)):
            if process.exit_code != 0:
                raise BenchError(f"{name} exited {process.exit_code} on SIGTERM")


# output


def environment(report: Report) -> dict[str, Any]:
    import onnxruntime

    steal = report.cpu_steal_percent
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "aiohttp": aiohttp.__version__,
        "onnxruntime": onnxruntime.__version__,
        "event_loop": event_loop_name(),
        "cpu_steal_percent": None if steal is None else round(steal, 2),
    }


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}" if value < 1 else f"{value:.2f}"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render_text(args: argparse.Namespace, report: Report, total: float) -> str:
    env = environment(report)
    lines = [
        f"Skiff edge benchmark: {args.model_mb} MB install model, {args.mid_mb} MB swap model, "
        f"{args.swaps} swaps under load, {args.rss_swaps} swaps for RSS, {args.duration:g} s "
        f"per load run, {args.connections} connections, seed {args.seed}",
        f"Python {env['python']}, onnxruntime {env['onnxruntime']}, aiohttp {env['aiohttp']}, "
        f"{env['event_loop']} event loop, {env['cpus']} CPUs, {env['platform']}",
        "Central, agent, bare server and client on 127.0.0.1 (client in the bench process).",
        steal_text(env["cpu_steal_percent"]) + ".",
        "",
    ]
    rows: list[tuple[str, ...]] = [("", "skiff agent", "baseline", "ratio", "bar", "met")]
    for c in report.comparisons:
        ratio = report.value(c.ratio_name)
        rows.append(
            (c.label, c.agent, c.baseline, f"{ratio:.2f}x", c.bar, "yes" if c.met else "NO")
        )
    lines += _table(rows)
    lines.append("")
    detail: list[tuple[str, ...]] = [("figure", "value", "unit")]
    detail += [(f.name, _fmt(f.value), f.unit) for f in report.figures.values()]
    detail += [(name, str(count), "count") for name, count in report.counts.items()]
    detail.append(("total_duration_s", _fmt(total), "s"))
    lines += _table(detail)
    return "\n".join(lines)


def render_json(args: argparse.Namespace, report: Report, total: float) -> str:
    figures = {f.name: f.value for f in report.figures.values()}
    figures["total_duration_s"] = total
    units = {f.name: f.unit for f in report.figures.values()} | {"total_duration_s": "s"}
    doc = {
        "config": {
            "model_mb": args.model_mb,
            "mid_mb": args.mid_mb,
            "swaps": args.swaps,
            "rss_swaps": args.rss_swaps,
            "duration": args.duration,
            "connections": args.connections,
            "seed": args.seed,
            "quick": args.quick,
        },
        "environment": environment(report),
        "figures": figures,
        "units": units,
        "counts": report.counts,
        "comparisons": [
            {
                "label": c.label,
                "agent": c.agent,
                "baseline": c.baseline,
                "ratio": report.value(c.ratio_name),
                "ratio_figure": c.ratio_name,
                "bar": c.bar,
                "met": c.met,
            }
            for c in report.comparisons
        ],
    }
    return json.dumps(doc, indent=2)


QUICK = {"model_mb": 5, "mid_mb": 2, "swaps": 5, "rss_swaps": 20, "duration": 1.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model-mb", type=int, help="size of the install model, MB (100)")
    parser.add_argument("--mid-mb", type=int, help="size of the model swapped for RSS, MB (20)")
    parser.add_argument("--swaps", type=int, help="hot-swaps under load (50)")
    parser.add_argument("--rss-swaps", type=int, help="swaps before the last RSS reading (200)")
    parser.add_argument("--duration", type=float, help="seconds per measured load run (10)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument("--seed", type=int, default=1, help="seed of the model weights")
    parser.add_argument("--time-limit", type=float, default=1800, help="seconds for the run")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else {}
    full = {"model_mb": 100, "mid_mb": 20, "swaps": 50, "rss_swaps": 200, "duration": 10.0}
    for key, value in full.items():
        if getattr(args, key) is None:
            setattr(args, key, defaults.get(key, value))
    if min(args.model_mb, args.mid_mb, args.swaps, args.connections) < 1:
        parser.error("--model-mb, --mid-mb, --swaps and --connections must be at least 1")
    if args.rss_swaps < 2 or args.duration <= 0 or args.time_limit <= 0:
        parser.error("need --rss-swaps >= 2 and a positive --duration and --time-limit")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    render: Callable[[argparse.Namespace, Report, float], str] = (
        render_json if args.json else render_text
    )
    report = Report()
    steal = CpuSteal()
    started_at = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="skiff-bench-edge-") as tmp:
            asyncio.run(run(args, Path(tmp), report))
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    report.cpu_steal_percent = steal.percent()
    print(render(args, report, time.perf_counter() - started_at))
    return 0


if __name__ == "__main__":
    sys.exit(main())
