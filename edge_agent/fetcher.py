"""The one HTTP fetcher of the edge agent, bounded by the signed sizes.

Like python-tuf's ``RequestsFetcher``, it knows nothing of what it fetches: it
adds the device token, never reads more than the caller's ``max_length`` and
maps every transport failure to :class:`DownloadError` (retry later) and every
unexpected status to :class:`DownloadHTTPError`. Whatever it returns is still
untrusted; verification is the caller's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from shared.canonical import loads_json
from shared.errors import DownloadError, DownloadHTTPError, LengthError, SkiffError

__all__ = ["DEFAULT_JSON_MAX_LENGTH", "Fetcher", "ProgressCallback"]

logger = logging.getLogger(__name__)

DEFAULT_JSON_MAX_LENGTH = 1 << 20
"""The most bytes accepted in a JSON answer to a POST."""

ProgressCallback = Callable[[int, int], None]
"""Called with (bytes in the part file so far, ``max_length``) as a download goes."""

_READ_CHUNK = 64 * 1024
_WRITE_BUFFER = 1 << 20  # bytes gathered before one write in a worker thread
_ERROR_BODY_CHARS = 300
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class Fetcher:
    """Authenticated, size-bounded HTTP requests to central over a given session.

    Args:
        session: The aiohttp session to use; the fetcher never closes it.
        base_url: Central's base URL, e.g. ``http://central:8080``.
        token: The device's bearer token.
        timeout: Seconds allowed to connect, and between two reads of a body.
    """

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, token: str, *, timeout: float = 30
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = timeout

    def _url(self, path: str) -> str:
        return self._base_url + "/" + path.lstrip("/")

    async def get_json(
        self,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        max_length: int,
        timeout: float | None = None,  # noqa: ASYNC109 - per-request aiohttp timeout
    ) -> Any:
        """GET a JSON document of at most ``max_length`` bytes.

        Args:
            path: The path under the base URL, e.g. ``/api/v1/sync``.
            params: Query parameters.
            max_length: The most body bytes read.
            timeout: Seconds for the whole request (a long-poll passes its
                wait plus a margin); the fetcher's timeout by default.

        Raises:
            LengthError: The body is longer than ``max_length``.
            FormatError: The body is not valid JSON.
            DownloadHTTPError: The status is not 2xx.
            DownloadError: The connection failed or timed out.
        """
        total = self._timeout if timeout is None else timeout
        client_timeout = aiohttp.ClientTimeout(total=total, sock_connect=self._timeout)
        async with self._request("GET", path, params=params, timeout=client_timeout) as resp:
            data = await _read_bounded(resp, max_length)
        return loads_json(data, max_bytes=max_length)

    async def post_json(
        self, path: str, body: Any, *, max_length: int = DEFAULT_JSON_MAX_LENGTH
    ) -> Any:
        """POST ``body`` as JSON and return the JSON answer (``None`` if empty).

        Raises:
            LengthError: The answer is longer than ``max_length``.
            FormatError: The answer is not valid JSON.
            DownloadHTTPError: The status is not 2xx.
            DownloadError: The connection failed or timed out.
        """
        client_timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with self._request("POST", path, json=body, timeout=client_timeout) as resp:
            data = await _read_bounded(resp, max_length)
        return loads_json(data, max_bytes=max_length) if data else None

    async def download_to(
        self,
        path_url: str,
        part: Path,
        *,
        max_length: int,
        etag: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Download at most ``max_length`` bytes into ``part``, resuming what it holds.

        A part file of ``n`` bytes (``0 < n < max_length``) is resumed with
        ``Range: bytes=n-`` (and ``If-Range: <etag>`` when given): a 206 answer
        is appended, a 200 answer replaces the file from byte 0. A part file of
        exactly ``max_length`` bytes is complete as far as sizes go and is left
        for the caller to verify. The file is fsynced before this returns.

        A transport failure keeps the bytes received for the next attempt; a
        size violation or an answer that cannot be appended deletes the file.

        Raises:
            LengthError: The server sent more than ``max_length`` bytes.
            DownloadHTTPError: The status is neither 200 nor 206.
            DownloadError: The connection failed, timed out, or the answer's
                ``Content-Range`` does not start where the part file ends.
        """
        have = await asyncio.to_thread(_file_size, part)
        if have > max_length:
            logger.warning("Part file %s holds more than %d bytes; restarting", part, max_length)
            have = 0
        if have == max_length and have > 0:
            logger.debug("Part file %s already holds all %d bytes", part, max_length)
            return
        try:
            try:
                await self._download(path_url, part, max_length, have, etag, progress)
            except DownloadHTTPError as e:
                if e.status_code != 416 or have == 0:
                    raise
                # The part file does not fit what the server holds: start again once.
                logger.info("Range %d- of %s not satisfiable; restarting", have, path_url)
                await self._download(path_url, part, max_length, 0, etag, progress)
        except (LengthError, _RestartError) as e:
            await asyncio.to_thread(_unlink, part)
            if isinstance(e, _RestartError):
                raise DownloadError(str(e)) from e
            raise

    async def _download(
        self,
        path_url: str,
        part: Path,
        max_length: int,
        have: int,
        etag: str | None,
        progress: ProgressCallback | None,
    ) -> None:
        headers: dict[str, str] = {}
        if have > 0:
            headers["Range"] = f"bytes={have}-"
            if etag is not None:
                headers["If-Range"] = etag
        client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout, sock_read=self._timeout
        )
        # The body is counted and resumed in the bytes the server stores: no transfer coding.
        headers["Accept-Encoding"] = "identity"
        async with self._request(
            "GET",
            path_url,
            headers=headers,
            timeout=client_timeout,
            ok=(200, 206),
            auto_decompress=False,
        ) as resp:
            if resp.status == 206:
                start = _content_range_start(resp.headers.get("Content-Range"))
                if start != have:
                    raise _RestartError(
                        f"expected a range starting at byte {have}, got Content-Range "
                        f"{resp.headers.get('Content-Range')!r}"
                    )
            else:
                if have:
                    logger.info("Server ignored the range for %s; restarting", path_url)
                have = 0
            limit = max_length - have
            if resp.content_length is not None and resp.content_length > limit:
                raise LengthError(
                    f"expected at most {limit} more bytes, the server announces "
                    f"{resp.content_length}"
                )
            writer = await asyncio.to_thread(_open_part, part, have > 0)
            try:
                await self._copy(resp, writer, have, max_length, progress)
            finally:
                await asyncio.to_thread(writer.close)

    async def _copy(
        self,
        resp: aiohttp.ClientResponse,
        writer: _PartWriter,
        have: int,
        max_length: int,
        progress: ProgressCallback | None,
    ) -> None:
        total = have
        try:
            async for chunk in _chunks(resp):
                total += len(chunk)
                if total > max_length:
                    raise LengthError(f"the server sent more than the signed {max_length} bytes")
                writer.buffer(chunk)
                if writer.pending >= _WRITE_BUFFER:
                    await asyncio.to_thread(writer.flush)
                if progress is not None:
                    progress(total, max_length)
        finally:
            # Keep what arrived, so that a transport failure can resume from it.
            await asyncio.to_thread(writer.flush)
        await asyncio.to_thread(writer.sync)

    @contextlib.asynccontextmanager
    async def _request(
        self,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...] | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        url = self._url(path)
        all_headers = {**self._headers, **(headers or {})}
        try:
            # Redirects are not followed: the token is for central only.
            async with self._session.request(
                method, url, headers=all_headers, allow_redirects=False, **kwargs
            ) as resp:
                good = resp.status in ok if ok is not None else 200 <= resp.status < 300
                if not good:
                    detail = await _error_detail(resp)
                    raise DownloadHTTPError(
                        f"{method} {path}: expected a 2xx answer, got {resp.status}{detail}",
                        resp.status,
                    )
                yield resp
        except SkiffError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise DownloadError(f"{method} {path} failed: {type(e).__name__}: {e}") from e


class _RestartError(Exception):
    """The part file cannot be continued from this answer; it must be dropped."""


class _PartWriter:
    """Buffers chunks on the event loop and writes them in worker threads."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._chunks: list[bytes] = []
        self.pending = 0

    def buffer(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.pending += len(chunk)

    def flush(self) -> None:
        chunks, self._chunks, self.pending = self._chunks, [], 0
        for chunk in chunks:
            self._f.write(chunk)
        self._f.flush()

    def sync(self) -> None:
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _open_part(part: Path, append: bool) -> _PartWriter:
    part.parent.mkdir(parents=True, exist_ok=True)
    return _PartWriter(open(part, "ab" if append else "wb"))


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _content_range_start(value: str | None) -> int | None:
    match = _CONTENT_RANGE.fullmatch(value.strip()) if value else None
    return int(match.group(1)) if match else None


async def _chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    while chunk := await resp.content.read(_READ_CHUNK):
        yield chunk


async def _read_bounded(resp: aiohttp.ClientResponse, max_length: int) -> bytes:
    if resp.content_length is not None and resp.content_length > max_length:
        raise LengthError(
            f"expected at most {max_length} bytes, the server announces {resp.content_length}"
        )
    parts: list[bytes] = []
    total = 0
    async for chunk in _chunks(resp):
        total += len(chunk)
        if total > max_length:
            raise LengthError(f"expected at most {max_length} bytes, got more")
        parts.append(chunk)
    return b"".join(parts)


async def _error_detail(resp: aiohttp.ClientResponse) -> str:
    try:
        text = (await resp.content.read(_ERROR_BODY_CHARS)).decode("utf-8", "replace")
    except (aiohttp.ClientError, TimeoutError, OSError):
        return ""
    return f": {text.strip()}" if text.strip() else ""
