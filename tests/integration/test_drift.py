"""Data drift end to end: reference pushed with the model, live inputs binned on a real
agent, PSI and KS on central, and a ``drift.alert`` change when a feature shifts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.edge_harness import Agent, point
from tests.integration.test_webhooks import Receiver, add_webhook
from tests.onnx_models import linear_model
from tests.support import CentralProcess, api, api_ok, put_blob, run_skiff, running_central

FAST = {"telemetry_interval_seconds": 0.5}
ROWS_PER_REQUEST = 50


@pytest.fixture
def central(tmp_path: Path) -> Iterator[CentralProcess]:
    """A central that checks drift every half second."""
    with running_central(tmp_path / "central", drift_check_seconds=0.5) as process:
        yield process


def _write_csv(path: Path, data: np.ndarray) -> Path:
    lines = ["a,b,c"] + [",".join(f"{v:.6f}" for v in row) for row in data]
    path.write_text("\n".join(lines) + "\n")
    return path


def _push_with_reference(central: CentralProcess, tmp_path: Path, model: str) -> None:
    rng = np.random.default_rng(7)
    reference = _write_csv(tmp_path / "reference.csv", rng.normal(size=(5000, 3)))
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(linear_model())
    run_skiff(
        "push", model, str(onnx_file), "--version", "1.0.0",
        "--reference-data", str(reference), env=central.env,
    )  # fmt: skip


def _send(agent: Agent, model: str, data: np.ndarray) -> None:
    for start in range(0, len(data), ROWS_PER_REQUEST):
        agent.infer(model, data[start : start + ROWS_PER_REQUEST].tolist())


def _drift(central: CentralProcess, model: str, *extra: str) -> dict[str, Any]:
    out = run_skiff("drift", "show", f"{model}@1.0.0", "--json", *extra, env=central.env)
    return dict(json.loads(out.stdout))


def _wait(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _drift_alerts(central: CentralProcess, model: str) -> list[dict[str, Any]]:
    page = api_ok(central, "GET", "/api/v1/changes?since=0&limit=1000")
    items = page["items"] if isinstance(page, dict) else page
    return [c for c in items if c["kind"] == "drift.alert" and c.get("model") == model]


def test_shifted_inputs_raise_a_drift_alert(
    central: CentralProcess, fleet: Callable[..., Agent], tmp_path: Path
) -> None:
    model = "drifty"
    receiver = Receiver().start()  # the retraining pipeline's endpoint
    add_webhook(central, receiver.url, ["drift.alert"])
    _push_with_reference(central, tmp_path, model)
    version = api_ok(central, "GET", f"/api/v1/models/{model}/versions/1.0.0")
    assert set(version["metadata"]["reference"]["features"]) == {"X[0]", "X[1]", "X[2]"}
    point(central, model, "1.0.0")
    run_skiff("fleet", "assign", fleet.fleet, model, env=central.env)  # type: ignore[attr-defined]
    agent = fleet(**FAST).start()
    agent.wait_for(lambda s: agent.serving(model) == "1.0.0", what="the model to serve")

    rng = np.random.default_rng(11)
    _send(agent, model, rng.normal(size=(600, 3)).astype(np.float32))
    report = _wait(
        lambda: (r := _drift(central, model))["features"]["X[0]"]["live_n"] >= 600 and r,
        "in-distribution telemetry",
    )
    assert {f["level"] for f in report["features"].values()} == {"ok"}, report
    assert report["level"] == "ok"
    assert list(report["devices"]) == [agent.device_id]
    assert not _drift_alerts(central, model)

    shifted = rng.normal(size=(600, 3)).astype(np.float32)
    shifted[:, 0] += 3.0
    _send(agent, model, shifted)
    report = _wait(
        lambda: (r := _drift(central, model))["features"]["X[0]"]["live_n"] >= 1200 and r,
        "shifted telemetry",
    )
    x0 = report["features"]["X[0]"]
    assert x0["level"] == "alert" and x0["psi"] > 0.25 and x0["ks"] > 0.2, report
    assert report["features"]["X[1]"]["level"] == "ok"
    assert report["devices"][agent.device_id]["features"]["X[0]"]["level"] == "alert"

    text = run_skiff("drift", "show", f"{model}@1.0.0", env=central.env).stdout
    assert "X[0]" in text and "alert" in text

    alerts = _wait(lambda: _drift_alerts(central, model), "a drift.alert change")
    assert len(alerts) == 1
    data = alerts[0]["data"]
    assert (data["feature"], data["version"], data["fleet"]) == ("X[0]", "1.0.0", fleet.fleet)  # type: ignore[attr-defined]
    assert data["psi"] > 0.25

    by_fleet = _drift(central, model, "--fleet", fleet.fleet)  # type: ignore[attr-defined]
    assert by_fleet["features"]["X[0]"]["level"] == "alert"
    elsewhere = _drift(central, model, "--fleet", "nowhere")
    assert elsewhere["features"]["X[0]"]["live_n"] == 0
    assert elsewhere["features"]["X[0]"]["level"] == "insufficient"
    time.sleep(1.5)  # further checks: still alerting, so no second alert
    assert len(_drift_alerts(central, model)) == 1
    # and the team heard of it: a signed drift.alert webhook, only that event
    try:
        got = receiver.wait_for(lambda r: bool(r), "the drift.alert webhook")
    finally:
        receiver.stop()
    assert [r.doc["event"] for r in got] == ["drift.alert"]
    assert got[0].signature_ok and got[0].fresh
    assert got[0].doc["data"]["data"]["feature"] == "X[0]"  # the change, as the log has it


def test_a_bad_reference_file_fails_the_push(central: CentralProcess, tmp_path: Path) -> None:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(linear_model())
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1.0,2.0,x\n")
    proc = run_skiff(
        "push", "m", str(onnx_file), "--reference-data", str(bad), env=central.env, check=False
    )
    assert proc.returncode == 1
    assert "reference data" in proc.stderr and "number" in proc.stderr
    wide = _write_csv(tmp_path / "wide.csv", np.zeros((10, 3)))
    wide.write_text(wide.read_text().replace("a,b,c", "a,b,c,d").replace("\n0", "\n0,0"))
    proc = run_skiff(
        "push", "m", str(onnx_file), "--reference-data", str(wide), env=central.env, check=False
    )
    assert proc.returncode == 1 and "4 columns" in proc.stderr, proc.stderr
    assert api(central, "GET", "/api/v1/models/m").status == 404


def test_a_malformed_reference_is_refused_by_central(central: CentralProcess) -> None:
    digest = put_blob(central, linear_model())
    body = {
        "files": [{"path": "model.onnx", "digest": digest}],
        "metadata": {
            "reference": {
                "features": {"X[0]": {"edges": [1.0, 0.0], "counts": [1, 1, 1]}},
                "rows": 3,
            }
        },
    }
    resp = api(central, "POST", "/api/v1/models/m/versions", json=body)
    assert resp.status == 400
    assert "metadata.reference" in resp.error()["message"]
    assert "strictly increasing" in resp.error()["message"]
    assert api(central, "GET", "/api/v1/models/m/versions/0.0.1").status == 404


def test_drift_of_a_version_without_reference_is_not_found(
    central: CentralProcess, tmp_path: Path
) -> None:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(linear_model())
    run_skiff("push", "plain", str(onnx_file), "--version", "1.0.0", env=central.env)
    resp = api(central, "GET", "/api/v1/models/plain/versions/1.0.0/drift")
    assert resp.status == 404 and "--reference-data" in resp.error()["message"]
    resp = api(central, "GET", "/api/v1/models/plain/versions/9.9.9/drift")
    assert resp.status == 404 and "does not exist" in resp.error()["message"]
    resp = api(central, "GET", "/api/v1/models/plain/versions/1.0.0/drift?since=yesterday")
    assert resp.status == 400 and "since" in resp.error()["message"]
