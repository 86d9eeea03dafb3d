"""Benchmark of central's device sync: many long-polling devices, alias moves fanned out.

Starts ``skiff central serve`` in a temporary data directory on a free 127.0.0.1 port,
registers onnxruntime's ``mul_1.onnx`` in two versions, makes a fleet follow the
model's ``production`` alias and enrolls N devices. The devices are asyncio tasks of
this one process sharing one aiohttp session: each keeps its own cursor and token and
loops ``GET /api/v1/sync?since=<cursor>&wait=<W>&root=<n>``. They verify nothing (that
is the agent's work, measured by ``bench/edge.py``): this measures central.

Measured:

- idle long-polling with a short and a long ``wait``: sync answers per second and
  central's CPU;
- alias moves: per device, the arrival of the sync answer carrying the new fleet state
  serial minus the start of the alias-move request (p50/p99/max over the devices), for
  each move, with central's CPU over the moves;
- central's peak resident memory (``VmHWM``).

Figures are printed beside the bars (every device within 5 s of a move, central under
500 MB); nothing is asserted. Usage (repository root)::

    .venv/bin/python bench/fleet.py [--devices 1000] [--moves 5] [--wait 25]
                                    [--quick] [--json] [--profile FILE]

``bench/README.md`` says what each figure measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from _edge_support import (
    HOST,
    Admin,
    BenchError,
    CpuSteal,
    Process,
    central_init,
    free_port,
    ort_model_path,
    percentile,
    skiff_cmd,
    steal_text,
)

MODEL = "fleet-mul"
FLEET = "bench-fleet"
VERSIONS = ("1.0.0", "1.0.1")
ALIAS = "production"
SHORT_WAIT = 2.0  # seconds: the short long-poll of the first idle window
MOVE_BAR_S = 5.0  # every device holds the new state within this many seconds of a move
MEMORY_BAR_MB = 500.0  # central's peak resident memory
MB = 1_000_000
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
MOVE_TIMEOUT = 60.0  # seconds for every device to receive one move
READY_TIMEOUT = 120.0  # seconds for every device to receive the first state
SETTLE = 0.5  # seconds added to a wait before a window starts (in-flight polls drain)
MOVE_SPACING = 3.0  # seconds between one move fully received and the next move
ENROLL_CONCURRENCY = 16  # enrollments in flight at once
ERROR_BACKOFF = 0.5  # seconds a device pauses after a failed sync
MAX_POLLS = 1_000_000  # syncs of one device (a bound; a run makes far fewer)
FD_SPARE = 256  # descriptors on top of one per device (central's data files, logs, ...)
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Deadline:
    """A time limit shared by every loop of the run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def check(self, what: str) -> None:
        if time.monotonic() > self.end:
            raise BenchError(f"{what}: the run exceeded its time limit of {self.seconds:.0f} s")


def note(message: str) -> None:
    """Progress on stderr, so that stdout holds only the report."""
    print(f"bench: {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# the central process and what /proc says about it


class Central(Process):
    """``skiff central serve`` (optionally under cProfile); SIGTERM, then SIGKILL after 10 s."""

    def __init__(self, data_dir: Path, log: Path, profile: Path | None) -> None:
        port = free_port()
        cmd = skiff_cmd("central", "serve", "--data-dir", str(data_dir))
        cmd += ["--listen", f"{HOST}:{port}"]
        if profile is not None:  # python -m cProfile -o FILE -m shared.cli central serve ...
            cmd = [cmd[0], "-m", "cProfile", "-o", str(profile), *cmd[1:]]
        super().__init__("central", cmd, port, "/healthz", log)

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                note(f"central ignored SIGTERM for {STOP_TIMEOUT:.0f} s; killed")
        self.exit_code = proc.returncode

    def cpu_seconds(self) -> float:
        """utime + stime of every thread so far, from /proc/<pid>/stat."""
        return proc_cpu_seconds(self.pid)

    def peak_rss_mb(self) -> float:
        """VmHWM, the peak resident set size, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                value, unit = line.split()[1:3]
                if unit != "kB":
                    raise BenchError(f"unexpected VmHWM unit {unit!r}")
                return int(value) * 1024 / MB
        raise BenchError(f"no VmHWM in /proc/{self.pid}/status")


def proc_cpu_seconds(pid: int | str) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


@contextlib.contextmanager
def running(central: Central) -> Iterator[Central]:
    try:
        central.start()
        yield central
    except BaseException:
        print(central.log_tail(), file=sys.stderr)
        raise
    finally:
        central.stop()


def proc_sched(pid: int | str) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one), summed over the threads.

    From /proc/<pid>/task/*/schedstat; the wait shows how much a busy machine delayed the
    process, which its CPU time alone does not.
    """
    run = wait = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that just ended
            fields = (task / "schedstat").read_text(encoding="ascii").split()
            run, wait = run + int(fields[0]), wait + int(fields[1])
    return run / 1e9, wait / 1e9


def main_thread_cpu_seconds(pid: int) -> float:
    """utime + stime of the main thread (the event loop) alone."""
    return proc_cpu_seconds(f"{pid}/task/{pid}")


@dataclass(frozen=True, slots=True)
class Usage:
    wall: float  # seconds
    central: float  # CPU seconds of central, every thread
    central_loop: float  # CPU seconds of central's main thread (the event loop)
    central_runq: float  # seconds central's threads were runnable but not running
    client: float  # CPU seconds of this process
    client_runq: float

    def pct(self, seconds: float) -> float:
        return seconds / self.wall * 100


class CpuWindow:
    """CPU and run-queue seconds of central and of this process over a wall-clock window."""

    def __init__(self, central: Central) -> None:
        self.pid = central.pid
        self.start = self._read()

    def _read(self) -> Usage:
        return Usage(
            wall=time.perf_counter(),
            central=proc_cpu_seconds(self.pid),
            central_loop=main_thread_cpu_seconds(self.pid),
            central_runq=proc_sched(self.pid)[1],
            client=proc_cpu_seconds("self"),
            client_runq=proc_sched("self")[1],
        )

    def close(self) -> Usage:
        """The usage since the window opened."""
        end, start = self._read(), self.start
        return Usage(*(getattr(end, f) - getattr(start, f) for f in Usage.__dataclass_fields__))


def add_usage(report: Report, prefix: str, use: Usage, answers: int | None = None) -> None:
    """Central's CPU as figures; loop share, run-queue waits and the client as diagnostics."""
    report.add(f"{prefix}_central_cpu_s", use.central, "s")
    report.add(f"{prefix}_central_cpu_pct", use.pct(use.central), "% of one core")
    if answers:
        report.add(f"{prefix}_central_cpu_ms_per_answer", use.central / answers * 1000, "ms")
    report.diagnose(f"{prefix}_central_loop_cpu_pct", use.pct(use.central_loop), "% of one core")
    report.diagnose(f"{prefix}_central_runq_wait_pct", use.pct(use.central_runq), "% of wall")
    report.diagnose(f"{prefix}_client_cpu_pct", use.pct(use.client), "% of one core")
    report.diagnose(f"{prefix}_client_runq_wait_pct", use.pct(use.client_runq), "% of wall")


def raise_fd_limit(devices: int) -> int:
    """Raise the soft RLIMIT_NOFILE for one socket per device (central inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = devices + FD_SPARE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            raise BenchError(f"{devices} devices need {wanted} file descriptors; hard limit {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


# the simulated devices


@dataclass(slots=True)
class Device:
    name: str
    headers: dict[str, str]
    root: int
    cursor: int = 0
    serial: int = 0
    arrivals: list[tuple[int, float]] = field(default_factory=list)  # (new serial, perf_counter)

    def reached(self, serial: int) -> float | None:
        """When the first answer carrying ``serial`` or later arrived."""
        for got, at in self.arrivals:
            if got >= serial:
                return at
        return None


class Fleet:
    """N devices long-polling one central from one aiohttp session."""

    def __init__(self, base: str, devices: list[Device], deadline: Deadline, seed: int) -> None:
        self.base = base
        self.devices = devices
        self.deadline = deadline
        self.wait = SHORT_WAIT
        self.answers = 0
        self.errors = 0
        self.last_error = ""
        self.target = 0
        self.missing = 0
        self.all_reached = asyncio.Event()
        self._stop = asyncio.Event()
        self._rng = random.Random(seed)
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self, stagger: float) -> None:
        """Start every device, each after a seeded random delay in [0, ``stagger``)."""
        connector = aiohttp.TCPConnector(limit=len(self.devices) + 16, limit_per_host=0)
        self._session = aiohttp.ClientSession(connector=connector)
        self.expect(1)
        for device in self.devices:
            delay = self._rng.uniform(0, stagger)
            self._tasks.append(asyncio.create_task(self._run(device, delay), name=device.name))

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def expect(self, serial: int) -> None:
        """Count the devices still missing ``serial``; ``all_reached`` is set at zero."""
        self.target = serial
        self.missing = sum(1 for d in self.devices if d.serial < serial)
        self.all_reached.clear()
        if self.missing == 0:
            self.all_reached.set()

    async def _run(self, device: Device, delay: float) -> None:
        assert self._session is not None
        await asyncio.sleep(delay)
        for _ in range(MAX_POLLS):
            if self._stop.is_set() or self.deadline.remaining() <= 0:
                return
            wait = self.wait
            url = f"{self.base}/api/v1/sync?since={device.cursor}&wait={wait:g}&root={device.root}"
            timeout = aiohttp.ClientTimeout(total=wait + 30)
            try:
                async with self._session.get(url, headers=device.headers, timeout=timeout) as resp:
                    body = await resp.read()
                    arrived = time.perf_counter()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as e:
                self._failed(f"{device.name}: {e!r}")
                await asyncio.sleep(ERROR_BACKOFF)
                continue
            if status != 200:
                self._failed(f"{device.name}: sync answered {status}: {body[:200]!r}")
                await asyncio.sleep(ERROR_BACKOFF)
                continue
            self.answers += 1
            answer = json.loads(body)
            device.cursor = int(answer["cursor"])
            state = answer["fleet_state"]
            if state is not None:
                serial = int(state["signed"]["serial"])
                if serial > device.serial:
                    if device.serial < self.target <= serial:
                        self.missing -= 1
                        if self.missing == 0:
                            self.all_reached.set()
                    device.serial = serial
                    device.arrivals.append((serial, arrived))

    def _failed(self, why: str) -> None:
        self.errors += 1
        self.last_error = why


# set-up


async def setup(admin: Admin, devices: int, deadline: Deadline) -> tuple[list[Device], int]:
    """The model in two versions, the fleet following it, N enrolled devices; the serial."""
    model = ort_model_path().read_bytes()
    for version in VERSIONS:
        await admin.register(MODEL, version, model)
    await admin.set_alias(MODEL, VERSIONS[0], ALIAS)
    await admin.fleet(FLEET, [MODEL])
    note(f"enrolling {devices:,} devices, {ENROLL_CONCURRENCY} at a time")
    gate = asyncio.Semaphore(ENROLL_CONCURRENCY)
    start = time.perf_counter()

    async def enroll(i: int) -> Device:
        name = f"dev-{i:05d}"
        async with gate:
            deadline.check("enrolling devices")
            enrolled = await admin.enroll(FLEET, name)
        return Device(
            name=name,
            headers={"Authorization": f"Bearer {enrolled['token']}"},
            root=int(enrolled["root"]["signed"]["version"]),
        )

    fleet_devices = list(await asyncio.gather(*(enroll(i) for i in range(devices))))
    note(f"enrolled {devices:,} devices in {time.perf_counter() - start:.1f} s")
    shown = await admin.call("GET", f"/api/v1/fleets/{FLEET}")
    return fleet_devices, int(shown["state"]["serial"])


# phases


@dataclass(slots=True)
class Move:
    index: int
    version: str
    serial: int
    put_ms: float
    latencies: list[float]  # seconds, one per device that received the serial in time
    missed: int

    def stats(self) -> dict[str, float]:
        if not self.latencies:
            return {}
        return {
            "first_s": min(self.latencies),
            "p50_s": percentile(self.latencies, 50),
            "p99_s": percentile(self.latencies, 99),
            "max_s": max(self.latencies),
        }


@dataclass
class Report:
    figures: dict[str, tuple[float, str]] = field(default_factory=dict)
    diagnostics: dict[str, tuple[float, str]] = field(default_factory=dict)  # may be 0
    counts: dict[str, int] = field(default_factory=dict)
    moves: list[Move] = field(default_factory=list)

    def add(self, name: str, value: float, unit: str) -> None:
        self.figures[name] = (value, unit)

    def diagnose(self, name: str, value: float, unit: str) -> None:
        self.diagnostics[name] = (value, unit)


async def idle_window(
    fleet: Fleet, central: Central, wait: float, seconds: float, label: str, report: Report
) -> None:
    """Switch the devices to ``wait``, let the polls begun before drain, then count answers."""
    settle = fleet.wait + SETTLE
    fleet.wait = wait
    note(f"idle, wait={wait:g} s: settling {settle:.1f} s, then measuring {seconds:g} s")
    await asyncio.sleep(min(settle, fleet.deadline.remaining()))
    fleet.deadline.check(f"idle window {label}")
    answers, window = fleet.answers, CpuWindow(central)
    await asyncio.sleep(min(seconds, fleet.deadline.remaining()))
    use = window.close()
    count = fleet.answers - answers
    report.add(f"idle_{label}_answers_per_s", count / use.wall, "answers/s")
    add_usage(report, f"idle_{label}", use, count)
    report.counts[f"idle_{label}_answers"] = count


async def moves_phase(
    fleet: Fleet,
    central: Central,
    admin: Admin,
    serial: int,
    moves: int,
    wait: float,
    report: Report,
) -> None:
    """Move the alias ``moves`` times; each time wait (bounded) until every device has it."""
    if fleet.wait != wait:  # polls begun with another wait drain first
        settle, fleet.wait = fleet.wait + SETTLE, wait
        await asyncio.sleep(min(settle, fleet.deadline.remaining()))
    window = CpuWindow(central)
    fanouts: list[Usage] = []
    fanout_answers = 0
    for i in range(moves):
        fleet.deadline.check("alias moves")
        version = VERSIONS[(i + 1) % len(VERSIONS)]
        serial += 1
        fleet.expect(serial)
        answers, move_window = fleet.answers, CpuWindow(central)
        started = time.perf_counter()
        await admin.set_alias(MODEL, version, ALIAS)
        put_ms = (time.perf_counter() - started) * 1000
        with contextlib.suppress(TimeoutError):
            timeout = min(MOVE_TIMEOUT, fleet.deadline.remaining())
            await asyncio.wait_for(fleet.all_reached.wait(), timeout)
        fanouts.append(move_window.close())
        fanout_answers += fleet.answers - answers
        latencies = []
        for device in fleet.devices:
            at = device.reached(serial)
            if at is not None:
                latencies.append(at - started)
        move = Move(i + 1, version, serial, put_ms, latencies, len(fleet.devices) - len(latencies))
        report.moves.append(move)
        stats = move.stats()
        note(
            f"move {i + 1}: {version} serial {serial}, put {put_ms:.0f} ms, "
            + ", ".join(f"{k} {v:.3f}" for k, v in stats.items())
            + f", missed {move.missed}"
        )
        if i + 1 < moves:
            await asyncio.sleep(min(MOVE_SPACING, fleet.deadline.remaining()))
    use = window.close()
    every = [x for m in report.moves for x in m.latencies]
    if every:
        report.add("move_p50_s", percentile(every, 50), "s")
        report.add("move_p99_s", percentile(every, 99), "s")
        report.add("move_max_s", max(every), "s")
    report.add("move_put_ms", sorted(m.put_ms for m in report.moves)[len(report.moves) // 2], "ms")
    report.add("moves_window_s", use.wall, "s")
    add_usage(report, "moves", use)
    fanout = Usage(*(sum(getattr(u, f) for u in fanouts) for f in Usage.__dataclass_fields__))
    report.add("fanout_window_s_per_move", fanout.wall / moves, "s")
    add_usage(report, "fanout", fanout, fanout_answers)
    report.counts["moves"] = moves
    report.counts["move_devices_missed"] = sum(m.missed for m in report.moves)


async def run(args: argparse.Namespace, work: Path, report: Report) -> None:
    deadline = Deadline(args.time_limit)
    token = await asyncio.to_thread(central_init, work / "central")
    central = Central(work / "central", work / "central.log", args.profile)
    timeout = aiohttp.ClientTimeout(total=120)
    with running(central):
        note(f"central serving at {central.url} (pid {central.pid})")
        async with aiohttp.ClientSession(timeout=timeout) as session:
            admin = Admin(session, central.url, token)
            devices, serial = await setup(admin, args.devices, deadline)
            fleet = Fleet(central.url, devices, deadline, args.seed)
            note(f"starting {len(devices):,} devices over {SHORT_WAIT:g} s (wait={SHORT_WAIT:g})")
            ready = time.perf_counter()
            await fleet.start(stagger=SHORT_WAIT)
            try:
                fleet.expect(serial)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fleet.all_reached.wait(), READY_TIMEOUT)
                if fleet.missing:
                    raise BenchError(
                        f"{fleet.missing} devices had no state after {READY_TIMEOUT:.0f} s; "
                        f"last error: {fleet.last_error}"
                    )
                report.add("first_sync_all_s", time.perf_counter() - ready, "s")
                await idle_window(fleet, central, SHORT_WAIT, args.idle_short, "short", report)
                await idle_window(fleet, central, args.wait, args.idle_long, "long", report)
                await moves_phase(fleet, central, admin, serial, args.moves, args.wait, report)
                report.add("central_peak_rss_mb", central.peak_rss_mb(), "MB")
            finally:
                await fleet.stop()
            report.counts["sync_errors"] = fleet.errors
            if fleet.errors:
                note(f"{fleet.errors} failed syncs; last: {fleet.last_error}")
    if central.exit_code != 0:
        raise BenchError(f"central exited {central.exit_code} on SIGTERM\n{central.log_tail()}")


# output


BARS = {
    "move_max_s": ("<", MOVE_BAR_S, "every device within 5 s"),
    "central_peak_rss_mb": ("<", MEMORY_BAR_MB, "central under 500 MB"),
}


def bar_met(name: str, value: float, report: Report) -> bool:
    _, limit, _ = BARS[name]
    if name == "move_max_s" and report.counts.get("move_devices_missed", 0):
        return False
    return value < limit


def environment(load_before: tuple[float, ...], steal: float | None) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "aiohttp": aiohttp.__version__,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_steal_percent": None if steal is None else round(steal, 2),
    }


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}" if value < 1 else f"{value:.2f}"


def _table(rows: list[tuple[str, ...]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            (c.rjust(w) if i in right else c.ljust(w))
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]


def config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "devices": args.devices,
        "moves": args.moves,
        "wait": args.wait,
        "short_wait": SHORT_WAIT,
        "idle_short_s": args.idle_short,
        "idle_long_s": args.idle_long,
        "seed": args.seed,
        "quick": args.quick,
    }


def render_text(args: argparse.Namespace, report: Report, env: dict[str, Any]) -> str:
    lines = [
        f"Skiff fleet sync benchmark: {args.devices:,} devices long-polling one central, "
        f"{args.moves} alias moves (wait={args.wait:g} s), idle windows of "
        f"{args.idle_short:g} s (wait={SHORT_WAIT:g} s) and {args.idle_long:g} s "
        f"(wait={args.wait:g} s)",
        f"Python {env['python']}, aiohttp {env['aiohttp']}, {env['cpus']} CPUs, {env['platform']}",
        f"Load average (1/5/15 min) {env['load_before']} before, {env['load_after']} after; "
        "central and every device on 127.0.0.1 (devices: asyncio tasks of the bench process).",
        steal_text(env["cpu_steal_percent"]) + ".",
        "",
        "Alias move to fleet state received, per device (request start to answer arrived):",
    ]
    rows: list[tuple[str, ...]] = [
        ("move", "version", "serial", "put ms", "first s", "p50 s", "p99 s", "max s", "missed")
    ]
    for m in report.moves:
        s = m.stats()
        cells = [_fmt(s[k]) if s else "-" for k in ("first_s", "p50_s", "p99_s", "max_s")]
        rows.append((str(m.index), m.version, str(m.serial), _fmt(m.put_ms), *cells, str(m.missed)))
    lines += _table(rows, right={0, 2, 3, 4, 5, 6, 7, 8})
    lines += ["", "Bars:"]
    bars: list[tuple[str, ...]] = [("figure", "value", "bar", "met", "")]
    for name, (op, limit, text) in BARS.items():
        if name in report.figures:
            value = report.figures[name][0]
            met = "yes" if bar_met(name, value, report) else "NO"
            bars.append((name, _fmt(value), f"{op} {limit:g}", met, text))
    lines += _table(bars, right={1})
    lines += [""]
    detail: list[tuple[str, ...]] = [("figure", "value", "unit")]
    detail += [(name, _fmt(v), unit) for name, (v, unit) in report.figures.items()]
    detail += [(name, str(count), "count") for name, count in report.counts.items()]
    lines += _table(detail, right={1})
    lines += ["", "Diagnostics (run-queue wait: runnable but not running, summed over threads):"]
    diag: list[tuple[str, ...]] = [("figure", "value", "unit")]
    diag += [(name, _fmt(v), unit) for name, (v, unit) in report.diagnostics.items()]
    lines += _table(diag, right={1})
    return "\n".join(lines)


def render_json(args: argparse.Namespace, report: Report, env: dict[str, Any]) -> str:
    doc = {
        "config": config(args),
        "environment": env,
        "figures": {name: v for name, (v, _) in report.figures.items()},
        "units": {name: unit for name, (_, unit) in report.figures.items()},
        "diagnostics": {name: v for name, (v, _) in report.diagnostics.items()},
        "diagnostic_units": {name: unit for name, (_, unit) in report.diagnostics.items()},
        "counts": report.counts,
        "bars": {
            name: {
                "bar": f"{op} {limit:g}",
                "meaning": text,
                "met": bar_met(name, report.figures[name][0], report),
            }
            for name, (op, limit, text) in BARS.items()
            if name in report.figures
        },
        "moves": [
            {
                "move": m.index,
                "version": m.version,
                "serial": m.serial,
                "put_ms": m.put_ms,
                "devices": len(m.latencies),
                "missed": m.missed,
                **m.stats(),
            }
            for m in report.moves
        ],
    }
    return json.dumps(doc, indent=2)


QUICK = {"devices": 50, "moves": 2, "wait": 10.0, "idle_short": 4.0, "idle_long": 10.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, help="simulated devices (1000)")
    parser.add_argument("--moves", type=int, help="alias moves timed (5)")
    parser.add_argument("--wait", type=float, help="long-poll wait of the moves and long idle (25)")
    parser.add_argument("--idle-short", type=float, help=f"seconds counted at wait={SHORT_WAIT:g}")
    parser.add_argument("--idle-long", type=float, help="seconds counted at --wait (2 x wait)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the devices' start delays")
    parser.add_argument("--time-limit", type=float, default=900, help="seconds for the run")
    parser.add_argument("--profile", type=Path, help="run central under cProfile, stats to FILE")
    parser.add_argument("--quick", action="store_true", help="50 devices, 2 moves: a smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    full = {"devices": 1000, "moves": 5, "wait": 25.0, "idle_short": 10.0, "idle_long": None}
    defaults = QUICK if args.quick else full
    for key, value in full.items():
        if getattr(args, key) is None:
            setattr(args, key, defaults.get(key, value))
    if args.idle_long is None:
        args.idle_long = 2 * args.wait
    if args.devices < 1 or args.moves < 1:
        parser.error("--devices and --moves must be at least 1")
    if not 0 < args.wait <= 60:
        parser.error("--wait must be in (0, 60] seconds (central caps a long-poll at 60 s)")
    if min(args.idle_short, args.idle_long, args.time_limit) <= 0:
        parser.error("--idle-short, --idle-long and --time-limit must be positive")
    if args.profile is not None:
        args.profile = args.profile.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()
    steal = CpuSteal()
    report = Report()
    started_at = time.perf_counter()
    try:
        limit = raise_fd_limit(args.devices)
        note(f"file descriptor limit {limit}")
        with tempfile.TemporaryDirectory(prefix="skiff-bench-fleet-") as tmp:
            asyncio.run(run(args, Path(tmp), report))
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    report.add("total_duration_s", time.perf_counter() - started_at, "s")
    render = render_json if args.json else render_text
    print(render(args, report, environment(load_before, steal.percent())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
