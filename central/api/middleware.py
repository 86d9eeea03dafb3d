"""Middlewares: request ids and metrics, error rendering, authentication."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from central.api.keys import ACTOR, METRICS, REQUEST_ID, TOKENS
from shared.errors import SkiffError

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/api/v1/openapi.json"})


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id and count it, by route and status."""
    request[REQUEST_ID] = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
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
        response = _error(e.status, e.code, str(e))
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
    request[ACTOR] = await request.app[TOKENS].authenticate(token)
    return await handler(request)
