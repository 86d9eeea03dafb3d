"""Handlers for search, the change log, tokens, the root document and the service itself."""

from __future__ import annotations

from aiohttp import web

import shared
from central.api.common import int_param, json_response, limit_param, read_json
from central.api.keys import ACTOR, CHANGES, COMPLIANCE, CONFIG, KEYS, METRICS, SEARCH, TOKENS
from central.requests import CreateToken, required_str


async def search(request: web.Request) -> web.Response:
    compliance = request.app[COMPLIANCE]
    text = request.query.get("filter", "")
    order_by = request.query.get("order_by", "created_at desc")
    compliance.check_search(request[ACTOR], text, order_by)
    page = await request.app[SEARCH].search(
        request[ACTOR], text, order_by, limit_param(request), request.query.get("cursor")
    )
    return json_response(request, compliance.versions(request[ACTOR], page.to_dict()))


async def changes(request: web.Request) -> web.Response:
    items, cursor = await request.app[CHANGES].since(
        request[ACTOR], int_param(request, "since", 0, 0, 2**62), limit_param(request)
    )
    return json_response(request, {"items": [c.to_dict() for c in items], "next": cursor})


async def root(request: web.Request) -> web.Response:
    return json_response(request, await request.app[CHANGES].root(request[ACTOR]))


async def root_version(request: web.Request) -> web.Response:
    try:
        number = int(request.match_info["number"])
    except ValueError:
        raise web.HTTPNotFound() from None
    return json_response(request, await request.app[CHANGES].root(request[ACTOR], number))


async def create_token(request: web.Request) -> web.Response:
    body = CreateToken.from_dict(await read_json(request, request.app[CONFIG].max_json_bytes))
    token, secret = await request.app[TOKENS].create(
        request[ACTOR],
        name=body.name,
        role=body.role,
        expires_in=body.expires_in,
        models=body.models,
    )
    return json_response(request, {**token.to_dict(), "token": secret}, status=201)


async def list_tokens(request: web.Request) -> web.Response:
    tokens = await request.app[TOKENS].list_all(request[ACTOR])
    return json_response(request, {"items": [t.to_dict() for t in tokens]})


async def revoke_token(request: web.Request) -> web.Response:
    await request.app[TOKENS].revoke(request[ACTOR], request.match_info["token_id"])
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": shared.__version__})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[METRICS].render(),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def rotate_keys(request: web.Request) -> web.Response:
    body = await read_json(request, request.app[CONFIG].max_json_bytes)
    envelope = await request.app[KEYS].rotate(request[ACTOR], required_str(body, "role", 16))
    return json_response(request, envelope, etag=False)
