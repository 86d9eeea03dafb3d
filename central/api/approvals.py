"""Handlers for approval requests and the policy readiness of a version."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from central.api.common import json_response, limit_param, read_json
from central.api.keys import ACTOR, APPROVALS, CONFIG
from shared.errors import InvalidInputError


def _request_id(request: web.Request) -> int:
    raw = request.match_info["request_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidInputError(f"request id must be a number, got {raw[:32]!r}")
    return int(raw)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    body = await read_json(request, request.app[CONFIG].max_json_bytes)
    if not isinstance(body, dict):
        raise InvalidInputError("request body must be a JSON object")
    return body


def _text(body: dict[str, Any], key: str, allowed: set[str]) -> str:
    unknown = set(body) - allowed
    if unknown:
        raise InvalidInputError(f"unknown field(s): {', '.join(sorted(unknown))}")
    value = body.get(key, "")
    if not isinstance(value, str):
        raise InvalidInputError(f"{key} must be a string")
    return value


async def list_requests(request: web.Request) -> web.Response:
    items, cursor = await request.app[APPROVALS].list(
        request[ACTOR],
        request.query.get("status") or None,
        limit_param(request),
        request.query.get("cursor"),
    )
    return json_response(
        request, {"items": [r.to_dict() for r in items], "next_cursor": cursor}, etag=False
    )


async def get_request(request: web.Request) -> web.Response:
    found = await request.app[APPROVALS].get(request[ACTOR], _request_id(request))
    return json_response(request, found.to_dict(), etag=False)


async def approve(request: web.Request) -> web.Response:
    comment = _text(await _body(request), "comment", {"comment"})
    found = await request.app[APPROVALS].approve(request[ACTOR], _request_id(request), comment)
    return json_response(request, found.to_dict())


async def reject(request: web.Request) -> web.Response:
    body = await _body(request)
    if "reason" not in body:
        raise InvalidInputError("missing field 'reason'")
    reason = _text(body, "reason", {"reason"})
    found = await request.app[APPROVALS].reject(request[ACTOR], _request_id(request), reason)
    return json_response(request, found.to_dict())


async def policy_report(request: web.Request) -> web.Response:
    report = await request.app[APPROVALS].readiness(
        request[ACTOR],
        request.match_info["model"],
        request.match_info["version"],
        request.query.get("stage", "production"),
    )
    return json_response(request, report, etag=False)
