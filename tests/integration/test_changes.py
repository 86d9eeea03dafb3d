"""The change log: one entry per committed mutation, in order, filtered by ``since``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.support import CentralProcess, all_changes, api, api_ok, register, unique


def _last_seq(central: CentralProcess) -> int:
    changes = all_changes(central)
    return int(changes[-1]["seq"]) if changes else 0


def test_each_mutation_appends_exactly_one_change(central_module: CentralProcess) -> None:
    central = central_module
    model = unique("log")
    register(central, model, "0.1.0")  # the model exists before we start counting
    token_id: dict[str, str] = {}

    def create_token() -> None:
        token_id["id"] = api_ok(
            central, "POST", "/api/v1/tokens", 201, json={"name": "ci", "role": "viewer"}
        )["id"]

    steps: list[tuple[str, Callable[[], Any], dict[str, Any]]] = [
        (
            "model.created",
            lambda: api_ok(central, "POST", "/api/v1/models", 201, json={"name": model + "-b"}),
            {"model": model + "-b"},
        ),
        (
            "model.updated",
            lambda: api_ok(central, "PATCH", f"/api/v1/models/{model}", json={"description": "d"}),
            {"model": model},
        ),
        (
            "version.registered",
            lambda: register(central, model, "1.0.0"),
            {"model": model, "version": "1.0.0"},
        ),
        (
            "stage.changed",
            lambda: api_ok(
                central,
                "PUT",
                f"/api/v1/models/{model}/versions/1.0.0/stage",
                json={"stage": "training"},
            ),
            {"model": model, "version": "1.0.0"},
        ),
        (
            "alias.moved",
            lambda: api_ok(
                central,
                "PUT",
                f"/api/v1/models/{model}/aliases/production",
                json={"version": "1.0.0"},
            ),
            {"model": model, "alias": "production", "version": "1.0.0"},
        ),
        (
            "alias.deleted",
            lambda: api(central, "DELETE", f"/api/v1/models/{model}/aliases/production"),
            {"model": model, "alias": "production"},
        ),
        ("token.created", create_token, {}),
        (
            "token.revoked",
            lambda: api(central, "DELETE", f"/api/v1/tokens/{token_id['id']}"),
            {},
        ),
    ]
    last = _last_seq(central)
    for kind, mutate, fields in steps:
        mutate()
        new = all_changes(central, last)
        assert len(new) == 1, (kind, new)
        change = new[0]
        assert change["kind"] == kind
        assert change["seq"] > last
        assert str(change["at"]).endswith("Z")
        for key, value in fields.items():
            assert change[key] == value, (kind, key, change)
        last = change["seq"]


def test_reads_append_nothing(central_module: CentralProcess) -> None:
    model = unique("quiet")
    register(central_module, model, "1.0.0")
    before = all_changes(central_module)
    api_ok(central_module, "GET", f"/api/v1/models/{model}")
    api_ok(central_module, "GET", f"/api/v1/models/{model}/versions/1.0.0/manifest")
    api_ok(central_module, "GET", "/api/v1/models")
    api_ok(central_module, "GET", "/api/v1/search?filter=" + f"name%20%3D%20%27{model}%27")
    assert all_changes(central_module) == before


def test_since_filters_and_order_is_increasing(central_module: CentralProcess) -> None:
    model = unique("since")
    for version in ("1.0.0", "1.0.1", "1.0.2"):
        register(central_module, model, version)
    everything = all_changes(central_module)
    seqs = [c["seq"] for c in everything]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)

    mine = [c for c in everything if c["model"] == model and c["kind"] == "version.registered"]
    assert [c["version"] for c in mine] == ["1.0.0", "1.0.1", "1.0.2"]
    after_first = all_changes(central_module, mine[0]["seq"])
    assert [c["seq"] for c in after_first] == [s for s in seqs if s > mine[0]["seq"]]
    assert mine[0] not in after_first
    assert mine[1] in after_first


def test_next_is_a_cursor_and_limit_is_respected(central_module: CentralProcess) -> None:
    model = unique("cursor")
    for version in ("1.0.0", "1.0.1", "1.0.2"):
        register(central_module, model, version)
    page = api_ok(central_module, "GET", "/api/v1/changes?since=0&limit=2")
    assert len(page["items"]) == 2
    assert page["next"] == page["items"][-1]["seq"]
    latest = all_changes(central_module)[-1]["seq"]
    tail = api_ok(central_module, "GET", f"/api/v1/changes?since={latest}")
    assert tail["items"] == []
    assert tail["next"] == latest
