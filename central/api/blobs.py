"""Handlers for blobs: streamed upload, download with Range, ETag and If-None-Match."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator

from aiohttp import web

from central.api.common import etag_matches, json_response
from central.api.keys import ACTOR, BLOBS
from central.domain import Blob
from shared.errors import InvalidInputError, PayloadTooLargeError, RangeNotSatisfiableError

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
COPY_CHUNK = 1 << 20  # bytes read per step where the loop has no sendfile


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(1 << 20):
        yield chunk


async def put_blob(request: web.Request) -> web.Response:
    service = request.app[BLOBS]
    length = request.content_length
    if length is not None and length > service.max_upload:
        raise PayloadTooLargeError(
            f"upload of {length} bytes exceeds the limit of {service.max_upload} bytes"
        )
    encoding = request.headers.get("Content-Encoding", "identity").lower()
    if encoding not in ("identity", "zstd"):
        raise InvalidInputError(f"unsupported Content-Encoding {encoding!r}: identity or zstd")
    blob, created = await service.put(
        request[ACTOR], request.match_info["digest"], _body(request), zstd_body=encoding == "zstd"
    )
    return json_response(request, blob.to_dict(), status=201 if created else 200)


async def blob_info(request: web.Request) -> web.Response:
    blob = await request.app[BLOBS].info(request[ACTOR], request.match_info["digest"])
    return json_response(request, blob.to_dict())


def parse_range(header: str, size: int) -> tuple[int, int]:
    """One ``bytes=`` range as a half-open ``[start, end)`` within ``size``."""
    m = _RANGE.match(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        raise RangeNotSatisfiableError(f"unsupported Range {header!r}: use one bytes=a-b range")
    first, last = m.group(1), m.group(2)
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0:
            raise RangeNotSatisfiableError("empty suffix range")
        return max(0, size - n), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if start >= size or end <= start:
        raise RangeNotSatisfiableError(f"range {header!r} is outside the {size} bytes stored")
    return start, end


def _headers(blob: Blob) -> dict[str, str]:
    return {
        "ETag": f'"{blob.zdigest.removeprefix("sha256:")}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/zstd",
        "Cache-Control": "public, max-age=31536000, immutable",
        "X-Skiff-Size": str(blob.size),
        "X-Skiff-Zdigest": blob.zdigest,
    }


async def get_blob(request: web.Request) -> web.StreamResponse:
    service = request.app[BLOBS]
    blob = await service.info(request[ACTOR], request.match_info["digest"])
    headers = _headers(blob)
    if etag_matches(request, headers["ETag"]):
        return web.Response(status=304, headers=headers)
    start, end, status = 0, blob.zsize, 200
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if range_header and (if_range is None or if_range.strip() == headers["ETag"]):
        try:
            start, end = parse_range(range_header, blob.zsize)
        except RangeNotSatisfiableError as e:
            e.headers = {"Content-Range": f"bytes */{blob.zsize}"}
            raise
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.zsize}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    if request.method == "HEAD":
        await response.prepare(request)
    else:
        await _send_body(request, response, blob, start, end)
    await response.write_eof()
    return response


async def _send_body(
    request: web.Request, response: web.StreamResponse, blob: Blob, start: int, end: int
) -> None:
    """Send bytes ``[start, end)``: by the kernel from the file when the store keeps
    them as served (no copy through Python), else streamed chunk by chunk."""
    body = await request.app[BLOBS].open_download(request[ACTOR], blob.digest, start, end)
    if body.file is None:
        assert body.chunks is not None
        await response.prepare(request)
        async for chunk in body.chunks:
            await response.write(chunk)
        return
    try:
        await response.prepare(request)  # a StreamResponse sends its headers here
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("the client closed the connection")
        # sendfile(2) where the transport allows it; asyncio reads and writes otherwise.
        try:
            await asyncio.get_running_loop().sendfile(transport, body.file, start, end - start)
        except NotImplementedError:  # uvloop has no loop.sendfile
            await _copy_file(response, body.file.fileno(), start, end)
    finally:
        await asyncio.to_thread(body.file.close)


async def _copy_file(response: web.StreamResponse, fd: int, start: int, end: int) -> None:
    """Send bytes ``[start, end)`` of ``fd``: read off the loop, sent as the client takes them."""
    offset = start
    while offset < end:
        chunk = await asyncio.to_thread(os.pread, fd, min(COPY_CHUNK, end - offset), offset)
        if not chunk:
            raise OSError(f"blob file ended at byte {offset} of {end}")
        await response.write(chunk)
        offset += len(chunk)
