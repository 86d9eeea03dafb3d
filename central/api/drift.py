"""Handler of data-drift reports: live input distributions against a version's reference."""

from __future__ import annotations

from aiohttp import web

from central.api.common import json_response
from central.api.keys import ACTOR, DRIFT


async def report(request: web.Request) -> web.Response:
    result = await request.app[DRIFT].report(
        request[ACTOR],
        request.match_info["model"],
        request.match_info["version"],
        fleet=request.query.get("fleet"),
        since=request.query.get("since"),
    )
    return json_response(request, result)
