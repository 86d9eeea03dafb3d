"""Handlers for fleets, device enrollment, device sync and reports, and bundles."""

from __future__ import annotations

import asyncio

from aiohttp import web

from central.api.common import int_param, json_response, read_json
from central.api.keys import ACTOR, CONFIG, FLEETS, SYNC
from central.requests import required_str
from shared.errors import InvalidInputError


async def list_fleets(request: web.Request) -> web.Response:
    return json_response(request, {"items": await request.app[FLEETS].list_all(request[ACTOR])})


async def create_fleet(request: web.Request) -> web.Response:
    body = await read_json(request, request.app[CONFIG].max_json_bytes)
    description = body.get("description", "") if isinstance(body, dict) else ""
    if not isinstance(description, str):
        raise InvalidInputError("description must be a string")
    fleet = await request.app[FLEETS].create(
        request[ACTOR], required_str(body, "name", 1024), description
    )
    return json_response(request, fleet, status=201)


async def show_fleet(request: web.Request) -> web.Response:
    fleet = await request.app[FLEETS].show(request[ACTOR], request.match_info["fleet"])
    return json_response(request, fleet)


async def assign_model(request: web.Request) -> web.Response:
    body = await read_json(request, request.app[CONFIG].max_json_bytes)
    fleet = await request.app[FLEETS].assign(
        request[ACTOR],
        request.match_info["fleet"],
        request.match_info["model"],
        required_str(body, "alias", 128),
    )
    return json_response(request, fleet)


async def unassign_model(request: web.Request) -> web.Response:
    fleet = await request.app[FLEETS].unassign(
        request[ACTOR], request.match_info["fleet"], request.match_info["model"]
    )
    return json_response(request, fleet)


async def enroll_device(request: web.Request) -> web.Response:
    body = await read_json(request, request.app[CONFIG].max_json_bytes)
    enrolled = await request.app[FLEETS].enroll(
        request[ACTOR], request.match_info["fleet"], required_str(body, "device", 1024)
    )
    return json_response(request, enrolled, status=201, etag=False)


async def export_bundle(request: web.Request) -> web.StreamResponse:
    path = await request.app[FLEETS].export_bundle(request[ACTOR], request.match_info["fleet"])
    filename = f"{request.match_info['fleet']}.skiff"
    try:
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/x-tar",
                "Content-Disposition": f'attachment; filename="{filename}"',
            }
        )
        response.content_length = (await asyncio.to_thread(path.stat)).st_size
        await response.prepare(request)
        with path.open("rb") as f:
            while chunk := await asyncio.to_thread(f.read, 1 << 20):
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        await asyncio.to_thread(path.unlink, True)


async def sync(request: web.Request) -> web.Response:
    wait_raw = request.query.get("wait", "0")
    try:
        wait = float(wait_raw)
    except ValueError:
        raise InvalidInputError(f"wait must be a number of seconds, got {wait_raw!r}") from None
    if not 0 <= wait <= 3600:  # also refuses nan and inf
        raise InvalidInputError(f"wait must be between 0 and 3600 seconds, got {wait_raw!r}")
    answer = await request.app[SYNC].sync(
        request[ACTOR],
        int_param(request, "since", 0, 0, 2**62),
        wait,
        int_param(request, "root", 0, 0, 2**31),
    )
    return json_response(request, answer, etag=False)


async def report(request: web.Request) -> web.Response:
    body = await read_json(request, min(request.app[CONFIG].max_json_bytes, 1 << 20))
    if not isinstance(body, dict):
        raise InvalidInputError("a report is a JSON object")
    await request.app[SYNC].report(request[ACTOR], request.match_info["device"], body)
    return web.Response(status=204)
