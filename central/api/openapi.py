"""The OpenAPI 3 document, built from the route table so it cannot drift from the routes."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

import shared
from central.api.common import json_response
from central.api.schemas import PATH_PARAMS, QUERY_PARAMS, REQUEST_BODIES, RESPONSE_BODIES

_PARAM = re.compile(r"{(\w+)(?::([^{}]+))?}")  # aiohttp's {name} or {name:regex}
_ERROR = {"$ref": "#/components/responses/Error"}


def _key(route: Any) -> str:
    """``module.handler``, the key of a route's schemas in ``central.api.schemas``."""
    return f"{route.handler.__module__.rsplit('.', 1)[-1]}.{route.handler.__name__}"


def _success(route: Any) -> dict[str, Any]:
    schema = RESPONSE_BODIES.get(_key(route))
    if schema is None or route.method == "HEAD":
        return {"description": "success"}
    return {"description": "success", "content": {"application/json": {"schema": schema}}}


def _operation(route: Any) -> dict[str, Any]:
    name = route.handler.__name__
    key = _key(route)
    secured = route.path.startswith("/api/v1") and not route.path.endswith("openapi.json")
    errors = (
        *route.errors,
        *((415,) if route.body == "json" else ()),
        *((429,) if secured else ()),
    )
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": f"{route.method.lower()}_{name}",
        "x-permission": route.permission,
        "parameters": [
            {
                "name": n,
                "in": "path",
                "required": True,
                "schema": PATH_PARAMS.get(n, {"type": "string"})
                if not regex
                else {"type": "string", "pattern": f"^(?:{regex})$"},
            }
            for n, regex in _PARAM.findall(route.path)
        ]
        + [
            {"name": n, "in": "query", "schema": QUERY_PARAMS.get(n, {"type": "string"})}
            for n in route.query
        ],
        "responses": {str(route.ok): _success(route)} | {str(s): _ERROR for s in errors},
    }
    if route.body == "json":
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": REQUEST_BODIES.get(key, {"type": "object"})}
            },
        }
    elif route.body == "binary":
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    if secured:
        op["security"] = [{"bearer": []}]
    return op


def document() -> dict[str, Any]:
    from central.api.routes import ROUTES

    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        path = _PARAM.sub(lambda m: "{" + m.group(1) + "}", route.path)
        paths.setdefault(path, {})[route.method.lower()] = _operation(route)
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
                                "required": ["error"],
                                "properties": {
                                    "error": {
                                        "type": "object",
                                        "required": ["code", "message"],
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
