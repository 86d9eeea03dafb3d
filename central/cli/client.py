"""Async client for the central HTTP API, as the command line uses it.

``RegistryClient`` sends the bearer token, turns ``{"error": {"code",
"message"}}`` answers into ``ApiError`` and transport failures into
``CliError``, bounds every body it reads and follows list cursors. It knows
routes, not commands: verbs live in their own modules.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from central.cli.errors import CliError
from shared import __version__
from shared.errors import SkiffError
from shared.tls import client_context

__all__ = ["ApiError", "RegistryClient", "api_path"]

API_PREFIX = "/api/v1"
MAX_JSON_BYTES = 64 * 1024 * 1024  # the most JSON bytes read from one answer
MAX_ERROR_BYTES = 64 * 1024  # the most bytes read from an error answer
PAGE_LIMIT = 1000  # the server's largest page

Query = Mapping[str, str | int | None]  # None values are left out


class ApiError(CliError):
    """Central refused a request.

    Attributes:
        status: The HTTP status.
        code: The error code from the body (``not_found``, ``conflict``, ...).
    """

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def api_path(*segments: str) -> str:
    """Join path segments under ``/api/v1``, each percent-encoded."""
    return API_PREFIX + "".join("/" + quote(s, safe="") for s in segments)


class RegistryClient:
    """One HTTP session with a central registry; use as ``async with``."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        ca_file: Path | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token or None
        self._ca_file = ca_file  # verify central's certificate with this CA only
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RegistryClient:
        headers = {"User-Agent": f"skiff/{__version__}"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        connector = None
        if self._ca_file is not None:
            try:
                connector = aiohttp.TCPConnector(ssl=client_context(self._ca_file))
            except SkiffError as e:
                raise CliError(str(e)) from e
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=self._timeout, connector=connector
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @asynccontextmanager
    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Query | None = None,
        json_body: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        accept: Collection[int] = (),
        auto_decompress: bool = True,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request and yield the response once its status is a success.

        Raises:
            ApiError: The status is 400 or above and not in ``accept``.
            CliError: Central cannot be reached, or the exchange broke off.
        """
        if self._session is None:
            raise RuntimeError("RegistryClient used outside 'async with'")
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        try:
            async with self._session.request(
                method,
                self.url + path,
                params=query,
                json=json_body,
                data=data,
                headers=headers,
                auto_decompress=auto_decompress,
            ) as resp:
                if resp.status >= 400 and resp.status not in accept:
                    raise await self._error(resp)
                yield resp
        except aiohttp.ClientConnectorError as e:
            raise CliError(f"cannot reach central at {self.url}: {_reason(e)}") from e
        except aiohttp.ClientError as e:
            raise CliError(f"request to central at {self.url} failed: {e}") from e
        except TimeoutError as e:
            raise CliError(f"central at {self.url} did not answer in time") from e

    async def get_json(
        self, path: str, params: Mapping[str, str | int | None] | None = None
    ) -> Any:
        """GET a JSON document."""
        async with self.request("GET", path, params=params) as resp:
            return _decode(await read_limited(resp, MAX_JSON_BYTES))

    async def send_json(self, method: str, path: str, body: Any = None) -> Any:
        """Send a JSON body (or none); return the decoded answer, None when empty."""
        async with self.request(method, path, json_body=body) as resp:
            data = await read_limited(resp, MAX_JSON_BYTES)
            return _decode(data) if data else None

    async def get_bytes(self, path: str, max_bytes: int) -> bytes:
        """GET a document's raw bytes, refusing more than ``max_bytes``."""
        async with self.request("GET", path) as resp:
            return await read_limited(resp, max_bytes)

    async def paginate(self, path: str, params: Query | None, limit: int) -> AsyncIterator[Any]:
        """Yield up to ``limit`` items of a list, following ``next_cursor``."""
        query = dict(params or {})
        remaining = limit
        while remaining > 0:
            query["limit"] = min(remaining, PAGE_LIMIT)
            page = await self.get_json(path, query)
            items = page.get("items", []) if isinstance(page, dict) else []
            for item in items[:remaining]:
                yield item
            remaining -= len(items)
            cursor = page.get("next_cursor") if isinstance(page, dict) else None
            if not cursor or not items:
                return
            query["cursor"] = cursor

    async def healthz(self) -> Any:
        """GET ``/healthz`` (no token needed)."""
        async with self.request("GET", "/healthz") as resp:
            return _decode(await read_limited(resp, MAX_ERROR_BYTES))

    async def blob_exists(self, digest: str) -> bool:
        """Tell whether central already stores the blob ``digest``."""
        async with self.request("HEAD", api_path("blobs", digest), accept=(404,)) as resp:
            return resp.status != 404

    async def upload_blob(self, digest: str, chunks: AsyncIterable[bytes], size: int) -> Any:
        """Stream a blob's uncompressed bytes to central; return its blob record."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        async with self.request(
            "PUT", api_path("blobs", digest), data=chunks, headers=headers
        ) as resp:
            return _decode(await read_limited(resp, MAX_JSON_BYTES))

    @asynccontextmanager
    async def open_blob(self, digest: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open the download of a blob's compressed bytes; the caller reads the body.

        The body is the stored zstd frame itself, so no transfer decoding is applied.
        """
        headers = {"Accept-Encoding": "identity"}
        path = api_path("blobs", digest)
        async with self.request("GET", path, headers=headers, auto_decompress=False) as resp:
            yield resp

    async def _error(self, resp: aiohttp.ClientResponse) -> ApiError:
        body = await resp.content.read(MAX_ERROR_BYTES)
        code, message = _error_fields(body)
        if not message:
            reason = f"{resp.status} {resp.reason or ''}".rstrip()
            message = f"central answered {reason} to {resp.method} {resp.url.path}"
        if resp.status == 401 and self._token is None:
            message += " (no token given: set SKIFF_TOKEN or pass --token)"
        return ApiError(message, resp.status, code)


async def read_limited(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """Read a whole body, but never more than ``max_bytes``.

    Raises:
        CliError: The body is longer than ``max_bytes``.
    """
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        total += len(chunk)
        if total > max_bytes:
            raise CliError(f"central sent more than {max_bytes} bytes for {resp.url.path}")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as e:
        raise CliError(f"central answered with invalid JSON: {e}") from e


def _error_fields(body: bytes) -> tuple[str, str]:
    try:
        err = json.loads(body)["error"]
        return str(err.get("code", "")), str(err.get("message", "")).strip()
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", ""


def _reason(e: aiohttp.ClientConnectorError) -> str:
    if isinstance(e.os_error, ConnectionRefusedError):
        return "connection refused"
    return e.os_error.strerror or str(e.os_error) or str(e)
