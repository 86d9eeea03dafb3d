"""Middlewares: request ids and metrics, error rendering, authentication."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from central.api.keys import ACTOR, AUDIT, METRICS, REQUEST_ID, THROTTLE, TOKENS
from central.domain import Actor
from central.services.context import bind_request_id, unbind_request_id
from central.services.tokens import hash_token
from shared.errors import SkiffError, TooManyRequestsError, UnauthenticatedError

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/api/v1/openapi.json"})


def _error(
    status: int, code: str, message: str, details: Mapping[str, object] | None = None
) -> web.Response:
    body = {**(details or {}), "code": code, "message": message}
    return web.json_response({"error": body}, status=status)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id and count it, by route and status."""
    request[REQUEST_ID] = request.headers.get("X-Request-Id", "")[:64] or os.urandom(16).hex()
    bound = bind_request_id(request[REQUEST_ID])  # audit rows name the request
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = request[REQUEST_ID]
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        unbind_request_id(bound)
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        metrics = request.app[METRICS]
        metrics.counter("skiff_http_requests_total", "HTTP requests served").inc(
            method=request.method, route=name, status=str(status)
        )
        metrics.histogram("skiff_http_request_seconds", "HTTP request latency").observe(
            time.perf_counter() - start, method=request.method, route=name
        )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every error as ``{"error": {"code", "message"}}`` with its status."""
    try:
        return await handler(request)
    except SkiffError as e:
        if e.status >= 500:
            logger.error("Request %s failed: %s", request[REQUEST_ID], e)
        else:
            logger.debug("Request %s refused: %s %s", request[REQUEST_ID], e.status, e)
        if e.status in (401, 403):
            await _audit_refusal(request, e)
        response = _error(e.status, e.code, str(e), e.details)
        response.headers.update(e.headers)
        return response
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(e.status, _http_code(e.status), e.reason)
    except Exception:
        logger.exception(
            "Request %s %s %s failed", request[REQUEST_ID], request.method, request.path
        )
        return _error(500, "internal", "internal error; see the server log")


async def _audit_refusal(request: web.Request, error: SkiffError) -> None:
    """Record a refused call in the audit log, in its own transaction."""
    if request.path in PUBLIC_PATHS or AUDIT not in request.app:
        return
    try:
        await request.app[AUDIT].record_denied(
            request.get(ACTOR),
            outcome="unauthenticated" if error.status == 401 else "denied",
            client=request.remote or "",
            method=request.method,
            path=request.path,
            message=str(error),
        )
    except Exception:  # the refusal is still answered; the failure is ours to see
        logger.exception("Request %s: auditing the refusal failed", request[REQUEST_ID])


def _http_code(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(status, "error")


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route but the public ones needs a valid bearer token."""
    if request.path in PUBLIC_PATHS or request.match_info.http_exception is not None:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    token = secret.strip() if scheme.lower() == "bearer" else None
    request[ACTOR] = await _authenticate(request, token or None)
    return await handler(request)


async def _authenticate(request: web.Request, token: str | None) -> Actor:
    """The token's actor; failed attempts from one address are throttled (429)."""
    throttle, address = request.app[THROTTLE], request.remote or ""
    token_hash = None if token is None else hash_token(token)
    wait = throttle.retry_after(address, token_hash, time.monotonic())
    if wait is not None:
        logger.warning("Throttling authentication from %s for %d s", address, wait)
        error = TooManyRequestsError(
            f"too many failed authentications from this address; retry in {wait} s"
        )
        error.headers = {"Retry-After": str(wait)}
        raise error
    try:
        actor = await request.app[TOKENS].authenticate(token)
    except UnauthenticatedError:
        if token_hash is not None:  # a missing token is no guess
            throttle.failed(address, time.monotonic())
        raise
    if token_hash is not None:
        throttle.succeeded(address, token_hash)
    return actor
