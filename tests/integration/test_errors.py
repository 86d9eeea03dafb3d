"""Refused requests: the right status and error body, and the registry left unchanged."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.digest import sha256_digest
from tests.onnx_models import linear_model
from tests.support import (
    ApiResponse,
    CentralProcess,
    all_changes,
    all_pages,
    api,
    api_ok,
    put_blob,
    register,
    running_central,
    unique,
)

JSON_LIMIT = 4096
MODEL = "fraud"


@pytest.fixture(scope="module")
def errc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralProcess]:
    """A central with a small JSON limit, holding fraud 1.0.0 aliased as production."""
    data_dir = tmp_path_factory.mktemp("errors") / "central"
    # many refused tokens from one address: keep them under the throttling limit
    with running_central(data_dir, max_json_bytes=JSON_LIMIT, auth_failure_limit=1000) as central:
        register(central, MODEL, "1.0.0")
        api_ok(
            central,
            "PUT",
            f"/api/v1/models/{MODEL}/aliases/production",
            json={"version": "1.0.0"},
        )
        yield central


@pytest.fixture(scope="module")
def digest(errc: CentralProcess) -> str:
    return put_blob(errc, linear_model())


def _state(central: CentralProcess) -> tuple[Any, ...]:
    return (
        all_changes(central),
        all_pages(central, "/api/v1/models"),
        all_pages(central, f"/api/v1/models/{MODEL}/versions"),
        api_ok(central, "GET", f"/api/v1/models/{MODEL}/aliases"),
    )


def _refused(
    central: CentralProcess, status: int, code: str, method: str, path: str, **kw: Any
) -> dict[str, Any]:
    """Send a request that must fail; check status, body shape and an unchanged registry."""
    before = _state(central)
    resp: ApiResponse = api(central, method, path, **kw)
    assert resp.status == status, (method, path, resp.status, resp.body[:500])
    err = resp.error()
    assert err["code"] == code, err
    assert _state(central) == before
    return err


def _files(digest: str) -> list[dict[str, str]]:
    return [{"path": "model.onnx", "digest": digest}]


@pytest.mark.parametrize("name", ["../x", "UPPER", "a" * 129, "-lead", "", "sp ace", "a/b", "x..y"])
def test_invalid_model_name_on_create(errc: CentralProcess, name: str) -> None:
    err = _refused(errc, 400, "invalid", "POST", "/api/v1/models", json={"name": name})
    if len(name) > 128:
        assert "128" in err["message"]
    elif name:
        assert name in err["message"]


@pytest.mark.parametrize("name", ["UPPER", "a" * 129, "-lead", "x..y"])
def test_invalid_model_name_on_register(errc: CentralProcess, digest: str, name: str) -> None:
    _refused(
        errc,
        400,
        "invalid",
        "POST",
        f"/api/v1/models/{name}/versions",
        json={"version": "1.0.0", "files": _files(digest)},
    )


@pytest.mark.parametrize("version", ["1.2", "01.2.3", "1.2.3.4", "v1.2.3", "1.2.3-", "1.02.3"])
def test_invalid_version(errc: CentralProcess, digest: str, version: str) -> None:
    err = _refused(
        errc,
        400,
        "invalid",
        "POST",
        f"/api/v1/models/{MODEL}/versions",
        json={"version": version, "files": _files(digest)},
    )
    assert version in err["message"]


def test_duplicate_version_is_409(errc: CentralProcess, digest: str) -> None:
    err = _refused(
        errc,
        409,
        "conflict",
        "POST",
        f"/api/v1/models/{MODEL}/versions",
        json={"version": "1.0.0", "files": _files(digest)},
    )
    assert "1.0.0" in err["message"]


def test_duplicate_model_is_409(errc: CentralProcess) -> None:
    _refused(errc, 409, "conflict", "POST", "/api/v1/models", json={"name": MODEL})


@pytest.mark.parametrize(
    ("method", "path", "needle"),
    [
        ("GET", "/api/v1/models/nosuch", "nosuch"),
        ("PATCH", "/api/v1/models/nosuch", "nosuch"),
        ("GET", "/api/v1/models/nosuch/versions", "nosuch"),
        ("GET", f"/api/v1/models/{MODEL}/versions/9.9.9", "9.9.9"),
        ("GET", f"/api/v1/models/{MODEL}/versions/9.9.9/manifest", "9.9.9"),
        ("GET", f"/api/v1/models/{MODEL}/versions/9.9.9/metadata", "9.9.9"),
        ("PUT", f"/api/v1/models/{MODEL}/versions/9.9.9/stage", "9.9.9"),
        ("GET", f"/api/v1/models/{MODEL}/versions/nosuchalias", "nosuchalias"),
        ("GET", f"/api/v1/models/{MODEL}/aliases/nosuchalias", "nosuchalias"),
        ("DELETE", f"/api/v1/models/{MODEL}/aliases/nosuchalias", "nosuchalias"),
        ("GET", f"/api/v1/models/{MODEL}/aliases/nosuchalias/history", "nosuchalias"),
        ("POST", f"/api/v1/models/{MODEL}/aliases/nosuchalias/rollback", "nosuchalias"),
        ("GET", "/api/v1/blobs/" + sha256_digest(b"absent"), sha256_digest(b"absent")),
        ("DELETE", "/api/v1/tokens/nosuchtoken", "nosuchtoken"),
        ("GET", "/api/v1/root/99", "99"),
    ],
)
def test_unknown_things_are_404(errc: CentralProcess, method: str, path: str, needle: str) -> None:
    body = {"stage": "training"} if path.endswith("/stage") else None
    body = {"description": "x"} if method == "PATCH" else body
    err = _refused(errc, 404, "not_found", method, path, json=body)
    assert needle in err["message"]


@pytest.mark.parametrize(
    "body",
    [b'{"name": ', b"not json", b"\xff\xfe", b"[1, 2]", b'"fraud"', b"{}"],
    ids=["cut", "text", "binary", "array", "string", "no-name"],
)
def test_malformed_json_is_400(errc: CentralProcess, body: bytes) -> None:
    _refused(
        errc,
        400,
        "invalid",
        "POST",
        "/api/v1/models",
        data=body,
        headers={"Content-Type": "application/json"},
    )


@pytest.mark.parametrize(
    "body",
    [
        {"name": 5},
        {"name": "ok-name", "tags": ["a"]},
        {"name": "ok-name", "tags": {"team": 1}},
        {"name": "ok-name", "description": ["x"]},
    ],
    ids=["name-int", "tags-list", "tag-value-int", "description-list"],
)
def test_wrong_field_types_are_400(errc: CentralProcess, body: dict[str, Any]) -> None:
    _refused(errc, 400, "invalid", "POST", "/api/v1/models", json=body)


@pytest.mark.parametrize("key", ["Team", "has space", "a" * 129, ""])
@pytest.mark.parametrize("where", ["model-create", "model-patch", "version"])
def test_invalid_tag_key_is_400(errc: CentralProcess, digest: str, key: str, where: str) -> None:
    tags = {key: "v"}
    if where == "model-create":
        request = ("POST", "/api/v1/models", {"name": unique("tagged"), "tags": tags})
    elif where == "model-patch":
        request = ("PATCH", f"/api/v1/models/{MODEL}", {"tags": tags})
    else:
        body = {"version": "4.0.0", "files": _files(digest), "tags": tags}
        request = ("POST", f"/api/v1/models/{MODEL}/versions", body)
    method, path, body = request
    _refused(errc, 400, "invalid", method, path, json=body)


def test_register_without_files_is_400(errc: CentralProcess) -> None:
    _refused(
        errc, 400, "invalid", "POST", f"/api/v1/models/{MODEL}/versions", json={"version": "2.0.0"}
    )


def test_json_body_too_large_is_413(errc: CentralProcess) -> None:
    body = {"name": "big", "description": "x" * (JSON_LIMIT * 2)}
    err = _refused(errc, 413, "too_large", "POST", "/api/v1/models", json=body)
    assert str(JSON_LIMIT) in err["message"]


@pytest.mark.parametrize("size", [JSON_LIMIT // 2, JSON_LIMIT * 2], ids=["under", "over"])
def test_chunked_json_body_is_read_up_to_the_limit(errc: CentralProcess, size: int) -> None:
    """A body sent without Content-Length is counted as it comes."""
    name = unique("chunked")
    body = json.dumps({"name": name, "description": "x" * size}).encode()
    before = _state(errc)
    conn = http.client.HTTPConnection("127.0.0.1", errc.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/api/v1/models",
            body=iter([body[i : i + 512] for i in range(0, len(body), 512)]),
            headers={"Authorization": f"Bearer {errc.token}", "Content-Type": "application/json"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        status, answer = resp.status, json.loads(resp.read())
    finally:
        conn.close()
    if size < JSON_LIMIT:
        assert status == 201, answer
        assert answer["name"] == name
    else:
        assert status == 413, answer
        assert str(JSON_LIMIT) in answer["error"]["message"]
        assert _state(errc) == before


@pytest.mark.parametrize(
    ("method", "path", "json"),
    [
        ("GET", "/api/v1/models", None),
        ("POST", "/api/v1/models", {"name": "sneaky"}),
        ("GET", "/api/v1/root", None),
        ("GET", "/api/v1/changes", None),
    ],
)
@pytest.mark.parametrize("token", [None, "wrong-token", ""], ids=["missing", "wrong", "empty"])
def test_bad_token_is_401(
    errc: CentralProcess, method: str, path: str, json: Any, token: str | None
) -> None:
    _refused(errc, 401, "unauthenticated", method, path, json=json, token=token)


def test_non_bearer_authorization_is_401(errc: CentralProcess) -> None:
    _refused(
        errc,
        401,
        "unauthenticated",
        "GET",
        "/api/v1/models",
        token=None,
        headers={"Authorization": f"Basic {errc.token}"},
    )


def test_revoked_token_is_401(errc: CentralProcess) -> None:
    created = api_ok(
        errc, "POST", "/api/v1/tokens", 201, json={"name": "temp", "role": "developer"}
    )
    assert set(created) >= {"id", "name", "role", "token", "created_at", "expires_at"}
    assert api(errc, "GET", "/api/v1/models", token=created["token"]).status == 200
    listed = api_ok(errc, "GET", "/api/v1/tokens")["items"]
    assert created["id"] in [t["id"] for t in listed]
    assert created["token"] not in str(listed)

    assert api(errc, "DELETE", f"/api/v1/tokens/{created['id']}").status == 204
    _refused(errc, 401, "unauthenticated", "GET", "/api/v1/models", token=created["token"])
    _refused(
        errc,
        401,
        "unauthenticated",
        "POST",
        "/api/v1/models",
        json={"name": "after-revoke"},
        token=created["token"],
    )


def test_expired_token_is_401(errc: CentralProcess) -> None:
    created = api_ok(
        errc,
        "POST",
        "/api/v1/tokens",
        201,
        json={"name": "short", "role": "viewer", "expires_in": 1},
    )
    assert created["expires_at"]
    time.sleep(2.1)
    _refused(errc, 401, "unauthenticated", "GET", "/api/v1/models", token=created["token"])


def test_viewer_cannot_write_403(errc: CentralProcess, digest: str) -> None:
    viewer = api_ok(errc, "POST", "/api/v1/tokens", 201, json={"name": "v", "role": "viewer"})
    token = viewer["token"]
    assert api(errc, "GET", f"/api/v1/models/{MODEL}", token=token).status == 200
    _refused(errc, 403, "forbidden", "POST", "/api/v1/models", json={"name": "x"}, token=token)
    _refused(
        errc,
        403,
        "forbidden",
        "POST",
        f"/api/v1/models/{MODEL}/versions",
        json={"version": "3.0.0", "files": _files(digest)},
        token=token,
    )
    _refused(
        errc,
        403,
        "forbidden",
        "PUT",
        f"/api/v1/models/{MODEL}/aliases/production",
        json={"version": "1.0.0"},
        token=token,
    )
    _refused(
        errc,
        403,
        "forbidden",
        "POST",
        "/api/v1/tokens",
        json={"name": "y", "role": "admin"},
        token=token,
    )


def test_unknown_route_is_a_json_404(errc: CentralProcess) -> None:
    resp = api(errc, "GET", "/api/v1/nosuchroute")
    assert resp.status == 404
    assert resp.error()["code"] == "not_found"
