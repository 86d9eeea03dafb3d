"""Handlers for rollouts: start, list, show, pause, resume, abort, promote."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from central.api.common import json_response, read_json
from central.api.keys import ACTOR, CONFIG, ROLLOUTS
from central.services.rollouts import StartRollout


async def start(request: web.Request) -> web.Response:
    spec = StartRollout.from_dict(await read_json(request, request.app[CONFIG].max_json_bytes))
    rollout = await request.app[ROLLOUTS].start(request[ACTOR], spec)
    return json_response(request, rollout, status=201)


async def list_rollouts(request: web.Request) -> web.Response:
    items = await request.app[ROLLOUTS].list_all(
        request[ACTOR],
        fleet=request.query.get("fleet"),
        model=request.query.get("model"),
        status=request.query.get("status"),
    )
    return json_response(request, {"items": items})


async def show(request: web.Request) -> web.Response:
    rollout = await request.app[ROLLOUTS].show(request[ACTOR], request.match_info["rollout"])
    return json_response(request, rollout, etag=False)


def _steer(action: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        service = request.app[ROLLOUTS]
        steer = getattr(service, action)
        found = await steer(request[ACTOR], request.match_info["rollout"])
        return json_response(request, found, etag=False)

    handler.__name__ = action
    return handler


pause = _steer("pause")
resume = _steer("resume")
abort = _steer("abort")
promote = _steer("promote")
