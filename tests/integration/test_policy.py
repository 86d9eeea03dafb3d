"""Compliance policy: the file checked at start, readiness reports, masking of sensitive fields."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.integration.test_approvals import stage_path, start_with_policy, token
from tests.support import (
    REPO_ROOT,
    SKIFF,
    CentralProcess,
    api,
    api_ok,
    init_central,
    put_blob,
    register,
    run_skiff,
    skiff_env,
    unique,
)

POLICY = """
[stages.production]
require = ["metrics.auc", "training.dataset", "provenance.code_version"]
approvals = 1
move_alias = "production"

[stages.staging]
move_alias = "staging"

[tags.hipaa]
require = ["compliance.data_classification"]
approvals = 2

[sensitive]
fields = ["provenance.data_lineage", "extra.customer", "metrics.fairness", "tags.client"]
"""

METADATA = {
    "training": {"metrics": {"auc": 0.91, "fairness": 0.7}, "dataset": "s3://d/v3"},
    "provenance": {"code_version": "abc123", "data_lineage": {"source": "crm", "rows": 9}},
    "extra": {"customer": "acme", "public": "yes"},
}


@pytest.fixture(scope="module")
def policed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralProcess]:
    central = start_with_policy(tmp_path_factory.mktemp("policy") / "central", POLICY)
    try:
        yield central
    finally:
        try:
            central.stop()
        finally:
            central.kill()


@pytest.fixture(scope="module")
def sensitive_model(policed: CentralProcess) -> str:
    model = unique("sens")
    register(policed, model, "1.0.0", metadata=METADATA, tags={"client": "acme", "team": "risk"})
    return model


def _serve(data_dir: Path) -> subprocess.CompletedProcess[str]:
    cmd = [*SKIFF, "central", "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0"]
    return subprocess.run(
        cmd, env=skiff_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=20
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[stages.production]\napprovals = -1\n", "stages.production.approvals"),
        ("[stages.prod]\napprovals = 1\n", "stages.prod"),
        ("[stages.production]\nrequire = ['metrics.']\n", "stages.production.require"),
        ("[tags.hipaa]\napprovers = 2\n", "tags.hipaa.approvers"),
        ("[sensitive]\nfields = 'x'\n", "sensitive.fields"),
        ("request_expiry_seconds = 0\n", "request_expiry_seconds"),
        ("[stages.production]\napprovals = 1\napprovals = 2\n", "line 3"),
    ],
    ids=["negative", "unknown-stage", "bad-path", "unknown-key", "not-a-list", "expiry", "syntax"],
)
def test_a_bad_policy_file_stops_central_naming_the_key(
    tmp_path: Path, text: str, named: str
) -> None:
    central = init_central(tmp_path / "central")
    (central.data_dir / "policy.toml").write_text(text)
    proc = _serve(central.data_dir)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "policy.toml" in output
    assert named in output, output


def test_without_a_file_production_needs_one_approval(central: CentralProcess) -> None:
    model = unique("default")
    register(central, model, "1.0.0")
    for stage in ("training", "validation", "staging"):
        api_ok(central, "PUT", stage_path(model), json={"stage": stage})
    req = api_ok(central, "PUT", stage_path(model), 202, json={"stage": "production"})
    assert (req["status"], req["required"]) == ("pending", 1)
    report = api_ok(central, "GET", f"/api/v1/models/{model}/versions/1.0.0/policy")
    assert report["missing"] == []
    assert report["approvals_required"] == 1
    assert report["pending_request"]["id"] == req["id"]


def test_policy_file_setting_points_elsewhere(tmp_path: Path) -> None:
    elsewhere = tmp_path / "rules.toml"
    elsewhere.write_text("[stages.training]\nrequire = ['description']\n")
    central = init_central(tmp_path / "central", policy_file=str(elsewhere)).start()
    try:
        model = unique("elsewhere")
        register(central, model, "1.0.0")
        resp = api(central, "PUT", stage_path(model), json={"stage": "training"})
        assert resp.status == 409
        assert resp.json()["error"]["missing"] == ["description"]
    finally:
        central.stop()


def test_an_alias_move_without_approval_happens_at_once(policed: CentralProcess) -> None:
    model = unique("stg")
    register(policed, model, "1.0.0")
    for stage in ("training", "validation", "staging"):
        api_ok(policed, "PUT", stage_path(model), json={"stage": stage})
    alias = api_ok(policed, "GET", f"/api/v1/models/{model}/aliases/staging")
    assert alias["version"] == "1.0.0"


def test_readiness_report_and_policy_check(policed: CentralProcess) -> None:
    model = unique("ready")
    register(
        policed,
        model,
        "1.0.0",
        tags={"hipaa": "y"},
        metadata={"training": {"metrics": {"auc": 0.9}}},
    )
    report = api_ok(
        policed, "GET", f"/api/v1/models/{model}/versions/1.0.0/policy?stage=production"
    )
    assert report["missing"] == [
        "training.dataset",
        "provenance.code_version",
        "extra.compliance.data_classification",
    ]
    assert report["approvals_required"] == 2
    assert report["transition_allowed"] is False
    assert report["ready"] is False
    assert report["rules"] == ["stages.production", "tags.hipaa"]

    out = run_skiff("policy", "check", f"{model}@1.0.0", env=policed.env).stdout
    assert "training.dataset" in out
    assert "extra.compliance.data_classification" in out
    assert "ready" in out and "no" in out
    as_json = run_skiff("--json", "policy", "check", f"{model}@1.0.0", env=policed.env)
    assert json.loads(as_json.stdout)["approvals_required"] == 2
    training = run_skiff(
        "--json", "policy", "check", f"{model}@1.0.0", "--stage", "training", env=policed.env
    )
    assert json.loads(training.stdout)["ready"] is True
    bad = api(policed, "GET", f"/api/v1/models/{model}/versions/1.0.0/policy?stage=prod")
    assert bad.status == 400
    assert "prod" in bad.error()["message"]


def _by_name(model: str) -> str:
    return "/api/v1/search?filter=" + quote(f"name = '{model}'")


def _masked(record: dict[str, Any]) -> None:
    meta = record["metadata"]
    assert meta["provenance"]["data_lineage"] == "***"
    assert meta["provenance"]["code_version"] == "abc123"
    assert meta["extra"] == {"customer": "***", "public": "yes"}
    assert meta["training"]["metrics"] == {"auc": 0.91, "fairness": "***"}
    assert record["tags"] == {"client": "***", "team": "risk"}


def _clear(record: dict[str, Any]) -> None:
    assert record["metadata"]["provenance"]["data_lineage"] == {"source": "crm", "rows": 9}
    assert record["metadata"]["extra"]["customer"] == "acme"
    assert record["tags"]["client"] == "acme"


@pytest.mark.parametrize("role", ["viewer", "developer"])
def test_sensitive_fields_are_masked_for_roles_without_read_sensitive(
    policed: CentralProcess, sensitive_model: str, role: str
) -> None:
    secret, _ = token(policed, role)
    base = f"/api/v1/models/{sensitive_model}"
    _masked(api_ok(policed, "GET", f"{base}/versions/1.0.0", token=secret))
    listed = api_ok(policed, "GET", f"{base}/versions", token=secret)["items"]
    _masked(listed[0])
    found = api_ok(
        policed,
        "GET",
        _by_name(sensitive_model),
        token=secret,
    )["items"]
    _masked(found[0])
    doc = api_ok(policed, "GET", f"{base}/versions/1.0.0/metadata", token=secret)
    assert doc["provenance"]["data_lineage"] == "***"
    assert doc["extra"]["customer"] == "***"
    assert doc["tags"]["client"] == "***"


@pytest.mark.parametrize("role", ["admin", "approver"])
def test_roles_with_read_sensitive_see_everything(
    policed: CentralProcess, sensitive_model: str, role: str
) -> None:
    secret, _ = token(policed, role)
    base = f"/api/v1/models/{sensitive_model}"
    _clear(api_ok(policed, "GET", f"{base}/versions/1.0.0", token=secret))
    found = api_ok(
        policed,
        "GET",
        _by_name(sensitive_model),
        token=secret,
    )["items"]
    _clear(found[0])
    doc = api_ok(policed, "GET", f"{base}/versions/1.0.0/metadata", token=secret)
    assert doc["provenance"]["data_lineage"] == {"source": "crm", "rows": 9}


def test_registration_answers_are_masked_for_developers(policed: CentralProcess) -> None:
    developer, _ = token(policed, "developer")
    model = unique("batch")
    created = register(policed, model, "1.0.0", metadata=METADATA, token=developer)
    assert created["metadata"]["extra"]["customer"] == "***"
    digest = put_blob(policed, b"pmml bytes")
    body = {
        "versions": [
            {
                "model": model,
                "version": "1.0.1",
                "files": [{"path": "m.pmml", "digest": digest}],
                "metadata": METADATA,
            }
        ]
    }
    batch = api_ok(policed, "POST", "/api/v1/versions:batch", 201, json=body, token=developer)
    assert batch["items"][0]["metadata"]["provenance"]["data_lineage"] == "***"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"filter": "tags.client = 'acme'"}, "tags.client"),
        ({"filter": "metrics.fairness > 0.5"}, "metrics.fairness"),
        ({"order_by": "metrics.fairness desc"}, "metrics.fairness"),
    ],
    ids=["tag-filter", "metric-filter", "metric-order"],
)
def test_searching_on_a_sensitive_field_is_refused_for_a_viewer(
    policed: CentralProcess, sensitive_model: str, params: dict[str, str], field: str
) -> None:
    viewer, _ = token(policed, "viewer")
    query = "&".join(f"{k}={quote(v)}" for k, v in params.items())
    resp = api(policed, "GET", f"/api/v1/search?{query}", token=viewer)
    assert resp.status == 403, resp.body
    assert field in resp.error()["message"]
    allowed = api_ok(policed, "GET", f"/api/v1/search?{query}")
    assert sensitive_model in [v["model"] for v in allowed["items"]]
    plain = api_ok(
        policed, "GET", "/api/v1/search?filter=" + quote("tags.team = 'risk'"), token=viewer
    )
    assert plain["items"]


def test_registering_straight_into_a_guarded_stage_is_refused(policed: CentralProcess) -> None:
    model = unique("direct")
    resp = api(
        policed,
        "POST",
        f"/api/v1/models/{model}/versions",
        json={
            "files": [{"path": "m.pmml", "digest": put_blob(policed, b"direct pmml")}],
            "stage": "production",
            "metadata": METADATA,
        },
    )
    assert resp.status == 409
    assert "approval" in resp.error()["message"]
    missing = api(
        policed,
        "POST",
        f"/api/v1/models/{model}/versions",
        json={
            "files": [{"path": "m.pmml", "digest": put_blob(policed, b"direct pmml")}],
            "stage": "production",
        },
    )
    assert missing.status == 409
    assert missing.json()["error"]["code"] == "policy_violation"
    assert api(policed, "GET", f"/api/v1/models/{model}").status == 404
    register(policed, model, "1.0.0", stage="training")  # unguarded stages are fine
