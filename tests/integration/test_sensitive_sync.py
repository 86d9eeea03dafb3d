"""Sensitive metadata is masked in what devices receive, and still verifies."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tests.integration.edge_harness import Agent, point
from tests.onnx_models import linear_model
from tests.support import CentralProcess, api_ok, register, run_skiff

POLICY = """
[sensitive]
fields = ["extra.customer"]
"""


def test_devices_and_bundles_get_the_masked_document(
    central: CentralProcess, fleet: Callable[..., Agent], tmp_path: Path
) -> None:
    central.stop()
    (central.data_dir / "policy.toml").write_text(POLICY)
    central.start()
    register(
        central,
        "m",
        "1.0.0",
        files={"model.onnx": linear_model(1.0)},
        metadata={"extra": {"customer": "acme-bank", "note": "kept"}},
    )
    point(central, "m", "1.0.0")
    run_skiff("fleet", "assign", fleet.fleet, "m", env=central.env)  # type: ignore[attr-defined]

    full = api_ok(central, "GET", "/api/v1/models/m/versions/1.0.0/metadata")
    signed = api_ok(central, "GET", "/api/v1/models/m/versions/1.0.0/metadata?view=signed")
    assert full["extra"] == {"customer": "acme-bank", "note": "kept"}  # the admin may read it
    assert signed["extra"] == {"customer": "***", "note": "kept"}

    agent = fleet().start()
    agent.wait_for(lambda s: agent.serving("m") == "1.0.0", what="the device to verify and serve")
    with sqlite3.connect(agent.data_dir / "cache.db") as db:
        cached = [json.loads(r[0]) for r in db.execute("SELECT metadata FROM manifests")]
    assert [d["extra"] for d in cached] == [{"customer": "***", "note": "kept"}]
    raw = b"".join(p.read_bytes() for p in agent.data_dir.rglob("*") if p.is_file())
    assert b"acme-bank" not in raw

    # an offline bundle carries the same masked document; a pull still verifies
    bundle = tmp_path / "site.skiff"
    run_skiff("bundle", "export", "--fleet", fleet.fleet, "-o", str(bundle), env=central.env)  # type: ignore[attr-defined]
    assert b"acme-bank" not in bundle.read_bytes()
    run_skiff("pull", "m@1.0.0", "-o", str(tmp_path / "pulled"), env=central.env)
    assert (tmp_path / "pulled" / "model.onnx").read_bytes() == linear_model(1.0)
