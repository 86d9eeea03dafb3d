"""The OpenAPI document's schemas name real routes, and path parameters carry patterns."""

from __future__ import annotations

import re

from central.api.openapi import _key, document
from central.api.routes import ROUTES
from central.api.schemas import REQUEST_BODIES, RESPONSE_BODIES


def test_every_schema_belongs_to_a_route() -> None:
    keys = {_key(r) for r in ROUTES}
    assert set(REQUEST_BODIES) <= keys, set(REQUEST_BODIES) - keys
    assert set(RESPONSE_BODIES) <= keys, set(RESPONSE_BODIES) - keys


def test_request_bodies_only_on_json_routes() -> None:
    json_routes = {_key(r) for r in ROUTES if r.body == "json"}
    assert set(REQUEST_BODIES) <= json_routes


def test_names_and_digests_carry_their_patterns() -> None:
    doc = document()
    for path, item in doc["paths"].items():
        assert ":" not in re.sub(r"versions:batch", "", path), path  # no aiohttp regex left
        for operation in item.values():
            assert operation["x-permission"], path
            for param in operation["parameters"]:
                if param["in"] == "path" and param["name"] in ("model", "alias", "digest"):
                    assert param["schema"]["pattern"].startswith("^"), (path, param)
