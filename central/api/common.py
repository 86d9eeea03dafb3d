"""Helpers every handler uses: bounded JSON bodies, JSON responses with ETags, paging."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

from shared.canonical import loads_json
from shared.errors import FormatError, InvalidInputError, LengthError, PayloadTooLargeError

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


async def read_json(request: web.Request, max_bytes: int) -> Any:
    """The request's JSON body, read up to ``max_bytes``.

    Raises:
        PayloadTooLargeError: the body is larger than ``max_bytes``.
        InvalidInputError: the body is not valid JSON.
    """
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLargeError(f"JSON body larger than {max_bytes} bytes")
    data = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        data += chunk
        if len(data) > max_bytes:
            raise PayloadTooLargeError(f"JSON body larger than {max_bytes} bytes")
    try:
        return loads_json(bytes(data), max_bytes=max_bytes)
    except LengthError as e:
        raise PayloadTooLargeError(str(e)) from e
    except FormatError as e:
        raise InvalidInputError(f"malformed JSON body: {e}") from e


def json_response(
    request: web.Request, data: Any, *, status: int = 200, etag: bool = True
) -> web.Response:
    """Render ``data``; GETs carry an ETag and answer a matching If-None-Match with 304."""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    headers = {}
    if etag and request.method in ("GET", "HEAD") and status == 200:
        tag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers["ETag"] = tag
        if tag in _if_none_match(request):
            return web.Response(status=304, headers=headers)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _if_none_match(request: web.Request) -> set[str]:
    raw = request.headers.get("If-None-Match", "")
    return {t.strip().removeprefix("W/") for t in raw.split(",") if t.strip()}


def etag_matches(request: web.Request, tag: str) -> bool:
    values = _if_none_match(request)
    return tag in values or "*" in values


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise InvalidInputError(f"query parameter {name} must be an integer, got {raw!r}") from e
    if not lo <= value <= hi:
        raise InvalidInputError(f"query parameter {name} must be between {lo} and {hi}")
    return value


def limit_param(request: web.Request) -> int:
    return int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
