"""Every route of the API, in one table that also feeds the OpenAPI document."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from central.api import aliases, blobs, fleets, misc, models, openapi, versions

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    query: tuple[str, ...] = ()
    body: str | None = None  # "json", "binary" or None
    ok: int = 200
    errors: tuple[int, ...] = (400, 401, 403, 404)


V1 = "/api/v1"
M = V1 + "/models/{model}"

ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", misc.healthz, "Liveness of the service", errors=()),
    Route("GET", "/metrics", misc.metrics, "Prometheus metrics", errors=()),
    Route("GET", V1 + "/openapi.json", openapi.serve, "This document", errors=()),
    Route("GET", V1 + "/root", misc.root, "Current signed root document"),
    Route("GET", V1 + "/root/{number}", misc.root_version, "Signed root document version n"),
    Route(
        "PUT",
        V1 + "/blobs/{digest}",
        blobs.put_blob,
        "Upload a blob (streamed)",
        body="binary",
        ok=201,
        errors=(400, 401, 403, 413),
    ),
    Route(
        "GET",
        V1 + "/blobs/{digest}",
        blobs.get_blob,
        "Download a blob's zstd bytes",
        errors=(400, 401, 403, 404, 416),
    ),
    Route("HEAD", V1 + "/blobs/{digest}", blobs.get_blob, "Blob headers only"),
    Route("GET", V1 + "/blobs/{digest}/info", blobs.blob_info, "Blob record"),
    Route(
        "GET",
        V1 + "/models",
        models.list_models,
        "List models",
        query=("prefix", "limit", "cursor"),
    ),
    Route(
        "POST",
        V1 + "/models",
        models.create_model,
        "Create a model",
        body="json",
        ok=201,
        errors=(400, 401, 403, 409, 413),
    ),
    Route("GET", M, models.get_model, "Show a model"),
    Route("PATCH", M, models.update_model, "Edit a model's description and tags", body="json"),
    Route(
        "GET",
        M + "/versions",
        versions.list_versions,
        "List versions, newest first",
        query=("branch", "limit", "cursor"),
    ),
    Route(
        "POST",
        M + "/versions",
        versions.register_version,
        "Register a version",
        body="json",
        ok=201,
        errors=(400, 401, 403, 409, 413),
    ),
    Route(
        "POST",
        V1 + "/versions:batch",
        versions.register_batch,
        "Register many versions, all or nothing",
        body="json",
        ok=201,
        errors=(400, 401, 403, 409, 413),
    ),
    Route("GET", M + "/versions/{ref}", versions.get_version, "Show a version by version or alias"),
    Route(
        "GET", M + "/versions/{version}/manifest", versions.get_manifest, "Signed manifest envelope"
    ),
    Route(
        "GET",
        M + "/versions/{version}/metadata",
        versions.get_metadata,
        "Metadata document the manifest signs",
    ),
    Route(
        "PUT",
        M + "/versions/{version}/stage",
        versions.set_stage,
        "Move to a lifecycle stage",
        body="json",
        errors=(400, 401, 403, 404, 409),
    ),
    Route("GET", M + "/aliases", aliases.list_aliases, "List a model's aliases"),
    Route("GET", M + "/aliases/{alias}", aliases.get_alias, "Resolve an alias"),
    Route(
        "PUT", M + "/aliases/{alias}", aliases.set_alias, "Point an alias at a version", body="json"
    ),
    Route("DELETE", M + "/aliases/{alias}", aliases.delete_alias, "Delete an alias", ok=204),
    Route(
        "GET",
        M + "/aliases/{alias}/history",
        aliases.alias_history,
        "Alias moves, newest first",
        query=("limit",),
    ),
    Route(
        "POST",
        M + "/aliases/{alias}/rollback",
        aliases.rollback_alias,
        "Point an alias back at its previous target",
        errors=(400, 401, 403, 404, 409),
    ),
    Route(
        "GET",
        V1 + "/search",
        misc.search,
        "Search versions",
        query=("filter", "order_by", "limit", "cursor"),
    ),
    Route(
        "GET",
        V1 + "/changes",
        misc.changes,
        "Change log since a sequence number",
        query=("since", "limit"),
    ),
    Route(
        "POST",
        V1 + "/tokens",
        misc.create_token,
        "Create a token (shown once)",
        body="json",
        ok=201,
    ),
    Route("GET", V1 + "/tokens", misc.list_tokens, "List tokens"),
    Route(
        "POST",
        V1 + "/keys/rotate",
        misc.rotate_keys,
        "Rotate the root or targets key: a new root version, signed by old and new keys",
        body="json",
    ),
    Route("GET", V1 + "/fleets", fleets.list_fleets, "List fleets"),
    Route(
        "POST",
        V1 + "/fleets",
        fleets.create_fleet,
        "Create a fleet",
        body="json",
        ok=201,
        errors=(400, 401, 403, 409),
    ),
    Route(
        "GET",
        V1 + "/fleets/{fleet}",
        fleets.show_fleet,
        "Show a fleet: assignments, signed state, devices and their reports",
    ),
    Route(
        "PUT",
        V1 + "/fleets/{fleet}/models/{model}",
        fleets.assign_model,
        "Assign a model to a fleet, following an alias",
        body="json",
    ),
    Route(
        "DELETE",
        V1 + "/fleets/{fleet}/models/{model}",
        fleets.unassign_model,
        "Stop a fleet following a model",
    ),
    Route(
        "POST",
        V1 + "/fleets/{fleet}/devices",
        fleets.enroll_device,
        "Enroll a device: its token (shown once) and the trusted root",
        body="json",
        ok=201,
        errors=(400, 401, 403, 404, 409),
    ),
    Route(
        "GET",
        V1 + "/fleets/{fleet}/bundle",
        fleets.export_bundle,
        "Offline bundle: root chain, fleet state, manifests and blobs",
    ),
    Route(
        "GET",
        V1 + "/sync",
        fleets.sync,
        "Device sync: long-polled changes since a cursor",
        query=("since", "wait", "root"),
    ),
    Route(
        "POST",
        V1 + "/devices/{device}/report",
        fleets.report,
        "Device state report",
        body="json",
        ok=204,
    ),
    Route("DELETE", V1 + "/tokens/{token_id}", misc.revoke_token, "Revoke a token", ok=204),
)


def setup_routes(app: web.Application) -> None:
    for r in ROUTES:
        if r.method == "HEAD":
            continue  # added with its GET route below
        if r.method == "GET":
            app.router.add_get(r.path, r.handler, allow_head=True)
        else:
            app.router.add_route(r.method, r.path, r.handler)
