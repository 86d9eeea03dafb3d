"""Helpers every handler uses: bounded JSON bodies, JSON responses with ETags, paging."""

from __future__ import annotations

import hashlib
from typing import Any

from aiohttp import web

from central import jsonio
from shared.canonical import loads_json
from shared.errors import (
    FormatError,
    InvalidInputError,
    LengthError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_JSON_DEPTH = 32  # nesting of objects and arrays in a request body
MAX_JSON_STRING = 1 << 20  # characters in one string of a request body
MAX_JSON_KEY = 1024  # characters in one object key of a request body


async def read_json(request: web.Request, max_bytes: int) -> Any:
    """The request's JSON body, read up to ``max_bytes``.

    A missing ``Content-Type`` is read as JSON; any type but ``application/json`` (or
    ``application/*+json``) is refused, so a form or a file sent by mistake is never parsed.

    Raises:
        PayloadTooLargeError: the body is larger than ``max_bytes``.
        UnsupportedMediaTypeError: the body is declared as something else than JSON.
        InvalidInputError: the body is not valid JSON, nests deeper than
            ``MAX_JSON_DEPTH`` or holds a string longer than ``MAX_JSON_STRING``.
    """
    _check_json_type(request)
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLargeError(f"JSON body larger than {max_bytes} bytes")
    if request.content_length is not None:  # the parser stops the body at that length
        data = await request.content.read()
    else:
        buffer = bytearray()
        async for chunk in request.content.iter_chunked(65536):
            buffer += chunk
            if len(buffer) > max_bytes:
                raise PayloadTooLargeError(f"JSON body larger than {max_bytes} bytes")
        data = bytes(buffer)
    try:
        value = loads_json(data, max_bytes=max_bytes)
    except LengthError as e:
        raise PayloadTooLargeError(str(e)) from e
    except FormatError as e:
        raise InvalidInputError(f"malformed JSON body: {e}") from e
    _check_shape(value)
    return value


def _check_json_type(request: web.Request) -> None:
    if "Content-Type" not in request.headers:
        return
    mime = request.content_type.lower()
    if mime != "application/json" and not (
        mime.startswith("application/") and mime.endswith("+json")
    ):
        raise UnsupportedMediaTypeError(
            f"expected a JSON body (Content-Type: application/json), got {mime!r}"
        )


def _check_shape(value: Any) -> None:
    """Refuse bodies nested deeper than ``MAX_JSON_DEPTH`` or with over-long strings."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if len(item) > MAX_JSON_STRING:
                raise InvalidInputError(
                    f"JSON body holds a string longer than {MAX_JSON_STRING} characters"
                )
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise InvalidInputError(f"JSON body nests deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                for key in item:
                    if len(key) > MAX_JSON_KEY:
                        raise InvalidInputError(
                            f"JSON body holds a key longer than {MAX_JSON_KEY} characters"
                        )
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def json_response(
    request: web.Request, data: Any, *, status: int = 200, etag: bool = True
) -> web.Response:
    """Render ``data``; GETs carry an ETag and answer a matching If-None-Match with 304."""
    body = jsonio.dumps(data)
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
