"""Handlers for the audit log: list, verify, export (JSON Lines)."""

from __future__ import annotations

from aiohttp import web

from central.api.common import json_response, limit_param
from central.api.keys import ACTOR, AUDIT


async def list_audit(request: web.Request) -> web.Response:
    q = request.query
    page = await request.app[AUDIT].list(
        request[ACTOR],
        actor_name=q.get("actor"),
        model=q.get("model"),
        action=q.get("action"),
        since=q.get("since"),
        limit=limit_param(request),
        cursor=q.get("cursor"),
    )
    return json_response(request, page.to_dict(), etag=False)


async def verify_audit(request: web.Request) -> web.Response:
    report = await request.app[AUDIT].verify(request[ACTOR])
    return json_response(request, report, etag=False)


async def export_audit(request: web.Request) -> web.StreamResponse:
    lines = await request.app[AUDIT].export(request[ACTOR])
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    async for chunk in lines:
        await response.write(chunk)
    await response.write_eof()
    return response
