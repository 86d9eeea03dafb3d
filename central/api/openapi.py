"""The OpenAPI 3 document, built from the route table so it cannot drift from the routes."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

import shared
from central.api.common import json_response

_PARAM = re.compile(r"{(\w+)}")
_ERROR = {"$ref": "#/components/responses/Error"}


def _operation(route: Any) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": f"{route.method.lower()}_{route.handler.__name__}",
        "parameters": [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in _PARAM.findall(route.path)
        ]
        + [{"name": n, "in": "query", "schema": {"type": "string"}} for n in route.query],
        "responses": {str(route.ok): {"description": "success"}}
        | {str(s): _ERROR for s in route.errors},
    }
    if route.body == "json":
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    elif route.body == "binary":
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    if route.path.startswith("/api/v1") and not route.path.endswith("openapi.json"):
        op["security"] = [{"bearer": []}]
    return op


def document() -> dict[str, Any]:
    from central.api.routes import ROUTES

    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.0.3",
        "info": {"title": "Skiff central registry", "version": shared.__version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "error",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "error": {
                                        "type": "object",
                                        "properties": {
                                            "code": {"type": "string"},
                                            "message": {"type": "string"},
                                        },
                                    }
                                },
                            }
                        }
                    },
                }
            },
        },
    }


async def serve(request: web.Request) -> web.Response:
    return json_response(request, document())
