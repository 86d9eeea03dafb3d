"""Every route of the API, in one table that also feeds the OpenAPI document."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from central.api import (
    aliases,
    approvals,
    audit,
    blobs,
    drift,
    fleets,
    misc,
    models,
    openapi,
    rollouts,
    telemetry,
    versions,
    webhooks,
)
from central.services.permissions import (
    APPROVE,
    DEVICE,
    MANAGE_FLEETS,
    MANAGE_KEYS,
    MANAGE_TOKENS,
    MANAGE_WEBHOOKS,
    PUBLIC,
    READ,
    READ_AUDIT,
    WRITE,
)

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
    permission: str = ""  # what the caller needs: a MATRIX permission, PUBLIC or DEVICE


V1 = "/api/v1"
M = V1 + "/models/{model}"

ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", misc.healthz, "Liveness of the service", errors=(), permission=PUBLIC),
    Route("GET", "/metrics", misc.metrics, "Prometheus metrics", errors=(), permission=PUBLIC),
    Route(
        "GET", V1 + "/openapi.json", openapi.serve, "This document", errors=(), permission=PUBLIC
    ),
    Route("GET", V1 + "/root", misc.root, "Current signed root document", permission=READ),
    Route(
        "GET",
        V1 + "/root/{number}",
        misc.root_version,
        "Signed root document version n",
        permission=READ,
    ),
    Route(
        "PUT",
        V1 + "/blobs/{digest}",
        blobs.put_blob,
        "Upload a blob (streamed)",
        body="binary",
        ok=201,
        errors=(400, 401, 403, 413),
        permission=WRITE,
    ),
    Route(
        "GET",
        V1 + "/blobs/{digest}",
        blobs.get_blob,
        "Download a blob's zstd bytes",
        errors=(400, 401, 403, 404, 416),
        permission=READ,
    ),
    Route("HEAD", V1 + "/blobs/{digest}", blobs.get_blob, "Blob headers only", permission=READ),
    Route("GET", V1 + "/blobs/{digest}/info", blobs.blob_info, "Blob record", permission=READ),
    Route(
        "GET",
        V1 + "/models",
        models.list_models,
        "List models",
        query=("prefix", "limit", "cursor"),
        permission=READ,
    ),
    Route(
        "POST",
        V1 + "/models",
        models.create_model,
        "Create a model",
        body="json",
        ok=201,
        errors=(400, 401, 403, 409, 413),
        permission=WRITE,
    ),
    Route("GET", M, models.get_model, "Show a model", permission=READ),
    Route(
        "PATCH",
        M,
        models.update_model,
        "Edit a model's description and tags",
        body="json",
        permission=WRITE,
    ),
    Route(
        "GET",
        M + "/versions",
        versions.list_versions,
        "List versions, newest first",
        query=("branch", "limit", "cursor"),
        permission=READ,
    ),
    Route(
        "POST",
        M + "/versions",
        versions.register_version,
        "Register a version",
        body="json",
        ok=201,
        errors=(400, 401, 403, 409, 413),
        permission=WRITE,
    ),
    Route(
        "POST",
        V1 + "/versions:batch",
        versions.register_batch,
        "Register many versions, all or nothing",
        body="json",
        ok=201,
        errors=(400, 401, 403, 409, 413),
        permission=WRITE,
    ),
    Route(
        "GET",
        M + "/versions/{ref}",
        versions.get_version,
        "Show a version by version or alias",
        permission=READ,
    ),
    Route(
        "GET",
        M + "/versions/{version}/manifest",
        versions.get_manifest,
        "Signed manifest envelope",
        permission=READ,
    ),
    Route(
        "GET",
        M + "/versions/{version}/metadata",
        versions.get_metadata,
        "Metadata document: full (masked per role), or the view=signed one the manifest signs",
        query=("view",),
        permission=READ,
    ),
    Route(
        "PUT",
        M + "/versions/{version}/stage",
        versions.set_stage,
        "Move to a lifecycle stage (202 with an approval request where the policy asks)",
        body="json",
        errors=(400, 401, 403, 404, 409),
        permission=WRITE,
    ),
    Route("GET", M + "/aliases", aliases.list_aliases, "List a model's aliases", permission=READ),
    Route("GET", M + "/aliases/{alias}", aliases.get_alias, "Resolve an alias", permission=READ),
    Route(
        "PUT",
        M + "/aliases/{alias}",
        aliases.set_alias,
        "Point an alias at a version",
        body="json",
        permission=WRITE,
    ),
    Route(
        "DELETE",
        M + "/aliases/{alias}",
        aliases.delete_alias,
        "Delete an alias",
        ok=204,
        permission=WRITE,
    ),
    Route(
        "GET",
        M + "/aliases/{alias}/history",
        aliases.alias_history,
        "Alias moves, newest first",
        query=("limit",),
        permission=READ,
    ),
    Route(
        "POST",
        M + "/aliases/{alias}/rollback",
        aliases.rollback_alias,
        "Point an alias back at its previous target",
        errors=(400, 401, 403, 404, 409),
        permission=WRITE,
    ),
    Route(
        "GET",
        V1 + "/search",
        misc.search,
        "Search versions",
        query=("filter", "order_by", "limit", "cursor"),
        permission=READ,
    ),
    Route(
        "GET",
        V1 + "/changes",
        misc.changes,
        "Change log since a sequence number",
        query=("since", "limit"),
        permission=READ,
    ),
    Route(
        "POST",
        V1 + "/tokens",
        misc.create_token,
        "Create a token (shown once)",
        body="json",
        ok=201,
        permission=MANAGE_TOKENS,
    ),
    Route("GET", V1 + "/tokens", misc.list_tokens, "List tokens", permission=MANAGE_TOKENS),
    Route(
        "POST",
        V1 + "/keys/rotate",
        misc.rotate_keys,
        "Rotate the root or targets key: a new root version, signed by old and new keys",
        body="json",
        permission=MANAGE_KEYS,
    ),
    Route("GET", V1 + "/fleets", fleets.list_fleets, "List fleets", permission=READ),
    Route(
        "POST",
        V1 + "/fleets",
        fleets.create_fleet,
        "Create a fleet",
        body="json",
        ok=201,
        errors=(400, 401, 403, 409),
        permission=MANAGE_FLEETS,
    ),
    Route(
        "GET",
        V1 + "/fleets/{fleet}",
        fleets.show_fleet,
        "Show a fleet: assignments, signed state, devices and their reports",
        permission=READ,
    ),
    Route(
        "PUT",
        V1 + "/fleets/{fleet}/models/{model}",
        fleets.assign_model,
        "Assign a model to a fleet, following an alias",
        body="json",
        permission=MANAGE_FLEETS,
    ),
    Route(
        "DELETE",
        V1 + "/fleets/{fleet}/models/{model}",
        fleets.unassign_model,
        "Stop a fleet following a model",
        permission=MANAGE_FLEETS,
    ),
    Route(
        "POST",
        V1 + "/fleets/{fleet}/devices",
        fleets.enroll_device,
        "Enroll a device: its token (shown once) and the trusted root",
        body="json",
        ok=201,
        errors=(400, 401, 403, 404, 409),
        permission=MANAGE_TOKENS,
    ),
    Route(
        "GET",
        V1 + "/fleets/{fleet}/bundle",
        fleets.export_bundle,
        "Offline bundle: root chain, fleet state, manifests and blobs",
        permission=READ,
    ),
    Route(
        "GET",
        V1 + "/sync",
        fleets.sync,
        "Device sync: long-polled changes since a cursor",
        query=("since", "wait", "root"),
        permission=DEVICE,
    ),
    Route(
        "POST",
        V1 + "/devices/{device}/report",
        fleets.report,
        "Device state report",
        body="json",
        ok=204,
        permission=DEVICE,
    ),
    Route(
        "POST",
        V1 + "/rollouts",
        rollouts.start,
        "Start a rollout: canary steps or an A/B split of a candidate on a fleet",
        body="json",
        ok=201,
        errors=(400, 401, 403, 404, 409),
        permission=MANAGE_FLEETS,
    ),
    Route(
        "GET",
        V1 + "/rollouts",
        rollouts.list_rollouts,
        "List rollouts",
        query=("fleet", "model", "status"),
        permission=READ,
    ),
    Route(
        "GET",
        V1 + "/rollouts/{rollout}",
        rollouts.show,
        "Rollout status: per-version telemetry, rule verdicts, next decision",
        permission=READ,
    ),
    *(
        Route(
            "POST",
            V1 + f"/rollouts/{{rollout}}/{action}",
            getattr(rollouts, action),
            summary,
            errors=(400, 401, 403, 404, 409),
            permission=MANAGE_FLEETS,
        )
        for action, summary in (
            ("pause", "Pause a rollout: it stops advancing, devices keep the current plan"),
            ("resume", "Resume a paused rollout (its step's soak starts again)"),
            ("abort", "Abort a rollout: devices go back to the baseline"),
            ("promote", "Promote the candidate now: the fleet's alias moves to it"),
        )
    ),
    Route(
        "POST",
        V1 + "/devices/{device}/telemetry",
        telemetry.upload,
        "Device telemetry batches (idempotent by batch id)",
        body="json",
        permission=DEVICE,
    ),
    Route(
        "GET",
        M + "/versions/{version}/telemetry",
        telemetry.summary,
        "What a version did in the field: requests, errors, latency, classes",
        query=("fleet", "since"),
        permission=READ,
    ),
    Route(
        "GET",
        M + "/versions/{version}/drift",
        drift.report,
        "Input drift of a version: PSI and KS per feature against its reference, per device",
        query=("fleet", "since"),
        permission=READ,
    ),
    Route(
        "DELETE",
        V1 + "/tokens/{token_id}",
        misc.revoke_token,
        "Revoke a token",
        ok=204,
        permission=MANAGE_TOKENS,
    ),
    Route(
        "POST",
        V1 + "/webhooks",
        webhooks.create_webhook,
        "Add a webhook: signed callbacks on the events it names",
        body="json",
        ok=201,
        permission=MANAGE_WEBHOOKS,
    ),
    Route(
        "GET", V1 + "/webhooks", webhooks.list_webhooks, "List webhooks", permission=MANAGE_WEBHOOKS
    ),
    Route(
        "DELETE",
        V1 + "/webhooks/{webhook_id}",
        webhooks.delete_webhook,
        "Remove a webhook; its pending deliveries are dropped",
        ok=204,
        permission=MANAGE_WEBHOOKS,
    ),
    Route(
        "GET",
        V1 + "/webhooks/{webhook_id}/deliveries",
        webhooks.list_deliveries,
        "A webhook's deliveries, newest first",
        query=("status", "limit", "cursor"),
        permission=MANAGE_WEBHOOKS,
    ),
    Route(
        "POST",
        V1 + "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
        webhooks.redeliver,
        "Send a delivered or failed delivery again",
        errors=(400, 401, 403, 404, 409),
        permission=MANAGE_WEBHOOKS,
    ),
    Route(
        "GET",
        V1 + "/audit",
        audit.list_audit,
        "Audit log, newest first",
        query=("actor", "model", "action", "since", "limit", "cursor"),
        permission=READ_AUDIT,
    ),
    Route(
        "GET",
        V1 + "/audit/verify",
        audit.verify_audit,
        "Verify the audit log's hash chain and signed checkpoints",
        permission=READ_AUDIT,
    ),
    Route(
        "GET",
        V1 + "/audit/export",
        audit.export_audit,
        "The whole audit log as JSON Lines",
        permission=READ_AUDIT,
    ),
    Route(
        "GET",
        M + "/versions/{version}/policy",
        approvals.policy_report,
        "Readiness for a stage under the policy: missing fields, approvals needed",
        query=("stage",),
        permission=READ,
    ),
    Route(
        "GET",
        V1 + "/requests",
        approvals.list_requests,
        "Approval requests, oldest first",
        query=("status", "limit", "cursor"),
        permission=READ,
    ),
    Route(
        "GET",
        V1 + "/requests/{request_id}",
        approvals.get_request,
        "Show an approval request",
        permission=READ,
    ),
    Route(
        "POST",
        V1 + "/requests/{request_id}/approve",
        approvals.approve,
        "Approve a request; the transition applies once enough approvals count",
        body="json",
        errors=(400, 401, 403, 404, 409),
        permission=APPROVE,
    ),
    Route(
        "POST",
        V1 + "/requests/{request_id}/reject",
        approvals.reject,
        "Reject a request, with a reason",
        body="json",
        errors=(400, 401, 403, 404, 409),
        permission=APPROVE,
    ),
)


def setup_routes(app: web.Application) -> None:
    for r in ROUTES:
        if r.method == "HEAD":
            continue  # added with its GET route below
        if r.method == "GET":
            app.router.add_get(r.path, r.handler, allow_head=True)
        else:
            app.router.add_route(r.method, r.path, r.handler)
