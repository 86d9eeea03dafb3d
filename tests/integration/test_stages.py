"""Lifecycle stages: allowed moves only, refusals name what is allowed."""

from __future__ import annotations

import pytest

from tests.support import CentralProcess, all_changes, api, api_ok, register, unique


def _stage_path(model: str, version: str) -> str:
    return f"/api/v1/models/{model}/versions/{version}/stage"


def _move(central: CentralProcess, model: str, version: str, stage: str) -> dict[str, object]:
    record: dict[str, object] = api_ok(
        central, "PUT", _stage_path(model, version), json={"stage": stage}
    )
    return record


def test_one_step_forward_is_allowed_and_recorded(central_module: CentralProcess) -> None:
    model = unique("stage")
    register(central_module, model, "1.0.0")
    since = all_changes(central_module)[-1]["seq"]
    record = _move(central_module, model, "1.0.0", "training")
    assert record["stage"] == "training"
    assert record["version"] == "1.0.0"
    fetched = api_ok(central_module, "GET", f"/api/v1/models/{model}/versions/1.0.0")
    assert fetched["stage"] == "training"
    changes = all_changes(central_module, since)
    assert [(c["kind"], c["model"], c["version"]) for c in changes] == [
        ("stage.changed", model, "1.0.0")
    ]


def test_full_walk_to_production(central_module: CentralProcess) -> None:
    model = unique("walk")
    register(central_module, model, "1.0.0")
    for stage in ("training", "validation", "staging"):
        assert _move(central_module, model, "1.0.0", stage)["stage"] == stage
    # the default policy: production only through one approval (see test_approvals.py)
    request = api_ok(
        central_module, "PUT", _stage_path(model, "1.0.0"), 202, json={"stage": "production"}
    )
    assert (request["to_stage"], request["status"]) == ("production", "pending")


@pytest.mark.parametrize(
    ("walk", "target", "allowed"),
    [
        ([], "staging", {"training", "retired"}),
        (["training"], "production", {"validation", "development", "retired"}),
        (
            ["training", "validation", "staging"],
            "training",
            {"production", "development", "retired"},
        ),
        (["retired"], "production", {"development"}),
    ],
    ids=["dev-to-staging", "training-to-production", "staging-back-to-training", "retired"],
)
def test_illegal_transition_is_409_naming_allowed_stages(
    central_module: CentralProcess, walk: list[str], target: str, allowed: set[str]
) -> None:
    model = unique("jump")
    register(central_module, model, "1.0.0")
    for stage in walk:
        _move(central_module, model, "1.0.0", stage)
    current = walk[-1] if walk else "development"
    before = all_changes(central_module)

    resp = api(central_module, "PUT", _stage_path(model, "1.0.0"), json={"stage": target})
    assert resp.status == 409, resp.body
    err = resp.error()
    assert err["code"] == "conflict"
    for stage in allowed:
        assert stage in err["message"], (stage, err["message"])
    fetched = api_ok(central_module, "GET", f"/api/v1/models/{model}/versions/1.0.0")
    assert fetched["stage"] == current
    assert all_changes(central_module) == before


def test_back_to_development_and_retire(central_module: CentralProcess) -> None:
    model = unique("retire")
    register(central_module, model, "1.0.0")
    for stage in ("training", "validation"):
        _move(central_module, model, "1.0.0", stage)
    assert _move(central_module, model, "1.0.0", "development")["stage"] == "development"
    assert _move(central_module, model, "1.0.0", "retired")["stage"] == "retired"
    assert _move(central_module, model, "1.0.0", "development")["stage"] == "development"


def test_unknown_stage_is_400(central_module: CentralProcess) -> None:
    model = unique("nostage")
    register(central_module, model, "1.0.0")
    resp = api(central_module, "PUT", _stage_path(model, "1.0.0"), json={"stage": "canary"})
    assert resp.status == 400
    err = resp.error()
    assert err["code"] == "invalid"
    assert "canary" in err["message"]


def test_stage_given_at_registration(central_module: CentralProcess) -> None:
    model = unique("initial")
    version = register(central_module, model, "1.0.0", stage="training")
    assert version["stage"] == "training"
