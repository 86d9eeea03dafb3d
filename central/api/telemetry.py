"""Handlers for edge telemetry: device uploads and per-version summaries."""

from __future__ import annotations

from aiohttp import web

from central.api.common import json_response, read_json
from central.api.keys import ACTOR, CONFIG, TELEMETRY


async def upload(request: web.Request) -> web.Response:
    body = await read_json(request, request.app[CONFIG].max_json_bytes)
    result = await request.app[TELEMETRY].ingest(request[ACTOR], request.match_info["device"], body)
    return json_response(request, result, etag=False)


async def summary(request: web.Request) -> web.Response:
    result = await request.app[TELEMETRY].summary(
        request[ACTOR],
        request.match_info["model"],
        request.match_info["version"],
        fleet=request.query.get("fleet"),
        since=request.query.get("since"),
    )
    return json_response(request, result)
