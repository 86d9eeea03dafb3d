"""``skiff quickstart``: Skiff end to end on one machine, on embedded defaults.

Initialises a data dir, starts a central on a free loopback port, and walks
through the registry with a real ONNX model (onnxruntime's ``mul_1.onnx``,
``Y = X * W``): push, push a retrained version, move an alias, browse the
catalogue, roll back, pull and verify. The walk is a list of named ``Step``s,
so later steps (an edge agent, inference, hot-swap) append to ``STEPS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import shlex
import shutil
import signal
import struct
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from central.cli import quickstart_edge, render
from central.cli.aliases import alias_history, rollback, set_alias
from central.cli.catalog import list_models, list_versions
from central.cli.client import RegistryClient
from central.cli.command import output_for
from central.cli.errors import CliError
from central.cli.localcentral import LocalCentral, free_port
from central.cli.output import Output
from central.cli.pull import pull
from central.cli.push import PushRequest, build_metadata, push
from central.cli.server import export_lines, init_data_dir
from shared.errors import SkiffError

if TYPE_CHECKING:
    from central.cli.command import Subparsers

__all__ = ["STEPS", "Quickstart", "Step", "register", "retrained_weights"]

MODEL = "demo-mul"
ALIAS = "production"
_WEIGHTS = struct.pack("<6f", 1, 2, 3, 4, 5, 6)  # initializer W of mul_1.onnx, float32
_DOUBLED = struct.pack("<6f", 2, 4, 6, 8, 10, 12)


@dataclass
class Quickstart:
    """What the steps share: where things are, the server and a client for it."""

    out: Output
    workdir: Path
    data_dir: Path
    port: int
    keep_running: bool = False
    central: LocalCentral | None = None
    client: RegistryClient | None = None
    token: str = ""
    models: dict[str, Path] = field(default_factory=dict)  # version -> pushed file
    agent: Any = None  # the edge agent process, once enrolled
    cleanup: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self) -> RegistryClient:
        if self.client is None:
            raise RuntimeError("the central has not been started yet")
        return self.client

    def show(self, command: str, text: str) -> None:
        self.out.text(f"$ skiff {command}\n{text}\n")


@dataclass(frozen=True, slots=True)
class Step:
    """One named step of the walk."""

    name: str
    run: Callable[[Quickstart], Awaitable[None]]


def retrained_weights(model: bytes) -> bytes:
    """``mul_1.onnx`` with its six float32 weights doubled, as a "retrained" model.

    Replacing the 24 bytes in place keeps every protobuf length valid.

    Raises:
        CliError: The weights [1, 2, 3, 4, 5, 6] are not found exactly once.
    """
    if model.count(_WEIGHTS) != 1:
        raise CliError("cannot find the float32 weights [1..6] of mul_1.onnx exactly once")
    return model.replace(_WEIGHTS, _DOUBLED)


def _demo_model() -> Path:
    spec = importlib.util.find_spec("onnxruntime")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location, "datasets", "mul_1.onnx")
        if path.is_file():
            return path
    raise CliError("cannot find mul_1.onnx in onnxruntime's datasets: is onnxruntime installed?")


async def _init(qs: Quickstart) -> None:
    result = await asyncio.to_thread(init_data_dir, qs.data_dir)
    qs.token = str(result["admin_token"])
    qs.out.text(f"data dir {qs.data_dir}, root key {result.get('root_keyid')}\n")


async def _start(qs: Quickstart) -> None:
    qs.central = LocalCentral(qs.data_dir, qs.port, qs.workdir / "central.log")
    qs.cleanup.push_async_callback(_stop, qs.central, qs.out)
    await qs.central.start()
    qs.client = await qs.cleanup.enter_async_context(RegistryClient(qs.url, qs.token))
    qs.out.text(f"central is up at {qs.url} (log: {qs.central.log_path})\n")


async def _push(
    qs: Quickstart, version: str, source: bytes, scale: int, parent: str | None = None
) -> None:
    path = qs.workdir / "models" / version / "model.onnx"
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(path.write_bytes, source)
    qs.models[version] = path
    request = PushRequest(
        name=MODEL,
        path=path,
        version=version,
        description=f"Y = X * W, weights x{scale}",
        tags={"team": "demo", "source": "onnxruntime-datasets"},
        metadata=build_metadata(
            {"provenance": {"code_version": f"quickstart-{version}"}},
            params=[("weight_scale", str(scale))],
            metrics=[("mae", 0.01 / scale), ("latency_ms", 0.05)],
            datasets=["builtin://mul_1"],
        ),
        parent=parent,
    )
    record = await push(qs.api(), qs.out, request)
    qs.show(_push_command(request), render.render_version(record))


def _push_command(request: PushRequest) -> str:
    """The ``skiff push`` command line that makes the same request."""
    words = ["push", request.name, str(request.path), "--version", str(request.version)]
    if request.parent:
        words += ["--parent", request.parent]
    training = request.metadata.get("training", {})
    for flag, pairs in (
        ("--tag", request.tags),
        ("--metric", training.get("metrics", {})),
        ("--param", training.get("params", {})),
    ):
        for key, value in pairs.items():
            words += [flag, f"{key}={value}"]
    for dataset in training.get("datasets", []):
        words += ["--dataset", dataset]
    return shlex.join(words)


async def _push_v1(qs: Quickstart) -> None:
    await _push(qs, "1.0.0", await asyncio.to_thread(_demo_model().read_bytes), scale=1)


async def _push_v2(qs: Quickstart) -> None:
    retrained = retrained_weights(await asyncio.to_thread(qs.models["1.0.0"].read_bytes))
    await _push(qs, "1.1.0", retrained, scale=2, parent="1.0.0")


async def _alias_to(qs: Quickstart, version: str) -> None:
    record = await set_alias(qs.api(), MODEL, ALIAS, version)
    qs.show(f"alias set {MODEL} {ALIAS} {version}", render.render_alias(record))


async def _alias_v1(qs: Quickstart) -> None:
    await _alias_to(qs, "1.0.0")


async def _alias_v2(qs: Quickstart) -> None:
    await _alias_to(qs, "1.1.0")


async def _catalogue(qs: Quickstart) -> None:
    client = qs.api()
    qs.show("models list", render.render_models(await list_models(client)))
    qs.show(f"versions list {MODEL}", render.render_versions(await list_versions(client, MODEL)))
    history = await alias_history(client, MODEL, ALIAS)
    qs.show(f"alias history {MODEL} {ALIAS}", render.render_history(history))


async def _rollback(qs: Quickstart) -> None:
    record = await rollback(qs.api(), MODEL, ALIAS)
    if record.get("version") != "1.0.0":
        raise CliError(f"expected {ALIAS} back on 1.0.0, got {record.get('version')}")
    qs.show(f"rollback {MODEL} {ALIAS}", render.render_alias(record))


async def _pull(qs: Quickstart) -> None:
    dest = qs.workdir / "pulled"
    result = await pull(qs.api(), qs.out, MODEL, "1.1.0", dest)
    pulled = await asyncio.to_thread((dest / "model.onnx").read_bytes)
    if pulled != await asyncio.to_thread(qs.models["1.1.0"].read_bytes):
        raise CliError("the pulled model.onnx differs from the pushed one")
    files = ", ".join(f"{f.path} ({f.digest})" for f in result.files)
    text = f"verified against root version {result.root_version}: {files}"
    qs.show(f"pull {MODEL}@1.1.0 -o {dest}", text)


async def _next(qs: Quickstart) -> None:
    lines = [
        "Try it yourself:",
        export_lines(qs.url, qs.token),
        f"  skiff versions show {MODEL}@{ALIAS}",
        f"  skiff search \"name = '{MODEL}' and metrics.mae <= 0.005\"",
        f"  skiff stage set {MODEL}@1.1.0 training",
        f"  skiff pull {MODEL}@{ALIAS} -o ./{MODEL}",
        f"  skiff fleet show {quickstart_edge.FLEET}",
    ]
    if qs.agent is not None:
        lines.append(f"  skiff edge status --url {qs.agent.url}")
    if not qs.keep_running:
        lines.append(
            "(central and the agent stop now: run 'skiff quickstart --keep-running' to try these)"
        )
    qs.out.text("\n".join(lines) + "\n")


STEPS: list[Step] = [
    Step("initialise a data dir", _init),
    Step("start central", _start),
    Step(f"push {MODEL} 1.0.0", _push_v1),
    Step(f"push {MODEL} 1.1.0 (retrained)", _push_v2),
    Step(f"point {ALIAS} at 1.0.0", _alias_v1),
    Step(f"move {ALIAS} to 1.1.0", _alias_v2),
    Step("show the catalogue", _catalogue),
    Step(f"roll {ALIAS} back", _rollback),
    Step(f"pull and verify {MODEL}@1.1.0", _pull),
    Step("create a fleet and enroll a device", quickstart_edge.enroll),
    Step("start the edge agent: it syncs, verifies and serves 1.0.0", quickstart_edge.start_agent),
    Step("infer on the device", quickstart_edge.infer_v1),
    Step(f"move {ALIAS} to 1.1.0: the device hot-swaps", quickstart_edge.swap),
    Step("infer again: answered by 1.1.0", quickstart_edge.infer_v2),
    Step("what to try next", _next),
]


async def run(qs: Quickstart, steps: list[Step]) -> None:
    """Run ``steps`` in order, then stop the server (or wait for Ctrl-C if ``keep_running``).

    Raises:
        CliError: A step failed; the message names it.
    """
    async with qs.cleanup:
        for i, step in enumerate(steps, 1):
            qs.out.text(f"==> [{i}/{len(steps)}] {step.name}")
            await _run_step(qs, step)
        if qs.keep_running and qs.central is not None:
            qs.out.text(f"central keeps running at {qs.url}; press Ctrl-C to stop it")
            await _wait_for_signal(qs.central)


async def _run_step(qs: Quickstart, step: Step) -> None:
    try:
        await step.run(qs)
    except (CliError, SkiffError, OSError) as e:
        raise CliError(f"quickstart step '{step.name}' failed: {e}") from e


async def _stop(central: LocalCentral, out: Output) -> None:
    if central.running:
        out.note("stopping central")
        await central.stop()


async def _wait_for_signal(central: LocalCentral) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        exited = asyncio.create_task(central.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (exited, stopped):
            if not task.done():
                task.cancel()
        if exited.done():
            raise CliError(f"central exited with code {exited.result()}\n{central.log_tail()}")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _quickstart(args: argparse.Namespace) -> None:
    out = output_for(args)
    workdir = Path(tempfile.mkdtemp(prefix="skiff-quickstart-"))
    qs = Quickstart(
        out=out,
        workdir=workdir,
        data_dir=args.data_dir or workdir / "data",
        port=args.port or free_port(),
        keep_running=args.keep_running,
    )
    try:
        asyncio.run(run(qs, STEPS))
    except BaseException:
        out.note(f"quickstart files kept in {workdir}")
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    out.text(f"Quickstart finished; {shlex.quote(str(workdir))} was removed.")


def register(sub: Subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``quickstart`` to the parser tree."""
    p = sub.add_parser("quickstart", parents=parents, help="run Skiff end to end, locally")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="default: a temp dir")
    p.add_argument("--port", type=int, help="default: a free port")
    p.add_argument("--keep-running", action="store_true", help="keep central up until Ctrl-C")
    p.set_defaults(handler=_quickstart)
