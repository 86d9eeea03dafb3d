"""The edge agent without central: serving from cache, sideloaded bundles, resumed downloads.

Each test starts from an agent that serves version 1.0.0 of one model, then takes the
network away (central stopped, or ``central_url`` pointing at a closed port) or kills
the agent in the middle of a download, and checks what it serves afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.codec import FRAME_SIZE
from shared.digest import parse_digest
from shared.errors import RepositoryError
from shared.fleet import BlobVerifier
from shared.timeutil import utcnow
from tests.edge.conftest import wait_for
from tests.simulator import (
    AgentPool,
    AgentProcess,
    CentralSimulator,
    Faults,
    large_model,
    linear_model,
    serving,
)

MODEL = "demo"
V1, V2 = "1.0.0", "2.0.0"
V1_OUT, V2_OUT = [6.0], [12.0]
SERVE_FROM_CACHE_SECONDS = 10.0


async def serving_v1(
    sim: CentralSimulator, agents: AgentPool, **overrides: Any
) -> tuple[AgentProcess, dict[str, Any]]:
    sim.publish(MODEL, V1, linear_model(1.0))
    sim.assign(MODEL, V1)
    agent = await agents.new(sim, **overrides).start()
    status = await agent.wait_until(lambda s: serving(s, MODEL) == V1, what="1.0.0 served")
    assert await agent.infer(MODEL) == V1_OUT
    return agent, status


async def cut_network(sim: CentralSimulator) -> None:
    """Stop central: the agent's ``central_url`` now points at a closed port."""
    await sim.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", sim.port), timeout=1).close()


def drop_in(bundle: Path, folder: Path) -> Path:
    """Move a finished bundle into the sideload folder in one rename."""
    target = folder / bundle.name
    os.replace(bundle, target)
    return target


def result_of(agent: AgentProcess, outcome: str, name: str) -> dict[str, Any]:
    moved = agent.sideload_dir / outcome / name
    assert moved.is_file(), (
        f"{moved} is missing; sideload holds {sorted(agent.sideload_dir.rglob('*'))}"
    )
    result: dict[str, Any] = json.loads(moved.with_name(name + ".result.json").read_text())
    return result


def moved_to(agent: AgentProcess, outcome: str, name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda _status: (agent.sideload_dir / outcome / f"{name}.result.json").is_file()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


async def test_restart_without_central_serves_v1_from_cache(
    sim: CentralSimulator, agents: AgentPool
) -> None:
    agent, before = await serving_v1(sim, agents)
    await agent.stop()
    await sim.stop()

    started = time.monotonic()
    await agent.start()
    assert await agent.infer(MODEL) == V1_OUT
    assert time.monotonic() - started < SERVE_FROM_CACHE_SECONDS

    status = await agent.status()
    assert serving(status, MODEL) == V1
    assert status["fleet_serial"] == before["fleet_serial"]
    assert status["connected"] is False
    assert status["errors"] == []


async def test_cached_state_that_expired_offline_keeps_serving(
    sim: CentralSimulator, agents: AgentPool
) -> None:
    """Freeze protection stops installing, never serving what the cache holds."""
    agent, _ = await serving_v1(sim, agents)
    sim.state.expires = (utcnow() + timedelta(seconds=3)).replace(microsecond=0)
    sim.state.serial += 1
    before = await agent.wait_until(
        lambda s: s["fleet_serial"] == sim.state.serial, what="a state that expires soon"
    )
    await asyncio.sleep(max(0.0, (sim.state.expires - utcnow()).total_seconds()) + 0.1)
    await cut_network(sim)
    await agent.stop()
    await agent.start()

    status = await agent.status()
    assert serving(status, MODEL) == V1
    assert status["fleet_serial"] == before["fleet_serial"]
    assert datetime.fromisoformat(status["fleet_state_expires"]) <= utcnow()
    assert status["errors"] == []
    assert await agent.infer(MODEL) == V1_OUT


async def test_sideloaded_bundle_installs_v2_without_network(
    sim: CentralSimulator, agents: AgentPool, tmp_path: Path
) -> None:
    agent, _ = await serving_v1(sim, agents)
    await cut_network(sim)
    sim.publish(MODEL, V2, linear_model(2.0))
    serial = sim.assign(MODEL, V2)

    drop_in(sim.bundle(tmp_path / "update.skiff"), agent.sideload_dir)

    status = await agent.wait_until(lambda s: serving(s, MODEL) == V2, what="2.0.0 from the bundle")
    assert status["fleet_serial"] == serial
    assert await agent.infer(MODEL) == V2_OUT
    await agent.wait_until(moved_to(agent, "imported", "update.skiff"), what="bundle moved")
    result = result_of(agent, "imported", "update.skiff")
    assert result["outcome"] == "imported"
    assert result["fleet_serial"] == serial
    assert listing(agent.sideload_dir / "rejected") == []
    assert not (agent.sideload_dir / "update.skiff").exists()


def flip_blob_byte(sim: CentralSimulator, bundle: Path) -> tuple[str, str]:
    """Flip one byte in the middle of the 2.0.0 blob member; the error that must follow."""
    entry = sim.versions[(MODEL, V2)].entry()
    with tarfile.open(bundle) as tar:
        member = tar.getmember(f"blobs/{parse_digest(entry.digest)}.zst")
    at = member.offset_data + member.size // 2
    with open(bundle, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0xFF]))
    flipped = bytearray(sim.blob(entry.digest))
    flipped[member.size // 2] ^= 0xFF
    verifier = BlobVerifier(entry)
    try:
        verifier.feed(bytes(flipped))
        verifier.finish()
    except RepositoryError as e:
        return type(e).__name__, str(e)
    raise AssertionError("flipping a byte went unnoticed by the verifier")


def blob_byte_flipped(sim: CentralSimulator, path: Path) -> tuple[str, str]:
    sim.publish(MODEL, V2, linear_model(2.0))
    sim.assign(MODEL, V2)
    return flip_blob_byte(sim, sim.bundle(path))


def lower_serial(sim: CentralSimulator, path: Path) -> tuple[str, str]:
    trusted = sim.state.serial
    sim.state.serial -= 1
    sim.bundle(path)
    return "RollbackError", f"Expected serial >= {trusted}, got {trusted - 1}"


def unsigned_state(sim: CentralSimulator, path: Path) -> tuple[str, str]:
    sim.publish(MODEL, V2, linear_model(2.0))
    sim.assign(MODEL, V2)
    sim.signers["targets"].clear()
    sim.bundle(path)
    return "UnsignedError", "signed by 0 of the required 1 keys for role targets"


@dataclass(frozen=True)
class BadBundle:
    name: str
    make: Callable[[CentralSimulator, Path], tuple[str, str]]  # -> (error type, message)
    serial_advances: bool | None = False  # None: the state may be trusted or not


BAD_BUNDLES = [
    BadBundle("blob_byte_flipped", blob_byte_flipped, serial_advances=None),
    BadBundle("lower_serial", lower_serial),
    BadBundle("unsigned_state", unsigned_state),
]


@pytest.mark.parametrize("bad", BAD_BUNDLES, ids=lambda b: b.name)
async def test_bad_bundle_is_rejected_and_serving_unchanged(
    bad: BadBundle, sim: CentralSimulator, agents: AgentPool, tmp_path: Path
) -> None:
    agent, before = await serving_v1(sim, agents)
    await cut_network(sim)
    error_type, message = bad.make(sim, tmp_path / "bad.skiff")

    drop_in(tmp_path / "bad.skiff", agent.sideload_dir)

    status = await agent.wait_until(
        lambda s: (
            (agent.sideload_dir / "imported" / "bad.skiff.result.json").is_file()
            or (agent.sideload_dir / "rejected" / "bad.skiff.result.json").is_file()
        ),
        what="the bundle moved aside",
    )
    assert listing(agent.sideload_dir / "imported") == [], "a bad bundle was filed as imported"
    result = result_of(agent, "rejected", "bad.skiff")
    assert (result["outcome"], result["error_type"], result["error"]) == (
        "rejected",
        error_type,
        message,
    )
    status = await agent.status()
    assert serving(status, MODEL) == V1
    # a validly signed state may stay trusted though a blob it names is bad (as over the network)
    allowed = {before["fleet_serial"]} if bad.serial_advances is False else {sim.state.serial}
    if bad.serial_advances is None:
        allowed.add(before["fleet_serial"])
    assert status["fleet_serial"] in allowed
    assert any(
        e["where"] == "sideload bad.skiff" and e["error"] == message for e in status["errors"]
    )
    assert await agent.infer(MODEL) == V1_OUT


@pytest.mark.parametrize(
    ("pieces", "pause"),
    [
        pytest.param(6, 0.3, id="steady_copy"),
        # a medium that stalls for longer than the agent's settle time (a USB stick flushing)
        pytest.param(2, 2.5, id="copy_stalling_longer_than_settle_time"),
    ],
)
async def test_bundle_copied_slowly_is_imported_once_complete(
    pieces: int, pause: float, sim: CentralSimulator, agents: AgentPool, tmp_path: Path
) -> None:
    agent, _ = await serving_v1(sim, agents)
    await cut_network(sim)
    sim.publish(MODEL, V2, linear_model(2.0))
    serial = sim.assign(MODEL, V2)
    data = sim.bundle(tmp_path / "slow.skiff").read_bytes()

    step = -(-len(data) // pieces)
    with open(agent.sideload_dir / "slow.skiff", "wb") as f:
        for i in range(pieces):
            f.write(data[i * step : (i + 1) * step])
            f.flush()
            await asyncio.sleep(pause)
            if i == pieces - 1:
                break  # complete now: the agent may import it at any moment
            status = await agent.status()
            assert serving(status, MODEL) == V1
            assert listing(agent.sideload_dir / "rejected") == [], "read half-way and rejected"

    status = await agent.wait_until(lambda s: serving(s, MODEL) == V2, what="2.0.0 from the bundle")
    assert status["fleet_serial"] == serial
    await agent.wait_until(moved_to(agent, "imported", "slow.skiff"), what="bundle moved")
    assert result_of(agent, "imported", "slow.skiff")["outcome"] == "imported"
    assert listing(agent.sideload_dir / "rejected") == []
    assert not any("sideload" in e["where"] for e in status["errors"])
    assert await agent.infer(MODEL) == V2_OUT


async def test_sigkill_mid_download_resumes_with_range(
    sim: CentralSimulator, agents: AgentPool
) -> None:
    agent, _ = await serving_v1(sim, agents, request_timeout_seconds=30.0)
    entry = sim.publish(MODEL, V2, large_model(2.0)).entry()
    blob_path = f"/api/v1/blobs/{entry.digest}"
    sim.faults = Faults(stall_after=20 * 1024 * 1024, only=blob_path)
    sim.assign(MODEL, V2)

    await wait_for(
        lambda: any(r.path == blob_path and r.outcome == "stalled" for r in sim.requests),
        "the download to stall",
        timeout=20.0,
    )
    await wait_for(
        lambda: (agent.resume_mark(entry.digest) or {}).get("plain", 0) >= 2 * FRAME_SIZE,
        "two frames of output on disk, and the mark to resume from",
    )
    assert serving(await agent.status(), MODEL) == V1
    assert await agent.infer(MODEL) == V1_OUT  # serving is not held up by the download

    agent.kill()
    mark = agent.resume_mark(entry.digest)
    assert mark is not None
    have = mark["compressed"]
    assert 0 < have < entry.zsize
    seen = len(sim.requests)
    sim.faults = Faults()
    await agent.start()

    status = await agent.wait_until(
        lambda s: serving(s, MODEL) == V2, timeout=30.0, what="2.0.0 after the restart"
    )
    resumed = [r for r in sim.requests[seen:] if r.path == blob_path]
    assert resumed, "no blob request after the restart"
    first = resumed[0]
    assert first.header("Range") == f"bytes={have}-"
    assert first.header("If-Range") == f'"{parse_digest(entry.zdigest)}"'
    assert first.status == 206
    assert first.sent == entry.zsize - have
    assert status["errors"] == []
    assert agent.partial_files() == []
    assert await agent.infer(MODEL) == V2_OUT
