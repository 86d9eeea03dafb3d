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
from typing import Any, BinaryIO, Protocol

import aiohttp

from edge_agent._worker import SerialWorker
from shared.canonical import loads_json
from shared.errors import DownloadError, DownloadHTTPError, LengthError, SkiffError

__all__ = ["DEFAULT_JSON_MAX_LENGTH", "DownloadSink", "Fetcher", "ProgressCallback"]

logger = logging.getLogger(__name__)

DEFAULT_JSON_MAX_LENGTH = 1 << 20
"""The most bytes accepted in a JSON answer to a POST."""

ProgressCallback = Callable[[int, int], None]
"""Called with (bytes in the part file so far, ``max_length``) as a download goes."""

_READ_CHUNK = 64 * 1024
_BATCH = 1 << 20  # bytes gathered before the part file and the sink take them
_DOWNLOAD_READ_BUFFER = 1 << 20  # socket bytes aiohttp buffers for a download
_PART_CACHE = 8 << 20  # part file bytes left in the page cache before they are dropped


class DownloadSink(Protocol):
    """Takes the bytes of a download as the part file receives them (e.g. a verifier).

    It is given every byte of the download from byte 0 (or from the ``start`` it
    resumes at), in order: first what the part file held already, then what arrives.
    Its methods run on the event loop and may return before the bytes are processed,
    to overlap the network.

    ``part_wanted`` tells whether the part file still needs the bytes: a sink that
    can resume by itself from a later point says no once it can, and the part file
    stops growing (it still holds a valid prefix of the download).
    """

    part_wanted: bool

    async def write(self, chunks: list[bytes]) -> None:
        """Take the next bytes."""

    async def reset(self) -> None:
        """Forget every byte taken so far: the download starts again at byte 0."""


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
        sink: DownloadSink | None = None,
        start: int = 0,
    ) -> None:
        """Download at most ``max_length`` bytes into ``part``, resuming what it holds.

        With ``start``, the ``sink`` holds the first ``start`` bytes already (it resumes
        from a point of its own): the download goes on from there and the part file is
        neither read nor written; nor is it when the sink wants no part file from the
        start.

        A part file of ``n`` bytes (``0 < n < max_length``) is resumed with
        ``Range: bytes=n-`` (and ``If-Range: <etag>`` when given): a 206 answer
        is appended, a 200 answer replaces the file from byte 0. A part file of
        exactly ``max_length`` bytes is complete as far as sizes go and is left
        for the caller to verify. With a ``sink``, it is given the bytes as the
        part file takes them (see :class:`DownloadSink`); its errors are raised
        as they are.

        The part file is not fsynced: it holds bytes still to be verified, which
        whoever uses them verifies whole. A transport failure keeps the bytes
        received for the next attempt; a size violation or an answer that cannot
        be appended deletes the file.

        Raises:
            LengthError: The server sent more than ``max_length`` bytes.
            DownloadHTTPError: The status is neither 200 nor 206.
            DownloadError: The connection failed, timed out, or the answer's
                ``Content-Range`` does not start where the part file ends.
        """
        if start > 0 and (sink is None or start > max_length):
            raise ValueError("a download starts past byte 0 only into a sink, within bounds")
        if start > 0 or (sink is not None and not sink.part_wanted):
            have, keep = start, None
        else:
            have, keep = await asyncio.to_thread(_file_size, part), part
            if have > max_length:
                logger.warning(
                    "Part file %s holds more than %d bytes; restarting", part, max_length
                )
                have = 0
            if sink is not None and have > 0:
                await _replay(part, have, sink)
        if have == max_length and have > 0:
            logger.debug("Download %s already holds all %d bytes", path_url, max_length)
            return
        target = _Target(keep, sink, progress)
        try:
            try:
                await self._download(path_url, target, max_length, have, etag)
            except DownloadHTTPError as e:
                if e.status_code != 416 or have == 0:
                    raise
                # The part file does not fit what the server holds: start again once.
                logger.info("Range %d- of %s not satisfiable; restarting", have, path_url)
                if sink is not None:
                    await sink.reset()
                await self._download(path_url, target, max_length, 0, etag)
        except (LengthError, _RestartError) as e:
            if keep is not None:
                await asyncio.to_thread(_unlink, part)
            if isinstance(e, _RestartError):
                raise DownloadError(str(e)) from e
            raise

    async def _download(
        self, path_url: str, target: _Target, max_length: int, have: int, etag: str | None
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
            read_bufsize=_DOWNLOAD_READ_BUFFER,
        ) as resp:
            if resp.status == 206:
                start = _content_range_start(resp.headers.get("Content-Range"))
                if start != have:
                    raise _RestartError(
                        f"expected a range starting at byte {have}, got Content-Range "
                        f"{resp.headers.get('Content-Range')!r}"
                    )
            elif have:
                logger.info("Server ignored the range for %s; restarting", path_url)
                have = 0
                if target.sink is not None:
                    await target.sink.reset()
            limit = max_length - have
            if resp.content_length is not None and resp.content_length > limit:
                raise LengthError(
                    f"expected at most {limit} more bytes, the server announces "
                    f"{resp.content_length}"
                )
            writer = None if target.part is None else _PartWriter(target.part, have > 0)
            try:
                await self._copy(resp, writer, target, have, max_length)
            finally:
                if writer is not None:
                    await writer.close()

    async def _copy(
        self,
        resp: aiohttp.ClientResponse,
        writer: _PartWriter | None,
        target: _Target,
        have: int,
        max_length: int,
    ) -> None:
        total = have
        batch: list[bytes] = []
        pending = 0
        try:
            async for chunk in _received(resp):
                total += len(chunk)
                if total > max_length:
                    raise LengthError(f"the server sent more than the signed {max_length} bytes")
                batch.append(chunk)
                pending += len(chunk)
                if pending >= _BATCH:
                    full, batch, pending = batch, [], 0
                    await target.take(writer, full)
                if target.progress is not None:
                    target.progress(total, max_length)
        finally:
            # Keep what arrived, so that a transport failure can resume from it.
            await target.keep(writer, batch)
        if writer is not None:
            await writer.flush()
        if target.sink is not None and batch:
            await target.sink.write(batch)

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


class _Target:
    """Where a download's bytes go: the part file (if kept), the sink and the progress
    callback."""

    def __init__(
        self, part: Path | None, sink: DownloadSink | None, progress: ProgressCallback | None
    ) -> None:
        self.part = part
        self.sink = sink
        self.progress = progress

    async def take(self, writer: _PartWriter | None, batch: list[bytes]) -> None:
        if self.sink is not None:  # first: what it is given may tell the part file is useless
            await self.sink.write(batch)
        await self.keep(writer, batch)

    async def keep(self, writer: _PartWriter | None, batch: list[bytes]) -> None:
        """Append ``batch`` to the part file, while it still needs the bytes."""
        if writer is not None and (self.sink is None or self.sink.part_wanted):
            await writer.write(batch)


class _PartWriter:
    """Appends batches to the part file in a worker thread while the loop receives more.

    The file is opened (or created, or emptied) by the first batch: a download whose
    sink wants no part file leaves none.
    """

    def __init__(self, part: Path, append: bool) -> None:
        self._part = part
        self._append_to = append
        self._f: BinaryIO | None = None
        self._worker = SerialWorker("blob-part")
        self._unadvised = 0  # bytes appended since the last advice
        # File offsets at the last two pieces of advice: dirty pages from before the
        # last are clean by the next, so each covers from the one before the last.
        self._advised = (0, 0)

    async def write(self, batch: list[bytes]) -> None:
        if batch:
            await self._worker.submit(self._append, batch)

    def _append(self, batch: list[bytes]) -> None:
        if self._f is None:
            self._f = _open_part(self._part, self._append_to)
            self._advised = (self._f.tell(), self._f.tell())
        self._f.writelines(batch)
        self._unadvised += sum(map(len, batch))
        if self._unadvised >= _PART_CACHE and hasattr(os, "posix_fadvise"):
            # The part file is read again only to resume, so a download need not hold
            # it in memory: DONTNEED starts writing back what is dirty, without waiting,
            # and drops what is clean.
            self._f.flush()
            before_last, last = self._advised
            os.posix_fadvise(self._f.fileno(), before_last, 0, os.POSIX_FADV_DONTNEED)
            self._advised = (last, self._f.tell())
            self._unadvised = 0

    async def flush(self) -> None:
        """Wait until every batch is written; raise what failed."""
        await self._worker.wait()
        if self._f is not None:
            await asyncio.to_thread(self._f.flush)

    async def close(self) -> None:
        await self._worker.close()
        if self._f is not None:
            await asyncio.to_thread(self._f.close)


def _open_part(part: Path, append: bool) -> BinaryIO:
    part.parent.mkdir(parents=True, exist_ok=True)
    return open(part, "ab" if append else "wb")


async def _replay(part: Path, have: int, sink: DownloadSink) -> None:
    """Give ``sink`` the first ``have`` bytes of the part file."""
    f = await asyncio.to_thread(open, part, "rb")
    try:
        left = have
        while left > 0 and (chunk := await asyncio.to_thread(f.read, min(_BATCH, left))):
            left -= len(chunk)
            await sink.write([chunk])
    finally:
        await asyncio.to_thread(f.close)


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


async def _received(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body in the pieces the connection received (no copies; each at most a socket read)."""
    while True:
        chunk, end_of_http_chunk = await resp.content.readchunk()
        if chunk:
            yield chunk
        elif not end_of_http_chunk:
            return


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
