"""Handlers for model versions, their manifests, metadata and stages."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from central.api.common import json_response, limit_param, read_json
from central.api.keys import ACTOR, ALIASES, APPROVALS, COMPLIANCE, CONFIG, REGISTRY
from central.requests import RegisterVersion, required_str
from shared.errors import InvalidInputError


async def list_versions(request: web.Request) -> web.Response:
    page = await request.app[REGISTRY].list_versions(
        request[ACTOR],
        request.match_info["model"],
        request.query.get("branch"),
        limit_param(request),
        request.query.get("cursor"),
    )
    return json_response(request, request.app[COMPLIANCE].versions(request[ACTOR], page.to_dict()))


async def register_version(request: web.Request) -> web.Response:
    body = await read_json(request, request.app[CONFIG].max_json_bytes)
    command = RegisterVersion.from_dict(request.match_info["model"], body)
    await request.app[COMPLIANCE].check_registration(request[ACTOR], [command])
    version = await request.app[REGISTRY].register(request[ACTOR], command)
    return json_response(
        request, request.app[COMPLIANCE].version(request[ACTOR], version), status=201
    )


async def register_batch(request: web.Request) -> web.Response:
    body: Any = await read_json(request, request.app[CONFIG].max_json_bytes)
    items = body.get("versions") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise InvalidInputError('body must be {"versions": [...]}')
    commands = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("model"), str):
            raise InvalidInputError(f"versions[{i}] needs a 'model' name")
        try:
            commands.append(RegisterVersion.from_dict(item["model"], item))
        except InvalidInputError as e:
            raise InvalidInputError(f"versions[{i}]: {e}") from e
    await request.app[COMPLIANCE].check_registration(request[ACTOR], commands)
    versions = await request.app[REGISTRY].register_batch(request[ACTOR], commands)
    batch = {"items": [v.to_dict() for v in versions]}
    return json_response(
        request, request.app[COMPLIANCE].versions(request[ACTOR], batch), status=201
    )


async def get_version(request: web.Request) -> web.Response:
    version = await request.app[ALIASES].resolve(
        request[ACTOR], request.match_info["model"], request.match_info["ref"]
    )
    return json_response(request, request.app[COMPLIANCE].version(request[ACTOR], version))


async def get_manifest(request: web.Request) -> web.Response:
    version = await request.app[REGISTRY].get_version(
        request[ACTOR], request.match_info["model"], request.match_info["version"]
    )
    return json_response(request, version.manifest)


async def get_metadata(request: web.Request) -> web.Response:
    view = request.query.get("view", "full")
    if view not in ("full", "signed"):
        raise InvalidInputError(f"view must be 'full' or 'signed', got {view!r:.40}")
    document = await request.app[REGISTRY].metadata_document(
        request[ACTOR],
        request.match_info["model"],
        request.match_info["version"],
        signed=view == "signed",
    )
    return json_response(request, request.app[COMPLIANCE].document(request[ACTOR], document))


async def set_stage(request: web.Request) -> web.Response:
    body = await read_json(request, request.app[CONFIG].max_json_bytes)
    outcome = await request.app[APPROVALS].set_stage(
        request[ACTOR],
        request.match_info["model"],
        request.match_info["version"],
        required_str(body, "stage", 32),
    )
    if outcome.request is not None:  # the policy asks for approval: 202 with the request
        return json_response(request, outcome.request.to_dict(), status=202)
    assert outcome.version is not None
    return json_response(request, request.app[COMPLIANCE].version(request[ACTOR], outcome.version))
