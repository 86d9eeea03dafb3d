"""Handlers for webhooks: add, list, remove, and the deliveries of each."""

from __future__ import annotations

from aiohttp import web

from central.api.common import json_response, limit_param, read_json
from central.api.keys import ACTOR, CONFIG, WEBHOOK_DELIVERY, WEBHOOKS
from shared.errors import InvalidInputError

MAX_BODY = 64_000  # a webhook body is a URL, a few patterns and a secret


async def create_webhook(request: web.Request) -> web.Response:
    body = await read_json(request, min(MAX_BODY, request.app[CONFIG].max_json_bytes))
    hook, secret = await request.app[WEBHOOKS].create(request[ACTOR], body)
    request.app[WEBHOOK_DELIVERY].poke()
    record = hook.to_dict()
    if secret is not None:
        record["secret"] = secret  # generated: shown this once
    return json_response(request, record, status=201)


async def list_webhooks(request: web.Request) -> web.Response:
    hooks = await request.app[WEBHOOKS].list_all(request[ACTOR])
    return json_response(request, {"items": [h.to_dict() for h in hooks]}, etag=False)


async def delete_webhook(request: web.Request) -> web.Response:
    await request.app[WEBHOOKS].remove(request[ACTOR], request.match_info["webhook_id"])
    return web.Response(status=204)


async def redeliver(request: web.Request) -> web.Response:
    raw = request.match_info["delivery_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidInputError(f"delivery id must be a number, got {raw!r}")
    delivery = await request.app[WEBHOOKS].redeliver(
        request[ACTOR], request.match_info["webhook_id"], int(raw)
    )
    request.app[WEBHOOK_DELIVERY].poke()
    return json_response(request, delivery.to_dict(), etag=False)


async def list_deliveries(request: web.Request) -> web.Response:
    items, cursor = await request.app[WEBHOOKS].deliveries(
        request[ACTOR],
        request.match_info["webhook_id"],
        status=request.query.get("status"),
        limit=limit_param(request),
        cursor=request.query.get("cursor"),
    )
    body = {"items": [d.to_dict() for d in items], "next_cursor": cursor}
    return json_response(request, body, etag=False)
