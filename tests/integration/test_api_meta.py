"""Service routes: health, metrics, the OpenAPI document, and ETags on metadata."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.support import REPO_ROOT, CentralProcess, api, api_ok, register, unique

API_DOC = REPO_ROOT / "docs" / "api.md"
_ROW = re.compile(r"^\|\s*([A-Z/]+)\s*\|\s*`([^`]+)`\s*\|", re.MULTILINE)
_PROSE = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`?\s]+)")
_PARAM = re.compile(r"\{[^}]+\}")


def documented_routes(doc: Path = API_DOC) -> set[tuple[str, str]]:
    """(method, path) for every route in the doc's tables and prose; params as ``{}``."""
    text = doc.read_text()
    found: set[tuple[str, str]] = set()
    for methods, path in _ROW.findall(text):
        for method in methods.split("/"):
            found.add((method, _PARAM.sub("{}", path.split("?")[0])))
    for method, path in _PROSE.findall(text):
        found.add((method, _PARAM.sub("{}", path)))
    return found


def test_the_doc_parser_finds_the_routes() -> None:
    routes = documented_routes()
    assert ("GET", "/healthz") in routes
    assert ("PUT", "/api/v1/blobs/{}") in routes
    assert ("HEAD", "/api/v1/blobs/{}") in routes
    assert ("POST", "/api/v1/versions:batch") in routes
    assert ("GET", "/api/v1/search") in routes
    assert ("GET", "/api/v1/changes") in routes
    assert len(routes) >= 30


def test_healthz_needs_no_token(central_module: CentralProcess) -> None:
    resp = api(central_module, "GET", "/healthz", token=None)
    assert resp.status == 200
    body = resp.json()
    assert body["status"] == "ok"
    assert isinstance(body["version"], str)
    assert body["version"]


def _counter_total(text: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{")[0].split(" ")[0]
        if "request" in name and name.endswith("_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_are_prometheus_text_with_a_request_counter(
    central_module: CentralProcess,
) -> None:
    first = api(central_module, "GET", "/metrics", token=None)
    assert first.status == 200
    assert first.headers["Content-Type"].startswith("text/plain")
    text = first.body.decode()
    assert re.search(r"^# TYPE \S*request\S*_total counter$", text, re.MULTILINE), text[:2000]
    for _ in range(5):
        api_ok(central_module, "GET", "/api/v1/models")
    second = api(central_module, "GET", "/metrics", token=None).body.decode()
    assert _counter_total(second) >= _counter_total(text) + 5


def test_openapi_needs_no_token_and_lists_every_documented_route(
    central_module: CentralProcess,
) -> None:
    resp = api(central_module, "GET", "/api/v1/openapi.json", token=None)
    assert resp.status == 200
    doc = resp.json()
    assert str(doc["openapi"]).startswith("3.")
    assert doc["info"]["title"]
    served: set[tuple[str, str]] = set()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method.upper() in {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}:
                served.add((method.upper(), _PARAM.sub("{}", path)))
                assert operation.get("responses"), (method, path)
    # aiohttp answers HEAD for every GET route
    served |= {("HEAD", p) for m, p in served if m == "GET"}
    missing = documented_routes() - served
    assert not missing, sorted(missing)


def test_openapi_routes_exist(central_module: CentralProcess) -> None:
    doc = api_ok(central_module, "GET", "/api/v1/openapi.json", token=None)
    for path, item in doc["paths"].items():
        if "get" not in item:
            continue
        concrete = _PARAM.sub("x", path)
        resp = api(central_module, "GET", concrete)
        # a path parameter that names nothing is a 400 or a 404 *with an error body*
        if resp.status in (400, 404):
            resp.error()
        else:
            assert resp.status < 500, (path, resp.status)


def _etag_roundtrip(central: CentralProcess, path: str) -> str:
    first = api(central, "GET", path)
    assert first.status == 200, (path, first.body[:300])
    etag = first.headers["ETag"]
    assert etag, path
    again = api(central, "GET", path, headers={"If-None-Match": etag})
    assert again.status == 304, path
    assert again.body == b""
    other = api(central, "GET", path, headers={"If-None-Match": '"stale"'})
    assert other.status == 200
    assert other.body == first.body
    return str(etag)


def test_metadata_gets_carry_an_etag(central_module: CentralProcess) -> None:
    model = unique("etag")
    register(central_module, model, "1.0.0", metadata={"training": {"metrics": {"auc": 0.5}}})
    api_ok(
        central_module,
        "PUT",
        f"/api/v1/models/{model}/aliases/production",
        json={"version": "1.0.0"},
    )
    for path in (
        f"/api/v1/models/{model}",
        f"/api/v1/models/{model}/versions/1.0.0",
        f"/api/v1/models/{model}/versions/1.0.0/manifest",
        f"/api/v1/models/{model}/versions/1.0.0/metadata",
        f"/api/v1/models/{model}/aliases/production",
        "/api/v1/root",
    ):
        _etag_roundtrip(central_module, path)


def test_etag_changes_when_the_record_changes(central_module: CentralProcess) -> None:
    model = unique("etag2")
    register(central_module, model, "1.0.0")
    path = f"/api/v1/models/{model}"
    old = _etag_roundtrip(central_module, path)
    api_ok(central_module, "PATCH", path, json={"description": "changed"})
    resp = api(central_module, "GET", path, headers={"If-None-Match": old})
    assert resp.status == 200
    body: dict[str, Any] = resp.json()
    assert body["description"] == "changed"
    assert resp.headers["ETag"] != old
