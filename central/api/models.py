"""Handlers for registered models."""

from __future__ import annotations

from aiohttp import web

from central.api.common import json_response, limit_param, read_json
from central.api.keys import ACTOR, CONFIG, REGISTRY
from central.requests import ModelFields, required_str


async def list_models(request: web.Request) -> web.Response:
    page = await request.app[REGISTRY].list_models(
        request[ACTOR],
        request.query.get("prefix", ""),
        limit_param(request),
        request.query.get("cursor"),
    )
    return json_response(request, page.to_dict())


async def create_model(request: web.Request) -> web.Response:
    body = await read_json(request, request.app[CONFIG].max_json_bytes)
    name = required_str(body, "name", 1024)
    fields = ModelFields.from_dict(body, allow_name=True)
    model = await request.app[REGISTRY].create_model(request[ACTOR], name, fields)
    return json_response(request, model.to_dict(), status=201)


async def get_model(request: web.Request) -> web.Response:
    model = await request.app[REGISTRY].get_model(request[ACTOR], request.match_info["model"])
    return json_response(request, model.to_dict())


async def update_model(request: web.Request) -> web.Response:
    body = await read_json(request, request.app[CONFIG].max_json_bytes)
    fields = ModelFields.from_dict(body, allow_name=False)
    model = await request.app[REGISTRY].update_model(
        request[ACTOR], request.match_info["model"], fields
    )
    return json_response(request, model.to_dict())
