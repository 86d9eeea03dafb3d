"""Edge telemetry reaches central: counted per version, kept while offline, never twice."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.edge_harness import Agent, point, publish, setup_fleet
from tests.onnx_models import ORT_DATASETS
from tests.support import CentralProcess, api, api_ok, run_skiff

FAST = {"telemetry_interval_seconds": 0.5}


def _summary(central: CentralProcess, model: str, version: str) -> dict[str, Any]:
    return dict(api_ok(central, "GET", f"/api/v1/models/{model}/versions/{version}/telemetry"))


def _wait_requests(central: CentralProcess, model: str, version: str, n: int) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    summary = _summary(central, model, version)
    while summary["requests"] < n and time.monotonic() < deadline:
        time.sleep(0.2)
        summary = _summary(central, model, version)
    return summary


def test_requests_errors_and_latency_per_version(
    central: CentralProcess, fleet: Callable[..., Agent]
) -> None:
    setup_fleet(central, fleet, "m")
    agent = fleet(**FAST).start()
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="v1")
    for _ in range(30):
        agent.infer("m")
    point(central, "m", "2.0.0")
    agent.wait_for(lambda s: any(x["serving"] == "2.0.0" for x in s["slots"]), what="v2")
    for _ in range(12):
        agent.infer("m")
    v1 = _wait_requests(central, "m", "1.0.0", 30)
    v2 = _wait_requests(central, "m", "2.0.0", 12)
    assert (v1["requests"], v1["errors"], v1["devices"]) == (30, 0, 1)
    assert (v2["requests"], v2["errors"]) == (12, 0)
    assert 0 < v1["latency_ms"]["p50"] <= v1["latency_ms"]["p99"]
    assert sum(v1["latency_buckets"]) == 30
    # the numeric output Y (= 6.0 for v1, 12.0 for v2) in its fixed log-scale bins
    for summary, y in ((v1, 6.0), (v2, 12.0)):
        hist = summary["outputs"]["Y"]
        edges, counts = hist["edges"], hist["counts"]
        assert sum(counts) == summary["requests"]
        (bin_index,) = [i for i, n in enumerate(counts) if n]
        assert edges[bin_index - 1] <= y < edges[bin_index]


def test_predicted_classes_are_counted(
    central: CentralProcess, fleet: Callable[..., Agent]
) -> None:
    publish(central, "iris", "1.0.0", (ORT_DATASETS / "logreg_iris.onnx").read_bytes())
    point(central, "iris", "1.0.0")
    run_skiff("fleet", "assign", fleet.fleet, "iris", env=central.env)  # type: ignore[attr-defined]
    agent = fleet(**FAST).start()
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="iris")
    body = {
        "inputs": [
            {
                "name": "float_input",
                "shape": [3, 2],
                "datatype": "FP32",
                "data": [5.1, 3.5, 6.7, 3.1, 5.9, 3.0],
            }
        ]
    }
    answer = agent.post("/v2/models/iris/infer", body)
    labels = [str(v) for v in answer["outputs"][0]["data"]]
    summary = _wait_requests(central, "iris", "1.0.0", 1)
    assert sum(summary["classes"].values()) == 3
    assert set(summary["classes"]) == set(labels)


def test_offline_telemetry_arrives_later_and_is_counted_once(
    central: CentralProcess, fleet: Callable[..., Agent]
) -> None:
    setup_fleet(central, fleet, "m")
    agent = fleet(**FAST).start()
    agent.wait_for(lambda s: any(x["serving"] == "1.0.0" for x in s["slots"]), what="v1")
    central.stop()
    for _ in range(25):
        agent.infer("m")
    time.sleep(1.5)  # several flush intervals with central gone: batches wait in the outbox
    assert agent.stop() == 0  # and survive a restart
    outbox = agent.data_dir / "cache.db"
    with sqlite3.connect(outbox) as db:
        queued = db.execute("SELECT body FROM telemetry_outbox").fetchall()
    assert queued, "nothing was buffered while offline"
    agent.start()
    central.start()
    summary = _wait_requests(central, "m", "1.0.0", 25)
    assert summary["requests"] == 25
    # the same batch sent again (an upload whose answer was lost) is not counted twice
    device = agent.device_token()
    replay = {"batches": [json.loads(queued[0][0])]}
    resp = api(
        central, "POST", f"/api/v1/devices/{agent.device_id}/telemetry", json=replay, token=device
    )
    assert resp.status == 200 and resp.json()["duplicates"] == 1
    time.sleep(1.0)
    assert _summary(central, "m", "1.0.0")["requests"] == 25


@pytest.mark.parametrize(
    "body",
    [
        {"batches": "nope"},
        {"batches": [{"batch_id": "x", "window_start": "t", "window_end": "t", "versions": []}]},
        {
            "batches": [
                {
                    "batch_id": "abcdefgh",
                    "window_start": "2026-01-01T00:00:00Z",
                    "window_end": "2026-01-01T00:00:10Z",
                    "versions": [
                        {
                            "model": "m",
                            "version": "1.0.0",
                            "requests": 1,
                            "errors": 2,
                            "latency": [1],
                            "classes": {},
                        }
                    ],
                }
            ]
        },
    ],
    ids=["not-a-list", "bad-times", "errors-exceed-requests"],
)
def test_malformed_telemetry_is_refused(
    central: CentralProcess, fleet: Callable[..., Agent], body: dict[str, Any]
) -> None:
    setup_fleet(central, fleet, "m")
    agent = fleet(**FAST)
    resp = api(
        central,
        "POST",
        f"/api/v1/devices/{agent.device_id}/telemetry",
        json=body,
        token=agent.device_token(),
    )
    assert resp.status == 400
    assert "telemetry" in resp.error()["message"] or "batches" in resp.error()["message"]
    assert api(central, "GET", "/api/v1/models/m/versions/1.0.0/telemetry").json()["requests"] == 0


def test_only_the_device_itself_may_send(
    central: CentralProcess, fleet: Callable[..., Agent]
) -> None:
    setup_fleet(central, fleet, "m")
    one, other = fleet(**FAST), fleet(**FAST)
    resp = api(
        central,
        "POST",
        f"/api/v1/devices/{other.device_id}/telemetry",
        json={"batches": []},
        token=one.device_token(),
    )
    assert resp.status == 403
    resp = api(
        central, "POST", f"/api/v1/devices/{one.device_id}/telemetry", json={"batches": []}
    )  # the admin token is not a device
    assert resp.status == 403
