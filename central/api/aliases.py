"""Handlers for aliases: get, set, delete, history, rollback."""

from __future__ import annotations

from aiohttp import web

from central.api.common import json_response, limit_param, read_json
from central.api.keys import ACTOR, ALIASES, CONFIG
from central.requests import required_str


async def list_aliases(request: web.Request) -> web.Response:
    aliases = await request.app[ALIASES].list_all(request[ACTOR], request.match_info["model"])
    return json_response(request, {"items": [a.to_dict() for a in aliases]})


async def get_alias(request: web.Request) -> web.Response:
    alias = await request.app[ALIASES].get(
        request[ACTOR], request.match_info["model"], request.match_info["alias"]
    )
    return json_response(request, alias.to_dict())


async def set_alias(request: web.Request) -> web.Response:
    body = await read_json(request, request.app[CONFIG].max_json_bytes)
    alias = await request.app[ALIASES].set(
        request[ACTOR],
        request.match_info["model"],
        request.match_info["alias"],
        required_str(body, "version"),
    )
    return json_response(request, alias.to_dict())


async def delete_alias(request: web.Request) -> web.Response:
    await request.app[ALIASES].delete(
        request[ACTOR], request.match_info["model"], request.match_info["alias"]
    )
    return web.Response(status=204)


async def alias_history(request: web.Request) -> web.Response:
    events = await request.app[ALIASES].history(
        request[ACTOR],
        request.match_info["model"],
        request.match_info["alias"],
        limit_param(request),
    )
    return json_response(request, {"items": [e.to_dict() for e in events]})


async def rollback_alias(request: web.Request) -> web.Response:
    alias = await request.app[ALIASES].rollback(
        request[ACTOR], request.match_info["model"], request.match_info["alias"]
    )
    return json_response(request, alias.to_dict())
