"""An in-memory central registry, and the real edge agent as a process, for attack tests.

``CentralSimulator`` is to the edge agent what python-tuf's ``RepositorySimulator`` is to
its client: keys and documents live in memory, are signed when a device fetches them and
are served by a real aiohttp server on 127.0.0.1 that implements the device side of the
central API (docs/sync.md): ``GET /api/v1/sync``, ``GET /api/v1/blobs/{digest}`` and
``POST /api/v1/devices/{id}/report``. Each attack is one setting::

    sim.state.serial -= 1                                   # rollback
    sim.state.expires = PAST                                # freeze
    sim.signers["targets"].clear()                          # unsigned
    sim.tamper_blob(digest)                                 # bytes no longer match
    sim.faults = Faults(status=503, stall_after=4096, reset_mid_body=True)

``AgentProcess`` runs ``python -m shared.cli edge run`` on a free port with a temporary
data directory, waits for it within bounded times and stops it with SIGTERM, then SIGKILL.
The ONNX builders make the small models the tests serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnx
from aiohttp import web
from onnx import TensorProto, helper, numpy_helper

from edge_agent.config import render_toml
from shared.bundle import write_bundle
from shared.canonical import canonical_json
from shared.codec import compress
from shared.digest import parse_digest, sha256_digest
from shared.envelope import sign_envelope
from shared.fleet import FleetState, ModelTarget, envelope_size, sign_fleet_state
from shared.keys import SigningKey
from shared.manifest import FileEntry, Manifest, manifest_digest, metadata_digest
from shared.timeutil import format_time, utcnow
from shared.trust import new_root

__all__ = [
    "DEVICE_ID",
    "FLEET",
    "MODEL_FILE",
    "PAST",
    "TOKEN",
    "AgentPool",
    "AgentProcess",
    "CentralSimulator",
    "Faults",
    "PublishedVersion",
    "RequestRecord",
    "SimFleetState",
    "broken_model",
    "free_port",
    "large_model",
    "linear_model",
    "nan_model",
    "serving",
    "slot_of",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
FLEET = "plant-a"
DEVICE_ID = "edge-1"
TOKEN = "skiff-device-token-for-tests"
MODEL_FILE = "model.onnx"
OPSET = 17
IR_VERSION = 8

MAX_WAIT_SECONDS = 2.0  # the simulator's long-poll cap (central's is 60 s)
POLL_SECONDS = 0.05
STALL_SECONDS = 30.0  # the longest a stalled body holds its connection
CHUNK = 64 * 1024
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LOG_TAIL_CHARS = 6000


def _seconds(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(microsecond=0)


PAST = _seconds(utcnow() - timedelta(days=1))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- ONNX models ------------------------------------------------------------------------------


def _serialize(graph: onnx.GraphProto, *, check: bool = True) -> bytes:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="skiff-simulator",
    )
    if check:
        onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _io() -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    return (
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 1])],
    )


def _weights(scale: float) -> onnx.TensorProto:
    w = (scale * np.array([[1.0], [2.0], [3.0]])).astype(np.float32)
    return numpy_helper.from_array(w, name="W")


def linear_model(scale: float = 1.0) -> bytes:
    """``Y = X @ (scale * [1, 2, 3])``: input ``[1, 1, 1]`` gives ``6 * scale``."""
    inputs, outputs = _io()
    node = helper.make_node("MatMul", ["X", "W"], ["Y"])
    graph = helper.make_graph([node], "linear", inputs, outputs, initializer=[_weights(scale)])
    return _serialize(graph)


def nan_model() -> bytes:
    """Loads, but ``Y = (X @ W) / 0`` is NaN on the all-zero warm-up input."""
    inputs, outputs = _io()
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), name="Z")
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["XW"]),
        helper.make_node("Div", ["XW", "Z"], ["Y"]),
    ]
    graph = helper.make_graph(nodes, "nan", inputs, outputs, initializer=[_weights(1.0), zero])
    return _serialize(graph)


def broken_model() -> bytes:
    """A well-formed protobuf that onnxruntime refuses: a node reads an undefined input."""
    inputs, outputs = _io()
    node = helper.make_node("MatMul", ["X", "Missing"], ["Y"])
    graph = helper.make_graph([node], "broken", inputs, outputs)
    return _serialize(graph, check=False)


def large_model(scale: float = 1.0, nbytes: int = 30 * 1024 * 1024, seed: int = 7) -> bytes:
    """A linear model carrying ``nbytes`` of incompressible float32 noise that adds 0."""
    noise = np.random.default_rng(seed).standard_normal(nbytes // 4, dtype=np.float32)
    inputs, outputs = _io()
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["XW"]),
        helper.make_node("ReduceSum", ["B"], ["S"], keepdims=0),
        helper.make_node("Mul", ["S", "Z"], ["S0"]),
        helper.make_node("Add", ["XW", "S0"], ["Y"]),
    ]
    initializers = [
        _weights(scale),
        numpy_helper.from_array(noise, name="B"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), name="Z"),
    ]
    graph = helper.make_graph(nodes, "large", inputs, outputs, initializer=initializers)
    return _serialize(graph)


# -- simulator state --------------------------------------------------------------------------


@dataclass
class Faults:
    """Misbehaviour of the simulated central; ``Faults()`` is a healthy server.

    Attributes:
        status: Answer every request with this HTTP status instead.
        stall_after: Hold a blob body (without closing) once this absolute offset is
            sent, until the faults are replaced or the client goes away.
        reset_mid_body: Abort the connection in the middle of a body: at ``stall_after``
            if set, else halfway (blob offsets are absolute, so retries never finish).
        throttle_bytes_per_second: Send blob bodies no faster than this.
        only: A path prefix the faults apply to; None: every path.
    """

    status: int | None = None
    stall_after: int | None = None
    reset_mid_body: bool = False
    throttle_bytes_per_second: int | None = None
    only: str | None = None

    def applies(self, path: str) -> bool:
        return self.only is None or path.startswith(self.only)


@dataclass
class RequestRecord:
    """One request the simulator received (the token is not kept)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int | None = None
    sent: int = 0  # body bytes written
    outcome: str = "ok"  # ok, reset, stalled, client-gone

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


@dataclass
class SimFleetState:
    """The fleet state the simulator signs on every fetch; mutate it to attack."""

    fleet: str
    serial: int
    expires: datetime
    models: dict[str, ModelTarget] = field(default_factory=dict)
    rollouts: dict[str, Any] = field(default_factory=dict)

    def document(self) -> FleetState:
        return FleetState(
            fleet=self.fleet,
            serial=self.serial,
            expires=self.expires,
            models=dict(self.models),
            rollouts=dict(self.rollouts),
        )


@dataclass(frozen=True)
class PublishedVersion:
    """A model version the simulator can serve: manifest, metadata and raw files."""

    manifest: Manifest
    metadata: dict[str, Any]
    files: dict[str, bytes]

    @property
    def digest(self) -> str:
        """The manifest digest a fleet state names."""
        return manifest_digest(self.manifest.to_dict())

    @property
    def model(self) -> str:
        return self.manifest.model

    @property
    def version(self) -> str:
        return self.manifest.version

    def entry(self, path: str = MODEL_FILE) -> FileEntry:
        return next(f for f in self.manifest.files if f.path == path)


_RECORD = web.RequestKey("record", RequestRecord)


class CentralSimulator:
    """Keys and documents in memory, signed when fetched, served on 127.0.0.1.

    Use as ``async with CentralSimulator() as sim:`` or ``await sim.start()`` and
    ``await sim.stop()``. The settings tests change are public attributes: ``state``,
    ``signers`` (lists of keys by role; ``.clear()`` leaves a document unsigned),
    ``roots``, ``manifest_overrides`` (digest -> envelope sent under it) and ``faults``;
    ``requests`` and ``reports`` record what the agent sent.
    """

    def __init__(
        self, *, fleet: str = FLEET, device_id: str = DEVICE_ID, token: str = TOKEN
    ) -> None:
        self.fleet, self.device_id, self.token = fleet, device_id, token
        self.signers: dict[str, list[SigningKey]] = {
            "root": [SigningKey.generate()],
            "targets": [SigningKey.generate()],
        }
        self.roots: list[dict[str, Any]] = []
        self._add_root(self.signers["root"], self.signers["root"], self.signers["targets"])
        self.state = SimFleetState(fleet, 1, _seconds(utcnow() + timedelta(days=7)))
        self.versions: dict[tuple[str, str], PublishedVersion] = {}
        self.manifest_overrides: dict[str, dict[str, Any]] = {}
        self.faults = Faults()
        self.requests: list[RequestRecord] = []
        self.reports: list[dict[str, Any]] = []
        self.max_wait = MAX_WAIT_SECONDS
        self._published: dict[str, bytes] = {}  # blob digest -> compressed bytes as signed
        self._served: dict[str, bytes] = {}  # blob digest -> compressed bytes served
        self._extra: dict[str, tuple[int, bool]] = {}  # digest -> (extra bytes, announce)
        self._raw: dict[str, bytes] = {}
        self._seq = 0
        self._last_key = b""
        self._runner: web.AppRunner | None = None
        self._closing = False
        self.port = 0

    # lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> CentralSimulator:
        """Serve on 127.0.0.1 (a free port the first time, the same port after)."""
        assert self._runner is None, "the simulator is already running"
        self._closing = False
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/api/v1/sync", self._sync)
        app.router.add_get("/api/v1/blobs/{digest}", self._blob)
        app.router.add_post("/api/v1/devices/{device}/report", self._report)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Stop serving; held bodies and long-polls are released at once."""
        self._closing = True
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> CentralSimulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # documents

    def _add_root(
        self,
        signed_by: Iterable[SigningKey],
        root_keys: list[SigningKey],
        targets_keys: list[SigningKey],
    ) -> dict[str, Any]:
        root = new_root(
            len(self.roots) + 1,
            _seconds(utcnow() + timedelta(days=365)),
            [k.public_key for k in root_keys],
            [k.public_key for k in targets_keys],
        )
        envelope = sign_envelope(root.to_dict(), list(signed_by))
        self.roots.append(envelope)
        return envelope

    def root_envelope(self) -> dict[str, Any]:
        """Root version 1, as provisioned into ``edge.toml``."""
        envelope: dict[str, Any] = json.loads(json.dumps(self.roots[0]))
        return envelope

    def rotate_root(
        self, *, sign_with_old: bool = True, sign_with_new: bool = True, new_targets: bool = False
    ) -> dict[str, Any]:
        """Publish root version n+1 with a new root key (and a new targets key if asked).

        The new root is signed by the old root keys and/or the new ones as told; the
        simulator signs with the new keys from now on either way.
        """
        old, new = self.signers["root"], [SigningKey.generate()]
        targets = [SigningKey.generate()] if new_targets else list(self.signers["targets"])
        signed_by = [*(old if sign_with_old else []), *(new if sign_with_new else [])]
        envelope = self._add_root(signed_by, new, targets)
        self.signers["root"], self.signers["targets"] = new, targets
        return envelope

    def rotate_targets(self) -> dict[str, Any]:
        """Publish root version n+1 that replaces the targets key, signed by the root keys."""
        targets = [SigningKey.generate()]
        root_keys = self.signers["root"]
        envelope = self._add_root(root_keys, root_keys, targets)
        self.signers["targets"] = targets
        return envelope

    def publish(
        self,
        model: str,
        version: str,
        onnx_bytes: bytes,
        *,
        files: dict[str, bytes] | None = None,
    ) -> PublishedVersion:
        """Store a version's files (compressed) and build its manifest and metadata."""
        all_files = {MODEL_FILE: onnx_bytes, **(files or {})}
        entries = []
        for path, raw in all_files.items():
            packed = compress(raw)
            digest = sha256_digest(raw)
            self._raw[digest], self._published[digest] = raw, packed
            self._served[digest] = packed
            entries.append(FileEntry(path, digest, len(raw), sha256_digest(packed), len(packed)))
        metadata = {"description": f"{model} {version}", "training": {"dataset": "synthetic"}}
        manifest = Manifest(
            model=model,
            version=version,
            format="onnx",
            files=tuple(entries),
            metadata_digest=metadata_digest(metadata),
            parent=None,
            branch="main",
            created_at=format_time(utcnow()),
        )
        published = PublishedVersion(manifest, metadata, all_files)
        self.versions[(model, version)] = published
        return published

    def manifest_envelope(self, model: str, version: str) -> dict[str, Any]:
        """The manifest of a published version, signed now by the targets signers."""
        return sign_envelope(
            self.versions[(model, version)].manifest.to_dict(), self.signers["targets"]
        )

    def target(self, model: str, version: str, alias: str | None = "production") -> ModelTarget:
        """The fleet state entry naming a published version."""
        envelope = self.manifest_envelope(model, version)
        digest = self.versions[(model, version)].digest
        return ModelTarget(version, alias, digest, envelope_size(envelope))

    def assign(self, model: str, version: str) -> int:
        """Make the fleet serve ``version`` of ``model``: a new state with serial + 1."""
        self.state.models[model] = self.target(model, version)
        self.state.serial += 1
        return self.state.serial

    def fleet_state_envelope(self) -> dict[str, Any]:
        """The fleet state, signed now by the targets signers."""
        return sign_fleet_state(self.state.document(), self.signers["targets"])

    def _by_digest(self, digest: str) -> PublishedVersion | None:
        return next((v for v in self.versions.values() if v.digest == digest), None)

    def documents(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(fleet state envelope, manifests, metadata) as a sync answer carries them."""
        state = self.fleet_state_envelope()
        manifests: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        for target in self.state.models.values():
            digest = target.manifest_digest
            published = self._by_digest(digest)
            if digest in self.manifest_overrides:
                manifests[digest] = self.manifest_overrides[digest]
            elif published is not None:
                manifests[digest] = self.manifest_envelope(published.model, published.version)
            if published is not None:
                metadata[digest] = published.metadata
        return state, manifests, metadata

    # blobs

    def blob(self, digest: str) -> bytes:
        """The compressed bytes served for ``digest`` now."""
        return self._served[digest]

    def tamper_blob(self, digest: str) -> bytes:
        """Serve a valid zstd frame of the signed length whose content differs by one byte.

        The length is the signed ``zsize``, so only the digests can tell.
        """
        raw, zsize = self._raw[digest], len(self._published[digest])
        for i in range(len(raw) // 2, min(len(raw), len(raw) // 2 + 4096)):
            changed = compress(raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :])
            if len(changed) == zsize:
                self._served[digest] = changed
                return changed
        raise AssertionError(f"no one-byte change of {digest} compresses to {zsize} bytes")

    def extra_bytes(self, digest: str, n: int = 1 << 30, *, announce: bool = False) -> None:
        """Send ``n`` bytes more than the blob (endless data); ``announce`` them or not."""
        self._extra[digest] = (n, announce)

    def restore_blob(self, digest: str) -> None:
        """Serve the signed bytes of ``digest`` again."""
        self._served[digest] = self._published[digest]
        self._extra.pop(digest, None)

    def blobs_of(self, model: str, version: str) -> list[str]:
        return [f.digest for f in self.versions[(model, version)].manifest.files]

    # bundles and provisioning

    def bundle(self, path: Path) -> Path:
        """Write a bundle of the current documents and the blobs they name."""
        state, manifests, metadata = self.documents()
        with tempfile.TemporaryDirectory() as tmp:
            blobs: list[tuple[str, Path]] = []
            for target in self.state.models.values():
                published = self._by_digest(target.manifest_digest)
                for entry in () if published is None else published.manifest.files:
                    stored = Path(tmp) / f"{parse_digest(entry.digest)}.zst"
                    stored.write_bytes(self._served[entry.digest])
                    blobs.append((entry.digest, stored))
            with open(path, "wb") as out:
                write_bundle(
                    out,
                    fleet=self.fleet,
                    created_at=format_time(utcnow()),
                    roots=self.roots,
                    fleet_state=state,
                    manifests=manifests,
                    metadata=metadata,
                    blobs=blobs,
                )
        return path

    def write_edge_toml(self, path: Path, data_dir: Path, listen: str, **overrides: Any) -> Path:
        """Write a valid ``edge.toml`` for this central with short test timings."""
        values: dict[str, Any] = {
            "central_url": self.url,
            "device_id": self.device_id,
            "token": self.token,
            "fleet": self.fleet,
            "trusted_root": json.dumps(self.root_envelope()),
            "data_dir": str(data_dir),
            "listen": listen,
            "sync_wait_seconds": 1.0,
            "sync_backoff_initial_seconds": 0.2,
            "sync_backoff_max_seconds": 1.0,
            "report_interval_seconds": 1.0,
            "request_timeout_seconds": 5.0,
            "log_level": "info",
        }
        values.update(overrides)
        path.write_text(render_toml(values), encoding="utf-8")
        return path

    # the HTTP side

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        record = RequestRecord(request.method, request.path, dict(request.query), headers)
        self.requests.append(record)
        request[_RECORD] = record
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            record.status = 401
            return _error(401, "unauthenticated", "expected the device's bearer token")
        faults = self.faults
        if faults.status is not None and faults.applies(request.path):
            record.status = faults.status
            return _error(faults.status, "unavailable", "the simulator is told to fail")
        response = await handler(request)
        if record.status is None:
            record.status = response.status
        return response

    def _news(self) -> int:
        """The change sequence: bumped whenever what a sync would carry changes."""
        state, manifests, metadata = self.documents()
        everything = {"roots": self.roots, "state": state, "m": manifests, "md": metadata}
        key = hashlib.sha256(canonical_json(everything, allow_floats=True)).digest()
        if key != self._last_key:
            self._last_key = key
            self._seq += 1
        return self._seq

    async def _sync(self, request: web.Request) -> web.StreamResponse:
        try:
            since = int(request.query.get("since", "0"))
            wait = float(request.query.get("wait", "0"))
            root = int(request.query.get("root", "0"))
        except ValueError:
            return _error(400, "invalid", "since, wait and root must be numbers")
        deadline = time.monotonic() + min(max(wait, 0.0), self.max_wait)
        while self._news() <= since and time.monotonic() < deadline and not self._closing:
            await asyncio.sleep(POLL_SECONDS)
        seq = self._news()
        answer: dict[str, Any] = {
            "cursor": seq,
            "roots": [r for r in self.roots if r["signed"]["version"] > root],
            "fleet_state": None,
            "manifests": {},
            "metadata": {},
        }
        if seq > since:
            answer["fleet_state"], answer["manifests"], answer["metadata"] = self.documents()
        body = json.dumps(answer).encode()
        faults = self.faults
        if faults.reset_mid_body and faults.applies(request.path):
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(body)
            await response.prepare(request)
            await self._send(request, response, body, 0, 0, faults)
            return response
        return web.Response(body=body, content_type="application/json")

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        data = self._served.get(digest)
        if data is None:
            return _error(404, "not_found", f"no blob {digest}")
        etag = f'"{parse_digest(sha256_digest(self._published[digest]))}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "application/zstd"}
        extra, announce = self._extra.get(digest, (0, True))
        start, status = 0, 200
        wanted, if_range = request.headers.get("Range"), request.headers.get("If-Range")
        if wanted and (if_range is None or if_range.strip() == etag):
            # devices resume with "bytes=N-"; the end of a range is ignored
            start = int(wanted.strip().removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return _error(416, "range_not_satisfiable", f"range {wanted} outside the blob")
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        response = web.StreamResponse(status=status, headers=headers)
        if announce:
            response.content_length = len(data) + extra - start
        await response.prepare(request)
        faults = self.faults if self.faults.applies(request.path) else Faults()
        await self._send(request, response, data, start, extra, faults)
        return response

    async def _send(
        self,
        request: web.Request,
        response: web.StreamResponse,
        data: bytes,
        start: int,
        extra: int,
        faults: Faults,
    ) -> None:
        """Write ``data[start:]`` and ``extra`` zero bytes, misbehaving as ``faults`` say."""
        record, end = request[_RECORD], len(data) + extra
        cut = None
        if faults.reset_mid_body:
            cut = faults.stall_after if faults.stall_after is not None else len(data) // 2
        stall = None if faults.reset_mid_body else faults.stall_after
        offset = start
        try:
            while offset < end:
                if cut is not None and offset >= cut:
                    record.outcome = "reset"
                    if request.transport is not None:
                        request.transport.abort()
                    return
                if stall is not None and offset >= stall:
                    record.outcome = "stalled"
                    await self._hold(request, faults)
                    stall = None
                limits = [b - offset for b in (cut, stall) if b is not None and b > offset]
                chunk = _piece(data, offset, min(CHUNK, end - offset, *limits))
                await response.write(chunk)
                offset += len(chunk)
                record.sent += len(chunk)
                if faults.throttle_bytes_per_second:
                    await asyncio.sleep(len(chunk) / faults.throttle_bytes_per_second)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            record.outcome = "client-gone"

    async def _hold(self, request: web.Request, faults: Faults) -> None:
        deadline = time.monotonic() + STALL_SECONDS
        while self.faults is faults and not self._closing and time.monotonic() < deadline:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client went away during a stall")
            await asyncio.sleep(POLL_SECONDS)

    async def _report(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["device"] != self.device_id:
            return _error(403, "forbidden", "a device reports only for itself")
        body = await request.json()
        self.reports.append(body)
        return web.json_response({})


def _piece(data: bytes, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` of ``data`` followed by endless zeros."""
    if offset < len(data):
        return data[offset : min(offset + size, len(data))]
    return bytes(size)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


# -- the real agent as a process --------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO_ROOT), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class AgentProcess:
    """``python -m shared.cli edge run --config edge.toml`` on 127.0.0.1.

    Its output goes to ``log_path``; failures of the bounded waits show its tail.
    """

    def __init__(self, config: Path, *, data_dir: Path, port: int, log_path: Path) -> None:
        self.config, self.data_dir, self.port, self.log_path = config, data_dir, port, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_simulator(cls, sim: CentralSimulator, workdir: Path, **overrides: Any) -> AgentProcess:
        """Configure an agent of ``sim``'s fleet in ``workdir`` on a free port."""
        workdir.mkdir(parents=True, exist_ok=True)
        port, data_dir = free_port(), workdir / "data"
        config = sim.write_edge_toml(
            workdir / "edge.toml", data_dir, f"127.0.0.1:{port}", **overrides
        )
        return cls(config, data_dir=data_dir, port=port, log_path=workdir / "agent.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sideload_dir(self) -> Path:
        return self.data_dir / "sideload"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self, timeout: float = START_TIMEOUT) -> AgentProcess:
        """Start the agent and wait (bounded) until ``/v2/health/live`` answers 200."""
        assert not self.running, "the agent is already running"
        cmd = [sys.executable, "-m", "shared.cli", "edge", "run", "--config", str(self.config)]
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd, env=_env(), cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(
                    f"the agent exited with {code} while starting\n{self.log_tail()}"
                )
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with aiohttp.ClientSession() as session:
                    url = f"{self.url}/v2/health/live"
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return self
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the agent was not live after {timeout} s\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    async def stop(self, *, check: bool = True) -> int | None:
        """SIGTERM, wait up to 10 s, then SIGKILL. With ``check``, demand a clean exit."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            if check:
                raise AssertionError(
                    f"the agent ignored SIGTERM for {STOP_TIMEOUT:.0f} s\n{self.log_tail()}"
                ) from None
            return proc.returncode
        if check:
            assert code == 0, f"the agent exited {code} on SIGTERM\n{self.log_tail()}"
        return code

    def kill(self) -> None:
        """SIGKILL the agent (a crash) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def request(
        self, method: str, path: str, body: Any = None, *, timeout: float = 10.0
    ) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, self.url + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp,
        ):
            return resp.status, await resp.json(content_type=None)

    async def status(self) -> dict[str, Any]:
        code, body = await self.request("GET", "/skiff/status")
        assert code == 200, f"/skiff/status answered {code}: {body}"
        result: dict[str, Any] = body
        return result

    async def wait_until(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 15.0, what: str = ""
    ) -> dict[str, Any]:
        """Poll ``/skiff/status`` until ``predicate`` holds; fail with the log after ``timeout``."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            assert self.running, f"the agent died\n{self.log_tail()}"
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                last = await self.status()
                if predicate(last):
                    return dict(last)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"waited {timeout} s for {what or predicate}; last status:\n"
                    f"{json.dumps(last, indent=1)}\n{self.log_tail()}"
                )
            await asyncio.sleep(0.1)

    async def infer(self, model: str, x: Iterable[float] = (1.0, 1.0, 1.0)) -> list[float]:
        """Run one row through ``model``; return output ``Y``."""
        values = list(x)
        body = {
            "inputs": [{"name": "X", "shape": [1, len(values)], "datatype": "FP32", "data": values}]
        }
        code, answer = await self.request("POST", f"/v2/models/{model}/infer", body)
        assert code == 200, f"infer {model} answered {code}: {answer}\n{self.log_tail()}"
        output = next(o for o in answer["outputs"] if o["name"] == "Y")
        return [float(v) for v in output["data"]]

    def partial_files(self) -> list[Path]:
        """What partial downloads left: output so far, resume marks, compressed bytes."""
        return sorted((self.data_dir / "partial").glob("*"))

    def resume_mark(self, digest: str) -> dict[str, Any] | None:
        """The frame end a partial download of ``digest`` would resume from, if any."""
        mark = self.data_dir / "partial" / f"{parse_digest(digest)}.resume"
        try:
            doc: dict[str, Any] = json.loads(mark.read_text())
        except FileNotFoundError:
            return None
        return doc

    def blob_file(self, digest: str) -> Path:
        hexd = parse_digest(digest)
        return self.data_dir / "blobs" / "sha256" / hexd[:2] / hexd

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self) -> str:
        return f"--- agent log {self.log_path} (tail)\n" + self.log_text()[-LOG_TAIL_CHARS:]


class AgentPool:
    """Agents of one test; ``aclose`` stops every one and prints their logs (shown on failure)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.agents: list[AgentProcess] = []

    def new(self, sim: CentralSimulator, name: str = "agent", **overrides: Any) -> AgentProcess:
        agent = AgentProcess.for_simulator(sim, self.workdir / name, **overrides)
        self.agents.append(agent)
        return agent

    async def aclose(self) -> None:
        for agent in self.agents:
            await agent.stop(check=False)
            agent.kill()
            print(agent.log_tail())


def serving(status: dict[str, Any], model: str) -> str | None:
    """The version a status says ``model`` serves."""
    slot = next((s for s in status["slots"] if s["model"] == model), None)
    return None if slot is None else slot["serving"]


def slot_of(status: dict[str, Any], model: str) -> dict[str, Any]:
    return next(s for s in status["slots"] if s["model"] == model)
