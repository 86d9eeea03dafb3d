"""Role-based access through the real server: each role against representative routes.

Every case names the route it exercises and the permission that route declares in
``central/api/routes.py``; the expected answer for a role is the route's success status
when MATRIX grants the role that permission, else 403 naming the permission. Scoped
tokens (``models`` patterns) act only on matching models and are refused on routes that
span every model.
"""

from __future__ import annotations

import json as jsonlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from central.api.routes import ROUTES
from central.services.permissions import (
    DEVICE,
    MANAGE_FLEETS,
    MANAGE_KEYS,
    MANAGE_TOKENS,
    MATRIX,
    READ,
    WRITE,
)
from tests.support import (
    CentralProcess,
    api,
    api_ok,
    put_blob,
    register,
    run_skiff,
    running_central,
    unique,
)

ROLES = ("viewer", "developer", "approver", "admin", "device")
MODEL = "rbac-fraud"
OTHER = "rbac-ranker"
FLEET = "rbac-plant"
DEVICE_ID = "rbac-cam"


@dataclass(frozen=True)
class World:
    central: CentralProcess
    tokens: dict[str, str]  # role -> secret
    other_blob: str  # a blob of OTHER, named by no fleet state


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data_dir = tmp_path_factory.mktemp("rbac") / "central"
    with running_central(data_dir) as central:
        register(central, MODEL, "1.0.0")
        other = register(central, OTHER, "1.0.0", files={"w.bin": b"ranker weights"})
        api_ok(
            central, "PUT", f"/api/v1/models/{MODEL}/aliases/production", json={"version": "1.0.0"}
        )
        api_ok(central, "POST", "/api/v1/fleets", 201, json={"name": FLEET})
        api_ok(
            central, "PUT", f"/api/v1/fleets/{FLEET}/models/{MODEL}", json={"alias": "production"}
        )
        tokens = {
            role: api_ok(
                central, "POST", "/api/v1/tokens", 201, json={"name": f"rbac-{role}", "role": role}
            )["token"]
            for role in ROLES
            if role != "device"
        }
        enrolled = api_ok(
            central, "POST", f"/api/v1/fleets/{FLEET}/devices", 201, json={"device": DEVICE_ID}
        )
        tokens["device"] = enrolled["token"]
        yield World(central, tokens, other["files"][0]["digest"])


@dataclass(frozen=True)
class Case:
    method: str
    route: str  # the path template of the route in ROUTES
    permission: str  # what that route declares
    ok: int
    path: Callable[[World], str] | None = None  # default: the template itself
    body: Callable[[], Any] | None = None
    data: Callable[[], bytes] | None = None
    forbidden: str | None = None  # what a 403 names, when not the permission


def _p(path: str) -> Callable[[World], str]:
    return lambda _w: path


CASES: dict[str, Case] = {
    "root": Case("GET", "/api/v1/root", READ, 200),
    "models.list": Case("GET", "/api/v1/models", READ, 200),
    "model.show": Case("GET", "/api/v1/models/{model}", READ, 200, _p(f"/api/v1/models/{MODEL}")),
    "versions.list": Case(
        "GET", "/api/v1/models/{model}/versions", READ, 200, _p(f"/api/v1/models/{MODEL}/versions")
    ),
    "manifest": Case(
        "GET",
        "/api/v1/models/{model}/versions/{version}/manifest",
        READ,
        200,
        _p(f"/api/v1/models/{MODEL}/versions/1.0.0/manifest"),
    ),
    "alias.show": Case(
        "GET",
        "/api/v1/models/{model}/aliases/{alias}",
        READ,
        200,
        _p(f"/api/v1/models/{MODEL}/aliases/production"),
    ),
    "search": Case(
        "GET", "/api/v1/search", READ, 200, _p("/api/v1/search?filter=stage%3D'development'")
    ),
    "changes": Case("GET", "/api/v1/changes", READ, 200),
    "blob.info": Case(
        "GET",
        "/api/v1/blobs/{digest}/info",
        READ,
        200,
        lambda w: f"/api/v1/blobs/{w.other_blob}/info",
        forbidden="not named by fleet",
    ),
    "fleets.list": Case("GET", "/api/v1/fleets", READ, 200),
    "fleet.show": Case("GET", "/api/v1/fleets/{fleet}", READ, 200, _p(f"/api/v1/fleets/{FLEET}")),
    "blob.put": Case(
        "PUT",
        "/api/v1/blobs/{digest}",
        WRITE,
        201,
        None,
        data=lambda: os.urandom(64),
    ),
    "model.create": Case(
        "POST", "/api/v1/models", WRITE, 201, body=lambda: {"name": unique("rbac-new")}
    ),
    "model.edit": Case(
        "PATCH",
        "/api/v1/models/{model}",
        WRITE,
        200,
        _p(f"/api/v1/models/{MODEL}"),
        body=lambda: {"description": "edited"},
    ),
    "alias.set": Case(
        "PUT",
        "/api/v1/models/{model}/aliases/{alias}",
        WRITE,
        200,
        lambda _w: f"/api/v1/models/{MODEL}/aliases/{unique('canary')}",
        body=lambda: {"version": "1.0.0"},
    ),
    "fleet.create": Case(
        "POST", "/api/v1/fleets", MANAGE_FLEETS, 201, body=lambda: {"name": unique("rbac-fleet")}
    ),
    "tokens.list": Case("GET", "/api/v1/tokens", MANAGE_TOKENS, 200),
    "token.create": Case(
        "POST",
        "/api/v1/tokens",
        MANAGE_TOKENS,
        201,
        body=lambda: {"name": unique("t"), "role": "viewer"},
    ),
    "device.enroll": Case(
        "POST",
        "/api/v1/fleets/{fleet}/devices",
        MANAGE_TOKENS,
        201,
        _p(f"/api/v1/fleets/{FLEET}/devices"),
        body=lambda: {"device": unique("cam")},
    ),
    "sync": Case("GET", "/api/v1/sync", DEVICE, 200, _p("/api/v1/sync?since=0")),
    "report": Case(
        "POST",
        "/api/v1/devices/{device}/report",
        DEVICE,
        204,
        _p(f"/api/v1/devices/{DEVICE_ID}/report"),
        body=lambda: {"slots": {}},
    ),
    "keys.rotate": Case(
        "POST", "/api/v1/keys/rotate", MANAGE_KEYS, 200, body=lambda: {"role": "targets"}
    ),
}


def _allowed(role: str, permission: str) -> bool:
    return role == "device" if permission == DEVICE else role in MATRIX[permission]


def _send(world: World, case: Case, token: str) -> tuple[int, bytes]:
    path = case.path(world) if case.path is not None else case.route
    data = case.data() if case.data is not None else None
    if case.method == "PUT" and case.route == "/api/v1/blobs/{digest}":
        from shared.digest import sha256_digest

        assert data is not None
        path = f"/api/v1/blobs/{sha256_digest(data)}"
    body = case.body() if case.body is not None else None
    resp = api(world.central, case.method, path, json=body, data=data, token=token)
    return resp.status, resp.body


@pytest.mark.parametrize("name", list(CASES))
def test_case_matches_the_route_table(name: str) -> None:
    case = CASES[name]
    declared = {(r.method, r.path): r.permission for r in ROUTES}
    assert declared[(case.method, case.route)] == case.permission


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", list(CASES))
def test_role_matrix(world: World, name: str, role: str) -> None:
    case = CASES[name]
    status, body = _send(world, case, world.tokens[role])
    if _allowed(role, case.permission):
        assert status == case.ok, f"{role} {name}: {status} {body[:500]!r}"
        return
    assert status == 403, f"{role} {name}: expected 403, got {status} {body[:500]!r}"
    error = jsonlib.loads(body)["error"]
    assert error["code"] == "forbidden"
    named = case.forbidden if role == "device" and case.forbidden else f"'{case.permission}'"
    assert named in error["message"], error["message"]


# scoped tokens


@pytest.fixture(scope="module")
def scoped(world: World) -> str:
    """A developer token scoped to ``rbac-f*`` (MODEL matches, OTHER does not)."""
    created = api_ok(
        world.central,
        "POST",
        "/api/v1/tokens",
        201,
        json={"name": "rbac-scoped", "role": "developer", "models": ["rbac-f*", "nothing-else"]},
    )
    assert created["models"] == ["rbac-f*", "nothing-else"]
    return str(created["token"])


def test_scoped_token_lists_and_finds_only_its_models(world: World, scoped: str) -> None:
    names = [
        m["name"] for m in api_ok(world.central, "GET", "/api/v1/models", token=scoped)["items"]
    ]
    assert MODEL in names
    assert all(n.startswith("rbac-f") for n in names), names
    found = api_ok(world.central, "GET", "/api/v1/search?limit=1000", token=scoped)["items"]
    assert {v["model"] for v in found} == {MODEL}
    everything = api_ok(world.central, "GET", "/api/v1/search?limit=1000")["items"]
    assert OTHER in {v["model"] for v in everything}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", f"/api/v1/models/{MODEL}", None, 200),
        ("PATCH", f"/api/v1/models/{MODEL}", {"description": "scoped edit"}, 200),
        ("GET", f"/api/v1/models/{OTHER}", None, 403),
        ("PATCH", f"/api/v1/models/{OTHER}", {"description": "sneaky"}, 403),
        ("GET", f"/api/v1/models/{OTHER}/versions", None, 403),
        ("POST", "/api/v1/models", {"name": "rbac-x-outside"}, 403),
        ("GET", "/api/v1/changes", None, 403),
        ("GET", "/api/v1/fleets", None, 403),
        ("GET", f"/api/v1/fleets/{FLEET}", None, 403),
        ("POST", "/api/v1/fleets", {"name": "rbac-scoped-fleet"}, 403),
        ("PUT", f"/api/v1/fleets/{FLEET}/models/{MODEL}", {"alias": "production"}, 403),
    ],
)
def test_scoped_token_acts_only_on_matching_models(
    world: World, scoped: str, method: str, path: str, body: Any, status: int
) -> None:
    resp = api(world.central, method, path, json=body, token=scoped)
    assert resp.status == status, resp.body[:500]
    if status == 403:
        assert resp.error()["code"] == "forbidden"
        assert "scoped" in resp.error()["message"]


def test_scoped_token_registers_only_matching_models(world: World, scoped: str) -> None:
    record = register(world.central, MODEL, "1.1.0", token=scoped)
    assert record["model"] == MODEL
    digest = put_blob(world.central, b"outside weights")
    resp = api(
        world.central,
        "POST",
        f"/api/v1/models/{OTHER}/versions",
        json={"files": [{"path": "w.bin", "digest": digest}]},
        token=scoped,
    )
    assert resp.status == 403
    assert "not scoped to model 'rbac-ranker'" in resp.error()["message"]


def test_scoped_token_reads_only_blobs_of_its_models(world: World, scoped: str) -> None:
    resp = api(world.central, "GET", f"/api/v1/blobs/{world.other_blob}/info", token=scoped)
    assert resp.status == 403
    mine = api_ok(world.central, "GET", f"/api/v1/models/{MODEL}/versions/1.0.0")
    digest = mine["files"][0]["digest"]
    assert api(world.central, "GET", f"/api/v1/blobs/{digest}/info", token=scoped).status == 200


def test_a_blob_another_model_took_a_moment_ago_is_refused_at_once(
    world: World, scoped: str
) -> None:
    digest = put_blob(world.central, b"fresh weights of another model")
    info = f"/api/v1/blobs/{digest}/info"
    assert api(world.central, "GET", info, token=scoped).status == 200  # no version holds it
    api_ok(
        world.central,
        "POST",
        f"/api/v1/models/{OTHER}/versions",
        201,
        json={"files": [{"path": "w.bin", "digest": digest}]},
    )
    resp = api(world.central, "GET", info, token=scoped)
    assert resp.status == 403
    assert "not scoped to any model holding blob" in resp.error()["message"]


def test_scoped_admin_cannot_mint_an_unscoped_token(world: World) -> None:
    admin = api_ok(
        world.central,
        "POST",
        "/api/v1/tokens",
        201,
        json={"name": "rbac-scoped-admin", "role": "admin", "models": ["rbac-f*"]},
    )["token"]
    resp = api(
        world.central,
        "POST",
        "/api/v1/tokens",
        json={"name": "escalated", "role": "admin"},
        token=admin,
    )
    assert resp.status == 403
    assert "'manage_tokens'" in resp.error()["message"]
    assert (
        api(world.central, "POST", "/api/v1/keys/rotate", json={"role": "root"}, token=admin).status
        == 403
    )


@pytest.mark.parametrize("models", [[], ["Fraud"], ["a b"], ["[ab]*"], "fraud-*", [1]])
def test_bad_scope_patterns_are_400(world: World, models: Any) -> None:
    resp = api(
        world.central,
        "POST",
        "/api/v1/tokens",
        json={"name": "bad", "role": "viewer", "models": models},
    )
    assert resp.status == 400, resp.body
    assert "models" in resp.error()["message"]


def test_cli_creates_a_scoped_token(world: World) -> None:
    proc = run_skiff(
        "token",
        "create",
        "--name",
        "rbac-cli",
        "--role",
        "viewer",
        "--models",
        "fraud-*,ranker",
        "--json",
        env=world.central.env,
    )
    created = jsonlib.loads(proc.stdout)
    assert created["models"] == ["fraud-*", "ranker"]
    listed = api_ok(world.central, "GET", "/api/v1/tokens")["items"]
    assert next(t for t in listed if t["id"] == created["id"])["models"] == ["fraud-*", "ranker"]
