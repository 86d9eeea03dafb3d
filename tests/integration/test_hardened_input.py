"""Malformed requests get a clear 4xx, never a 5xx, and change nothing."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.support import CentralProcess, all_changes, api, api_ok, register


@pytest.fixture(scope="module")
def hardc(central_module: CentralProcess) -> CentralProcess:
    register(central_module, "hard", "1.0.0")
    return central_module


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth - 1):
        value = {"k": value}
    return {"name": "deep", "tags": {}, "description": "x", "x": value}


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/api/v1/models/%ff%fe", 400),  # not UTF-8
        ("GET", "/api/v1/models/a%00b", 400),
        ("GET", "/api/v1/models/hard/versions/%ed%a0%80", 400),  # a lone surrogate
        ("GET", "/api/v1/models/hard/aliases/%00", 400),
        ("GET", "/api/v1/blobs/sha256:%00/info", 400),
        ("GET", "/api/v1/fleets/%c0%af", 400),
        ("GET", "/api/v1/models?limit=-1", 400),
        ("GET", "/api/v1/models?limit=99999999999999999999", 400),
        ("GET", "/api/v1/models?limit=abc", 400),
        ("GET", "/api/v1/models?cursor=%ff%ff", 400),
        ("GET", "/api/v1/search?order_by=name", 400),
        ("GET", "/api/v1/search?order_by=created_at%20sideways", 400),
        ("GET", "/api/v1/search?limit=0", 400),
        ("GET", "/api/v1/search?cursor=!!!", 400),
        ("GET", "/api/v1/changes?since=-5", 400),
        ("GET", "/api/v1/sync?wait=nan", 400),
        ("GET", "/api/v1/sync?wait=inf", 400),
        ("GET", "/api/v1/models/hard/aliases/production/history?limit=1000000", 400),
    ],
)
def test_bad_paths_and_queries_are_400(
    hardc: CentralProcess, method: str, path: str, expected: int
) -> None:
    resp = api(hardc, method, path)
    assert resp.status == expected, resp.body[:500]
    assert resp.error()["code"] == "invalid"


def test_deep_json_is_400(hardc: CentralProcess) -> None:
    before = all_changes(hardc)
    resp = api(hardc, "POST", "/api/v1/models", json=_nested(40))
    assert resp.status == 400
    assert "deeper than 32" in resp.error()["message"]
    resp = api(hardc, "POST", "/api/v1/models", data=b"[" * 100_000 + b"]" * 100_000)
    assert resp.status == 400
    assert all_changes(hardc) == before


def test_wrong_content_type_on_a_json_route_is_415(hardc: CentralProcess) -> None:
    resp = api(
        hardc,
        "POST",
        "/api/v1/models",
        data=b'{"name": "form"}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 415
    assert "application/json" in resp.error()["message"]
    assert api(hardc, "GET", "/api/v1/models/form").status == 404
    # a missing Content-Type is read as JSON; a +json type is JSON
    api_ok(hardc, "POST", "/api/v1/models", 201, data=b'{"name": "untyped"}')
    api_ok(
        hardc,
        "POST",
        "/api/v1/models",
        201,
        data=b'{"name": "typed"}',
        headers={"Content-Type": "application/merge-patch+json; charset=utf-8"},
    )


def test_absurd_content_length_is_413(hardc: CentralProcess) -> None:
    with socket.create_connection(("127.0.0.1", hardc.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/models HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {hardc.token}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 99999999999999\r\n\r\n{}"
        )
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]


def test_garbage_content_length_is_400(hardc: CentralProcess) -> None:
    with socket.create_connection(("127.0.0.1", hardc.port), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}")
        head = sock.recv(65536)
    assert head.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), head[:200]  # parser


def test_long_strings_are_400(hardc: CentralProcess) -> None:
    resp = api(hardc, "PATCH", "/api/v1/models/hard", json={"description": "x" * 70_000})
    assert resp.status == 400
    resp = api(hardc, "POST", "/api/v1/models", json={"name": "n", "x" * 2000: 1})
    assert resp.status == 400
