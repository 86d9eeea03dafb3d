"""Approval workflow through the real server and CLI, with a token of each role."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    CentralProcess,
    all_changes,
    api,
    api_ok,
    init_central,
    register,
    run_skiff,
    unique,
)

POLICY = """
[stages.production]
require = ["metrics.auc"]
approvals = 1
move_alias = "production"

[tags.hipaa]
require = ["compliance.data_classification"]
approvals = 2
"""


def start_with_policy(data_dir: Path, policy: str, **settings: object) -> CentralProcess:
    central = init_central(data_dir, **settings)
    (central.data_dir / "policy.toml").write_text(policy)
    return central.start()


@pytest.fixture(scope="module")
def policed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralProcess]:
    central = start_with_policy(tmp_path_factory.mktemp("approvals") / "central", POLICY)
    try:
        yield central
    finally:
        try:
            central.stop()
        finally:
            central.kill()


def token(central: CentralProcess, role: str) -> tuple[str, str]:
    """A new token of ``role``: (secret, token id)."""
    made = api_ok(central, "POST", "/api/v1/tokens", 201, json={"name": unique(role), "role": role})
    return made["token"], made["id"]


def staged(
    central: CentralProcess, model: str, *, tags: dict[str, str] | None = None, **meta: Any
) -> None:
    """Register ``model@1.0.0`` with an AUC (and ``meta`` in extra) and walk it to staging."""
    metadata = {"training": {"metrics": {"auc": 0.93}}, "extra": meta}
    register(central, model, "1.0.0", metadata=metadata, tags=tags or {})
    for stage in ("training", "validation", "staging"):
        api_ok(central, "PUT", stage_path(model), json={"stage": stage})


def stage_path(model: str, version: str = "1.0.0") -> str:
    return f"/api/v1/models/{model}/versions/{version}/stage"


def request_production(central: CentralProcess, model: str, secret: str) -> dict[str, Any]:
    record: dict[str, Any] = api_ok(
        central, "PUT", stage_path(model), 202, json={"stage": "production"}, token=secret
    )
    return record


def stage_of(central: CentralProcess, model: str) -> str:
    return str(api_ok(central, "GET", f"/api/v1/models/{model}/versions/1.0.0")["stage"])


def test_developer_requests_an_approver_applies_and_the_fleet_follows(
    policed: CentralProcess,
) -> None:
    developer, developer_id = token(policed, "developer")
    approver, _ = token(policed, "approver")
    model, fleet = unique("appr"), unique("fleet")
    staged(policed, model)
    api_ok(policed, "POST", "/api/v1/fleets", 201, json={"name": fleet})
    api_ok(policed, "PUT", f"/api/v1/fleets/{fleet}/models/{model}", json={"alias": "production"})
    serial = api_ok(policed, "GET", f"/api/v1/fleets/{fleet}")["state"]["serial"]

    req = request_production(policed, model, developer)
    assert req["status"] == "pending"
    assert req["requested_by"] == developer_id
    assert (req["from_stage"], req["to_stage"], req["required"]) == ("staging", "production", 1)
    assert stage_of(policed, model) == "staging"

    own = api(policed, "POST", f"/api/v1/requests/{req['id']}/approve", json={}, token=developer)
    assert own.status == 403, own.body
    assert "self-approval" in own.error()["message"] or "approve" in own.error()["message"]

    since = all_changes(policed)[-1]["seq"]
    done = api_ok(
        policed,
        "POST",
        f"/api/v1/requests/{req['id']}/approve",
        json={"comment": "looks good"},
        token=approver,
    )
    assert done["status"] == "applied"
    assert done["approvals"] == 1
    version = api_ok(policed, "GET", f"/api/v1/models/{model}/versions/1.0.0")
    assert version["stage"] == "production"
    assert "production" in version["aliases"]
    alias = api_ok(policed, "GET", f"/api/v1/models/{model}/aliases/production")
    assert alias["version"] == "1.0.0"
    state = api_ok(policed, "GET", f"/api/v1/fleets/{fleet}")["state"]
    assert state["serial"] > serial
    assert state["models"][model]["version"] == "1.0.0"
    kinds = [c["kind"] for c in all_changes(policed, since)]
    assert "stage.changed" in kinds
    assert "alias.moved" in kinds
    assert "fleet_state.updated" in kinds


def test_requester_cannot_approve_even_as_admin(policed: CentralProcess) -> None:
    model = unique("self")
    staged(policed, model)
    admin, _ = token(policed, "admin")
    req = request_production(policed, model, admin)
    resp = api(policed, "POST", f"/api/v1/requests/{req['id']}/approve", json={}, token=admin)
    assert resp.status == 403
    assert "self-approval" in resp.error()["message"]
    assert stage_of(policed, model) == "staging"


def test_roles_without_approve_cannot_decide(policed: CentralProcess) -> None:
    model = unique("roles")
    staged(policed, model)
    developer, _ = token(policed, "developer")
    req = request_production(policed, model, developer)
    for role in ("viewer", "developer"):
        secret, _ = token(policed, role)
        resp = api(policed, "POST", f"/api/v1/requests/{req['id']}/approve", json={}, token=secret)
        assert resp.status == 403
        assert "approve" in resp.error()["message"]
    viewer, _ = token(policed, "viewer")
    resp = api(policed, "PUT", stage_path(model), json={"stage": "production"}, token=viewer)
    assert resp.status == 403


def test_two_approvers_for_a_tag_and_the_same_one_counts_once(policed: CentralProcess) -> None:
    model = unique("hipaa")
    staged(
        policed,
        model,
        tags={"hipaa": "yes"},
        compliance={"data_classification": "phi"},
    )
    developer, _ = token(policed, "developer")
    first, _ = token(policed, "approver")
    second, _ = token(policed, "approver")
    req = request_production(policed, model, developer)
    assert req["required"] == 2
    path = f"/api/v1/requests/{req['id']}/approve"

    one = api_ok(policed, "POST", path, json={}, token=first)
    assert (one["status"], one["approvals"]) == ("pending", 1)
    assert stage_of(policed, model) == "staging"
    again = api(policed, "POST", path, json={}, token=first)
    assert again.status == 409
    assert api_ok(policed, "GET", f"/api/v1/requests/{req['id']}")["approvals"] == 1

    two = api_ok(policed, "POST", path, json={}, token=second)
    assert (two["status"], two["approvals"]) == ("applied", 2)
    assert stage_of(policed, model) == "production"


def test_an_approval_by_a_revoked_token_does_not_count(policed: CentralProcess) -> None:
    model = unique("revoked")
    staged(policed, model, tags={"hipaa": "1"}, compliance={"data_classification": "phi"})
    developer, _ = token(policed, "developer")
    first, first_id = token(policed, "approver")
    second, _ = token(policed, "approver")
    req = request_production(policed, model, developer)
    path = f"/api/v1/requests/{req['id']}/approve"
    api_ok(policed, "POST", path, json={}, token=first)
    api_ok(policed, "DELETE", f"/api/v1/tokens/{first_id}", 204)

    after = api_ok(policed, "POST", path, json={}, token=second)
    assert (after["status"], after["approvals"]) == ("pending", 1)
    revoked = [d for d in after["decisions"] if d["approver"] == first_id]
    assert revoked and revoked[0]["valid"] is False
    assert stage_of(policed, model) == "staging"


def test_reject_closes_the_request(policed: CentralProcess) -> None:
    model = unique("reject")
    staged(policed, model)
    developer, _ = token(policed, "developer")
    approver, _ = token(policed, "approver")
    req = request_production(policed, model, developer)
    path = f"/api/v1/requests/{req['id']}"
    no_reason = api(policed, "POST", path + "/reject", json={}, token=approver)
    assert no_reason.status == 400
    assert "reason" in no_reason.error()["message"]
    done = api_ok(policed, "POST", path + "/reject", json={"reason": "drift"}, token=approver)
    assert (done["status"], done["reason"]) == ("rejected", "drift")
    late = api(policed, "POST", path + "/approve", json={}, token=approver)
    assert late.status == 409
    assert "rejected" in late.error()["message"]
    assert stage_of(policed, model) == "staging"
    rejected = api_ok(policed, "GET", "/api/v1/requests?status=rejected")["items"]
    assert req["id"] in [r["id"] for r in rejected]


def test_a_second_pending_request_is_refused(policed: CentralProcess) -> None:
    model = unique("twice")
    staged(policed, model)
    developer, _ = token(policed, "developer")
    req = request_production(policed, model, developer)
    resp = api(policed, "PUT", stage_path(model), json={"stage": "production"}, token=developer)
    assert resp.status == 409
    assert str(req["id"]) in resp.error()["message"]


def test_missing_required_metadata_is_refused_with_the_list(policed: CentralProcess) -> None:
    model = unique("missing")
    register(policed, model, "1.0.0", tags={"hipaa": "x"})  # no AUC, no classification
    for stage in ("training", "validation", "staging"):
        api_ok(policed, "PUT", stage_path(model), json={"stage": stage})
    before = api_ok(policed, "GET", "/api/v1/requests")["items"]
    resp = api(policed, "PUT", stage_path(model), json={"stage": "production"})
    assert resp.status == 409
    doc = resp.json()
    assert doc["error"]["code"] == "policy_violation"
    assert doc["error"]["missing"] == [
        "training.metrics.auc",
        "extra.compliance.data_classification",
    ]
    assert "training.metrics.auc" in doc["error"]["message"]
    assert stage_of(policed, model) == "staging"
    assert api_ok(policed, "GET", "/api/v1/requests")["items"] == before


def test_cli_request_list_approve_and_reject(policed: CentralProcess) -> None:
    developer, _ = token(policed, "developer")
    approver, _ = token(policed, "approver")
    dev_env = {**policed.env, "SKIFF_TOKEN": developer}
    approver_env = {**policed.env, "SKIFF_TOKEN": approver}
    model, other = unique("cli"), unique("cli")
    staged(policed, model)
    staged(policed, other)

    proc = run_skiff("stage", "set", f"{model}@1.0.0", "production", env=dev_env)
    assert "pending" in proc.stdout
    assert "skiff approve" in proc.stderr + proc.stdout
    moved = run_skiff("--json", "stage", "set", f"{other}@1.0.0", "production", env=dev_env)
    other_id = json.loads(moved.stdout)["id"]

    listed = run_skiff("--json", "request", "list", "--status", "pending", env=approver_env)
    ids = {(r["model"], r["id"]) for r in json.loads(listed.stdout)}
    mine = next(i for m, i in ids if m == model)
    table = run_skiff("request", "list", "--status", "pending", env=approver_env).stdout
    assert f"{model}@1.0.0" in table

    own = run_skiff("approve", str(mine), env=dev_env, check=False)
    assert own.returncode == 1
    assert "self-approval" in own.stderr or "approve" in own.stderr

    out = run_skiff("approve", str(mine), "--comment", "ship it", env=approver_env).stdout
    assert "applied" in out
    assert stage_of(policed, model) == "production"

    no_reason = run_skiff("reject", str(other_id), env=approver_env, check=False)
    assert no_reason.returncode == 2  # usage: --reason is required
    out = run_skiff("reject", str(other_id), "--reason", "not yet", env=approver_env).stdout
    assert "rejected" in out


def test_expired_request_cannot_be_approved(tmp_path: Path) -> None:
    central = start_with_policy(
        tmp_path / "central",
        "request_expiry_seconds = 1\n[stages.production]\napprovals = 1\n",
    )
    try:
        model = unique("expiry")
        staged(central, model)
        developer, _ = token(central, "developer")
        approver, _ = token(central, "approver")
        req = request_production(central, model, developer)
        time.sleep(2.2)
        listed = api_ok(central, "GET", "/api/v1/requests?status=expired")["items"]
        assert [r["id"] for r in listed] == [req["id"]]
        resp = api(
            central, "POST", f"/api/v1/requests/{req['id']}/approve", json={}, token=approver
        )
        assert resp.status == 409
        assert "expired" in resp.error()["message"]
        assert stage_of(central, model) == "staging"
        assert api_ok(central, "GET", f"/api/v1/requests/{req['id']}")["status"] == "expired"
        # a new request may be made once the old one has lapsed
        assert request_production(central, model, developer)["status"] == "pending"
    finally:
        central.stop()
