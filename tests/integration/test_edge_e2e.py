"""The whole loop with real processes: central, the skiff CLI and edge agents on loopback.

A fleet follows ``production``; moving the alias makes every agent hot-swap; agents
keep serving with central gone; a corrupted blob or a broken model never replaces
what is served; bundles reach an agent with no network; key rotations are followed.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.edge_harness import (
    Agent,
    nan_model,
    point,
    publish,
    setup_fleet,
    y_of,
)
from tests.onnx_models import linear_model
from tests.support import CentralProcess, api_ok, free_port, run_skiff


def test_enrolled_agent_serves_and_follows_the_alias(
    central: CentralProcess, fleet: Callable[..., Agent]
) -> None:
    setup_fleet(central, fleet, "m")
    agent = fleet().start()
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="v1")
    assert y_of(agent.infer("m")) == pytest.approx(6.0)
    point(central, "m", "2.0.0")
    started = time.monotonic()
    agent.wait_for(lambda s: any(x["serving"] == "2.0.0" for x in s["slots"]), what="v2")
    assert time.monotonic() - started < 10
    assert y_of(agent.infer("m")) == pytest.approx(12.0)
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
    # SIGUSR2 writes every thread's stack to the log (where a stuck agent waits); the
    # agent goes on serving.
    logged = agent.log.stat().st_size
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 10
    # the dump is written as it goes: wait for the event loop's thread, in daemon.py
    while "edge_agent/daemon.py" not in agent.log.read_text()[logged:]:
        assert time.monotonic() < deadline, agent.log.read_text()[-3000:]
        time.sleep(0.1)
    assert "most recent call first" in agent.log.read_text()[logged:]
    assert y_of(agent.infer("m")) == pytest.approx(12.0)
    assert agent.stop() == 0


def test_twenty_swaps_under_load_drop_no_request(
    central: CentralProcess, fleet: Callable[..., Agent]
) -> None:
    setup_fleet(central, fleet, "m")
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
                answers.add(round(y_of(agent.infer("m")), 3))
            except Exception as e:  # any failure is what this test is about
                failures.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            version = "2.0.0" if i % 2 == 0 else "1.0.0"
            point(central, "m", version)
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
    setup_fleet(central, fleet, "m")
    agent = fleet().start()
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="v1")
    central.stop()
    time.sleep(1.5)  # a few failed syncs
    assert y_of(agent.infer("m")) == pytest.approx(6.0)
    status = agent.wait_for(lambda s: not s["connected"], what="the agent to notice")
    assert status["slots"][0]["serving"] == "1.0.0"
    # restarted with central still down: serves from its cache
    assert agent.stop() == 0
    started = time.monotonic()
    agent.start()
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="cache")
    assert time.monotonic() - started < 15
    assert y_of(agent.infer("m")) == pytest.approx(6.0)
    # central comes back: the agent catches up by itself
    central.start()
    point(central, "m", "2.0.0")
    agent.wait_for(
        lambda s: any(x["serving"] == "2.0.0" for x in s["slots"]), what="v2", timeout=30
    )


def test_corrupted_blob_on_central_is_rejected(
    central: CentralProcess, fleet: Callable[..., Agent]
) -> None:
    setup_fleet(central, fleet, "m")
    agent = fleet().start()
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="v1")
    v3 = publish(central, "m", "3.0.0", linear_model(3.0))
    digest = v3["files"][0]["digest"]
    stored = central.data_dir / "blobs" / "sha256" / digest[7:9] / f"{digest[7:]}.zst"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(stored, 0o600)
    stored.write_bytes(bytes(data))
    point(central, "m", "3.0.0")
    status = agent.wait_for(
        lambda s: any("3.0.0" in e["where"] for e in s["errors"]),
        what="the corrupt blob to be rejected",
    )
    assert status["slots"][0]["serving"] == "1.0.0"
    assert y_of(agent.infer("m")) == pytest.approx(6.0)
    assert not list((agent.config.parent / agent.config.stem / "blobs").rglob(digest[7:]))


def test_nan_model_is_rolled_back_locally_and_reported(
    central: CentralProcess, fleet: Callable[..., Agent], tmp_path: Path
) -> None:
    publish(central, "m", "1.0.0", linear_model(1.0))
    point(central, "m", "1.0.0")
    run_skiff("fleet", "assign", fleet.fleet, "m", env=central.env)  # type: ignore[attr-defined]
    agent = fleet().start()
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="v1")
    path = tmp_path / "nan.onnx"
    path.write_bytes(nan_model())
    run_skiff("push", "m", str(path), "--version", "1.2.0", env=central.env)
    point(central, "m", "1.2.0")
    status = agent.wait_for(lambda s: s["slots"][0]["bad_versions"], what="a bad version")
    assert "1.2.0" in status["slots"][0]["bad_versions"]
    assert "not finite" in status["slots"][0]["bad_versions"]["1.2.0"]
    assert status["slots"][0]["serving"] == "1.0.0"
    assert y_of(agent.infer("m")) == pytest.approx(6.0)
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
    setup_fleet(central, fleet, "m")
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
    assert y_of(agent.infer("m")) == pytest.approx(6.0)
    # the bundle is moved aside once every blob it carries has been checked too
    filed = sideload / "imported" / "site.skiff.result.json"
    deadline = time.monotonic() + 10
    while not filed.exists():
        assert time.monotonic() < deadline, agent.log.read_text()[-3000:]
        time.sleep(0.1)
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
    setup_fleet(central, fleet, "m")
    agent = fleet().start()
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="v1")
    run_skiff("keys", "rotate", "--role", "targets", env=central.env)
    run_skiff("keys", "rotate", "--role", "root", env=central.env)
    agent.wait_for(lambda s: s["root_version"] == 3, what="root version 3")
    point(central, "m", "2.0.0")  # signed with the new targets key
    agent.wait_for(lambda s: any(x["serving"] == "2.0.0" for x in s["slots"]), what="v2")
    # and after a restart the rotated chain is still trusted
    assert agent.stop() == 0
    agent.start()
    status = agent.wait_for(
        lambda s: any(x["serving"] == "2.0.0" for x in s["slots"]), what="v2 from cache"
    )
    assert status["root_version"] == 3
    assert status["errors"] == []
