"""The Open Inference Protocol (KServe v2, Triton HTTP) over the device's model slots.

Routes: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/{name}[/versions/{version}]`` (metadata), ``.../ready`` and
``POST .../infer`` with JSON tensors. Errors are the protocol's ``{"error": "<message>"}``
(not central's shape): 400 bad input, 404 unknown model or version, 413 body too large,
503 not ready, 500 only when a model fails while running.

Handlers parse, resolve the version once (a swap during the request does not affect it),
call :class:`SlotManager` and render; tensors are converted in ``tensors.py``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import orjson
from aiohttp import web

import shared
from edge_agent.slots import LoadedVersion, SlotManager
from edge_agent.tensors import decode_inputs, encode_output
from shared.errors import InvalidInputError, PayloadTooLargeError, SkiffError

__all__ = ["DEFAULT_MAX_BODY_BYTES", "SERVER_NAME", "parse_infer_request", "setup_inference_routes"]

logger = logging.getLogger(__name__)

SERVER_NAME = "skiff-edge"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# Bodies and outputs above this size are (de)serialized in a worker thread, off the loop.
_OFFLOAD_BYTES = 1024 * 1024
_OFFLOAD_ELEMENTS = 128 * 1024

_Handler = Callable[["_InferenceApi", web.Request], Awaitable[web.Response]]
_T = TypeVar("_T")


def setup_inference_routes(
    app: web.Application,
    slots: SlotManager,
    *,
    ready: Callable[[], bool] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> None:
    """Add the ``/v2`` routes to an application.

    Args:
        app: The agent's application (its own ``client_max_size`` does not apply: request
            bodies are read here, up to ``max_body_bytes``).
        slots: The device's model slots.
        ready: Whether the agent has started; ``/v2/health/ready`` also needs every
            declared slot to serve something. ``None``: started.
        max_body_bytes: Largest request body accepted.
    """
    api = _InferenceApi(slots, ready or (lambda: True), max_body_bytes)
    router = app.router
    router.add_get("/v2", api.server_metadata)
    router.add_get("/v2/health/live", api.live)
    router.add_get("/v2/health/ready", api.server_ready)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        router.add_get(prefix, api.model_metadata)
        router.add_get(prefix + "/ready", api.model_ready)
        router.add_post(prefix + "/infer", api.infer)


def parse_infer_request(
    body: object, loaded: LoadedVersion
) -> tuple[dict[str, np.ndarray], list[str] | None, str | None]:
    """Check an inference request against the model it will run on.

    Args:
        body: The decoded JSON body.
        loaded: The version resolved for the request.

    Raises:
        InvalidInputError: The request is malformed or does not fit the model's inputs.

    Returns:
        The input arrays, the requested output names (``None``: all) and the request id.
    """
    if not isinstance(body, dict):
        raise InvalidInputError("request body must be a JSON object")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInputError("id must be a string")
    if not isinstance(body.get("parameters", {}), dict):
        raise InvalidInputError("parameters must be an object")
    inputs = decode_inputs(body.get("inputs"), loaded.inputs)
    return inputs, _output_names(body.get("outputs")), request_id


def _output_names(outputs: object) -> list[str] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise InvalidInputError("outputs must be a list")
    names: list[str] = []
    for item in outputs:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise InvalidInputError("outputs: every requested output needs a string name")
        if name in names:
            raise InvalidInputError(f"output {name}: requested more than once")
        names.append(name)
    return names


def _oip_errors(handler: _Handler) -> _Handler:
    """Render our errors in the protocol's shape; handlers never build error bodies."""

    @functools.wraps(handler)
    async def wrapped(api: _InferenceApi, request: web.Request) -> web.Response:
        try:
            return await handler(api, request)
        except SkiffError as e:  # the slot manager logs model failures itself
            return web.json_response({"error": str(e)}, status=e.status)
        except web.HTTPException:
            raise
        except Exception:
            logger.exception("%s %s failed", request.method, request.path)
            return web.json_response({"error": "internal error"}, status=500)

    return wrapped


class _InferenceApi:
    def __init__(self, slots: SlotManager, ready: Callable[[], bool], max_body_bytes: int) -> None:
        self.slots = slots
        self.ready = ready
        self.max_body_bytes = max_body_bytes

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"name": SERVER_NAME, "version": shared.__version__, "extensions": []}
        )

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def server_ready(self, request: web.Request) -> web.Response:
        ready = self.ready() and self.slots.all_serving()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    @_oip_errors
    async def model_metadata(self, request: web.Request) -> web.Response:
        loaded = self._resolve(request)
        return web.json_response(
            {
                "name": loaded.model,
                "versions": self.slots.versions(loaded.model),
                "platform": loaded.platform,
                "inputs": [spec.to_dict() for spec in loaded.inputs],
                "outputs": [spec.to_dict() for spec in loaded.outputs],
            }
        )

    @_oip_errors
    async def model_ready(self, request: web.Request) -> web.Response:
        loaded = self._resolve(request)
        return web.json_response({"name": loaded.model, "ready": True})

    @_oip_errors
    async def infer(self, request: web.Request) -> web.Response:
        # Resolved once: the whole request runs on this version, whatever swaps meanwhile.
        loaded = self._resolve(request)
        raw = await self._read_body(request)
        heavy = len(raw) > _OFFLOAD_BYTES
        inputs, names, request_id = await _maybe_offload(heavy, _parse, raw, loaded)
        values = await self.slots.infer(loaded, inputs, names)
        heavy = sum(getattr(v, "size", 1) for v in values.values()) > _OFFLOAD_ELEMENTS
        body = await _maybe_offload(heavy, _render, loaded, values, request_id)
        return web.Response(body=body, content_type="application/json")

    def _resolve(self, request: web.Request) -> LoadedVersion:
        name = request.match_info["name"]
        header = self.slots.key_header(name) if self.slots.key_header is not None else None
        key = request.headers.get(header) if header else None
        return self.slots.get(name, request.match_info.get("version"), key=key)

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.max_body_bytes
        too_large = PayloadTooLargeError(f"request body exceeds {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        if request.content_length is not None:  # the parser stops the body at that length
            return await request.content.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(1024 * 1024):
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)


def _parse(
    raw: bytes, loaded: LoadedVersion
) -> tuple[dict[str, np.ndarray], list[str] | None, str | None]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # What orjson refuses but Python's parser reads: NaN and Infinity tokens (a
        # client's missing values), integers beyond 64 bits, nesting beyond 1024.
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise InvalidInputError(f"request body is not valid JSON: {e}") from e
    return parse_infer_request(body, loaded)


def _render(loaded: LoadedVersion, values: dict[str, Any], request_id: str | None) -> bytes:
    response: dict[str, Any] = {"model_name": loaded.model, "model_version": loaded.version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = [encode_output(name, value) for name, value in values.items()]
    try:  # NaN and infinite outputs become null: plain JSON, which every client parses
        return orjson.dumps(response)
    except TypeError:  # a value orjson does not know: Python's encoder as before
        return json.dumps(response).encode()


async def _maybe_offload(heavy: bool, fn: Callable[..., _T], *args: Any) -> _T:
    if heavy:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)
