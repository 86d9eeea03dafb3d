"""The edge fetcher against a real aiohttp server on loopback with fault switches."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edge_agent.fetcher import Fetcher
from shared.codec import compress
from shared.digest import sha256_digest
from shared.errors import DownloadError, DownloadHTTPError, FormatError, LengthError
from shared.manifest import FileEntry

TOKEN = "skf_device_token"
DOWN = {"error": {"code": "unavailable", "message": "down for maintenance"}}


def make_blob(size: int, seed: int, path: str = "model.onnx") -> tuple[FileEntry, bytes]:
    """Return the entry and zstd bytes of ``size`` incompressible bytes.

    Equal sizes give equal compressed sizes (raw zstd blocks), so two seeds make
    a blob and a same-length impostor.
    """
    raw = random.Random(seed).randbytes(size)
    packed = compress(raw)
    entry = FileEntry(path, sha256_digest(raw), size, sha256_digest(packed), len(packed))
    return entry, packed


@dataclass
class BlobServer:
    """A tiny blob server with Range, If-Range and ETag, plus one-shot fault switches."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    etags: dict[str, str] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    cut_after: int | None = None  # close the connection after N body bytes (once)
    stall_after: int | None = None  # stop sending after N body bytes (once)
    ignore_range: bool = False  # answer 200 with the whole blob whatever the Range
    extra: bytes = b""  # bytes sent after the blob
    announce_extra: bool = True  # include the extra bytes in Content-Length
    tamper: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes served instead
    status: int | None = None  # answer this status to every request
    wrong_range: bool = False  # serve the range asked for but name another start
    json_body: Any = None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    def add(self, entry: FileEntry, packed: bytes) -> None:
        self.blobs[entry.digest] = packed
        self.etags[entry.digest] = '"' + entry.zdigest.removeprefix("sha256:") + '"'

    def _record(self, request: web.Request) -> None:
        self.log.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "authorization": request.headers.get("Authorization"),
                "range": request.headers.get("Range"),
                "if_range": request.headers.get("If-Range"),
            }
        )

    async def blob(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        if self.status is not None:
            return web.json_response(DOWN, status=self.status)
        digest = request.match_info["digest"]
        if digest not in self.blobs:
            raise web.HTTPNotFound()
        body = self.tamper.get(digest, self.blobs[digest])
        etag = self.etags[digest]
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        start, status = 0, 200
        range_header, if_range = request.headers.get("Range"), request.headers.get("If-Range")
        if range_header and not self.ignore_range and (if_range is None or if_range == etag):
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(body)}"})
            status = 206
            named = start + 1 if self.wrong_range else start
            headers["Content-Range"] = f"bytes {named}-{len(body) - 1}/{len(body)}"
        payload = body[start:] + self.extra
        resp = web.StreamResponse(status=status, headers=headers)
        if self.announce_extra:
            resp.content_length = len(payload)
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        if self.cut_after is not None:
            cut, self.cut_after = self.cut_after, None
            await resp.write(payload[:cut])
            await asyncio.sleep(0.2)  # let the client read them before the cut
            assert request.transport is not None
            request.transport.close()
            return resp
        if self.stall_after is not None:
            stall, self.stall_after = self.stall_after, None
            await resp.write(payload[:stall])
            await asyncio.wait_for(self.release.wait(), 30)
            return resp
        for i in range(0, len(payload), 65536):
            await resp.write(payload[i : i + 65536])
        await resp.write_eof()
        return resp

    async def get_json(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        if self.status is not None:
            return web.json_response(DOWN, status=self.status)
        if self.stall_after is not None:
            await asyncio.wait_for(self.release.wait(), 30)
        return web.json_response(self.json_body)

    async def post_json(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        return web.json_response({"received": await request.json()})

    async def moved(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        raise web.HTTPFound("/api/v1/doc")

    async def not_json(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        return web.Response(body=b"<html>not json</html>")


@contextlib.asynccontextmanager
async def running_blob_server() -> AsyncIterator[BlobServer]:
    """Run a BlobServer on 127.0.0.1 for the duration of the block."""
    state = BlobServer()
    app = web.Application()
    app.router.add_get("/api/v1/blobs/{digest}", state.blob)
    app.router.add_get("/api/v1/doc", state.get_json)
    app.router.add_post("/api/v1/echo", state.post_json)
    app.router.add_get("/api/v1/html", state.not_json)
    app.router.add_get("/api/v1/moved", state.moved)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url("")).rstrip("/")
    try:
        yield state
    finally:
        state.release.set()
        await server.close()


@pytest.fixture
async def blob_server() -> AsyncIterator[BlobServer]:
    """A running BlobServer."""
    async with running_blob_server() as state:
        yield state


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session closed at teardown."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def fetcher(blob_server: BlobServer, session: aiohttp.ClientSession) -> Fetcher:
    """A fetcher for the blob server with a short timeout."""
    return Fetcher(session, blob_server.url, TOKEN, timeout=2)


def blob_requests(server: BlobServer) -> list[dict[str, Any]]:
    return [r for r in server.log if r["path"].startswith("/api/v1/blobs/")]


async def test_get_json_sends_the_token_and_params(
    fetcher: Fetcher, blob_server: BlobServer
) -> None:
    blob_server.json_body = {"cursor": 7, "roots": []}
    got = await fetcher.get_json("/api/v1/doc", params={"since": 3}, max_length=1000)
    assert got == {"cursor": 7, "roots": []}
    assert blob_server.log[-1]["authorization"] == f"Bearer {TOKEN}"
    assert blob_server.log[-1]["query"] == {"since": "3"}


async def test_get_json_over_max_length_is_a_length_error(
    fetcher: Fetcher, blob_server: BlobServer
) -> None:
    blob_server.json_body = {"pad": "x" * 5000}
    with pytest.raises(LengthError):
        await fetcher.get_json("/api/v1/doc", max_length=1000)


async def test_get_json_rejects_a_body_that_is_not_json(fetcher: Fetcher) -> None:
    with pytest.raises(FormatError):
        await fetcher.get_json("/api/v1/html", max_length=1000)


async def test_get_json_timeout_is_a_download_error(
    fetcher: Fetcher, blob_server: BlobServer
) -> None:
    blob_server.stall_after = 0
    with pytest.raises(DownloadError) as info:
        await fetcher.get_json("/api/v1/doc", max_length=1000, timeout=0.3)
    assert not isinstance(info.value, DownloadHTTPError)
    assert isinstance(info.value.__cause__, TimeoutError)


async def test_redirects_are_not_followed(fetcher: Fetcher, blob_server: BlobServer) -> None:
    with pytest.raises(DownloadHTTPError) as info:
        await fetcher.get_json("/api/v1/moved", max_length=1000)
    assert info.value.status_code == 302
    assert [r["path"] for r in blob_server.log] == ["/api/v1/moved"]


async def test_post_json_round_trip(fetcher: Fetcher, blob_server: BlobServer) -> None:
    got = await fetcher.post_json("/api/v1/echo", {"serving": {"m": "1.0.0"}})
    assert got == {"received": {"serving": {"m": "1.0.0"}}}
    assert blob_server.log[-1]["authorization"] == f"Bearer {TOKEN}"


async def test_503_is_a_download_http_error(fetcher: Fetcher, blob_server: BlobServer) -> None:
    blob_server.status = 503
    with pytest.raises(DownloadHTTPError) as info:
        await fetcher.get_json("/api/v1/doc", max_length=1000)
    assert info.value.status_code == 503
    entry, _ = make_blob(1000, 1)
    with pytest.raises(DownloadHTTPError) as info:
        await fetcher.download_to(f"/api/v1/blobs/{entry.digest}", Path("unused"), max_length=10)
    assert info.value.status_code == 503


async def test_connection_refused_is_a_download_error(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fetcher = Fetcher(session, f"http://127.0.0.1:{port}", TOKEN, timeout=2)
    with pytest.raises(DownloadError) as info:
        await fetcher.get_json("/api/v1/doc", max_length=100)
    assert not isinstance(info.value, DownloadHTTPError)
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectionError)
    with pytest.raises(DownloadError):
        await fetcher.download_to("/api/v1/blobs/x", tmp_path / "p.part", max_length=10)
    assert not (tmp_path / "p.part").exists()


async def test_download_whole_blob(
    fetcher: Fetcher, blob_server: BlobServer, tmp_path: Path
) -> None:
    entry, packed = make_blob(300_000, 1)
    blob_server.add(entry, packed)
    part = tmp_path / "partial" / "b.zst.part"
    seen: list[tuple[int, int]] = []
    await fetcher.download_to(
        f"/api/v1/blobs/{entry.digest}",
        part,
        max_length=entry.zsize,
        progress=lambda n, total: seen.append((n, total)),
    )
    assert part.read_bytes() == packed
    assert seen[-1] == (entry.zsize, entry.zsize)
    (request,) = blob_requests(blob_server)
    assert request["range"] is None
    assert request["authorization"] == f"Bearer {TOKEN}"


async def test_resume_after_the_connection_is_cut_mid_body(
    fetcher: Fetcher, blob_server: BlobServer, tmp_path: Path
) -> None:
    entry, packed = make_blob(300_000, 2)
    blob_server.add(entry, packed)
    etag = blob_server.etags[entry.digest]
    part = tmp_path / "b.zst.part"
    url = f"/api/v1/blobs/{entry.digest}"
    blob_server.cut_after = 100_000
    with pytest.raises(DownloadError):
        await fetcher.download_to(url, part, max_length=entry.zsize, etag=etag)
    assert part.read_bytes() == packed[:100_000]
    await fetcher.download_to(url, part, max_length=entry.zsize, etag=etag)
    assert part.read_bytes() == packed
    first, second = blob_requests(blob_server)
    assert first["range"] is None
    assert second["range"] == "bytes=100000-"
    assert second["if_range"] == etag


async def test_resume_after_a_stall_times_out(
    session: aiohttp.ClientSession, blob_server: BlobServer, tmp_path: Path
) -> None:
    fetcher = Fetcher(session, blob_server.url, TOKEN, timeout=0.3)
    entry, packed = make_blob(200_000, 3)
    blob_server.add(entry, packed)
    part = tmp_path / "b.zst.part"
    url = f"/api/v1/blobs/{entry.digest}"
    blob_server.stall_after = 70_000
    with pytest.raises(DownloadError) as info:
        await fetcher.download_to(url, part, max_length=entry.zsize)
    assert isinstance(info.value.__cause__, TimeoutError)
    assert part.stat().st_size == 70_000
    await fetcher.download_to(url, part, max_length=entry.zsize)
    assert part.read_bytes() == packed
    assert [r["range"] for r in blob_requests(blob_server)] == [None, "bytes=70000-"]


async def test_server_ignoring_range_restarts_from_zero(
    fetcher: Fetcher, blob_server: BlobServer, tmp_path: Path
) -> None:
    entry, packed = make_blob(200_000, 4)
    blob_server.add(entry, packed)
    part = tmp_path / "b.zst.part"
    part.write_bytes(packed[:50_000])
    blob_server.ignore_range = True
    await fetcher.download_to(f"/api/v1/blobs/{entry.digest}", part, max_length=entry.zsize)
    assert part.read_bytes() == packed
    (request,) = blob_requests(blob_server)
    assert request["range"] == "bytes=50000-"


async def test_if_range_mismatch_restarts_from_zero(
    fetcher: Fetcher, blob_server: BlobServer, tmp_path: Path
) -> None:
    entry, packed = make_blob(100_000, 5)
    blob_server.add(entry, packed)
    part = tmp_path / "b.zst.part"
    part.write_bytes(b"stale bytes of another blob")
    await fetcher.download_to(
        f"/api/v1/blobs/{entry.digest}", part, max_length=entry.zsize, etag='"other"'
    )
    assert part.read_bytes() == packed


async def test_unsatisfiable_range_restarts_from_zero(
    fetcher: Fetcher, blob_server: BlobServer, tmp_path: Path
) -> None:
    entry, packed = make_blob(10_000, 6)
    blob_server.add(entry, packed)
    short = packed[:5000]
    blob_server.tamper[entry.digest] = short  # the server holds fewer bytes than the part
    part = tmp_path / "b.zst.part"
    part.write_bytes(packed[:6000])
    await fetcher.download_to(f"/api/v1/blobs/{entry.digest}", part, max_length=entry.zsize)
    assert part.read_bytes() == short
    assert [r["range"] for r in blob_requests(blob_server)] == ["bytes=6000-", None]


async def test_a_range_starting_elsewhere_drops_the_part(
    fetcher: Fetcher, blob_server: BlobServer, tmp_path: Path
) -> None:
    entry, packed = make_blob(10_000, 11)
    blob_server.add(entry, packed)
    blob_server.wrong_range = True
    part = tmp_path / "b.zst.part"
    part.write_bytes(packed[:4000])
    url = f"/api/v1/blobs/{entry.digest}"
    with pytest.raises(DownloadError):
        await fetcher.download_to(url, part, max_length=entry.zsize)
    assert not part.exists()
    await fetcher.download_to(url, part, max_length=entry.zsize)
    assert part.read_bytes() == packed


@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "chunked"])
async def test_more_than_max_length_is_a_length_error_and_no_part_file(
    fetcher: Fetcher, blob_server: BlobServer, tmp_path: Path, announce: bool
) -> None:
    entry, packed = make_blob(300_000, 7)
    blob_server.add(entry, packed)
    blob_server.extra = b"\0" * 10
    blob_server.announce_extra = announce
    part = tmp_path / "b.zst.part"
    with pytest.raises(LengthError):
        await fetcher.download_to(f"/api/v1/blobs/{entry.digest}", part, max_length=entry.zsize)
    assert not part.exists()


async def test_more_than_max_length_after_resume_deletes_the_part(
    fetcher: Fetcher, blob_server: BlobServer, tmp_path: Path
) -> None:
    entry, packed = make_blob(100_000, 8)
    blob_server.add(entry, packed)
    blob_server.extra = b"more"
    part = tmp_path / "b.zst.part"
    part.write_bytes(packed[:1000])
    with pytest.raises(LengthError):
        await fetcher.download_to(f"/api/v1/blobs/{entry.digest}", part, max_length=entry.zsize)
    assert not part.exists()


async def test_a_complete_part_file_is_not_fetched_again(
    fetcher: Fetcher, blob_server: BlobServer, tmp_path: Path
) -> None:
    entry, packed = make_blob(1000, 9)
    part = tmp_path / "b.zst.part"
    part.write_bytes(packed)
    await fetcher.download_to(f"/api/v1/blobs/{entry.digest}", part, max_length=entry.zsize)
    assert part.read_bytes() == packed
    assert blob_requests(blob_server) == []


async def test_an_overlong_part_file_is_restarted(
    fetcher: Fetcher, blob_server: BlobServer, tmp_path: Path
) -> None:
    entry, packed = make_blob(1000, 10)
    blob_server.add(entry, packed)
    part = tmp_path / "b.zst.part"
    part.write_bytes(packed + b"junk")
    await fetcher.download_to(f"/api/v1/blobs/{entry.digest}", part, max_length=entry.zsize)
    assert part.read_bytes() == packed
    assert [r["range"] for r in blob_requests(blob_server)] == [None]


class RecordingSink:
    """A DownloadSink that keeps what it is given."""

    def __init__(self, part_wanted_until: int | None = None) -> None:
        self.data = bytearray()
        self.resets = 0
        self.part_wanted = True
        self._until = part_wanted_until

    async def write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.data += chunk
        if self._until is not None and len(self.data) >= self._until:
            self.part_wanted = False

    async def reset(self) -> None:
        self.data.clear()
        self.resets += 1


async def test_sink_gets_the_part_file_from_byte_zero_when_resuming(
    fetcher: Fetcher, blob_server: BlobServer, tmp_path: Path
) -> None:
    entry, packed = make_blob(3_000_000, 30)  # several batches
    blob_server.add(entry, packed)
    part = tmp_path / "b.zst.part"
    part.write_bytes(packed[:1_234_567])
    sink = RecordingSink()
    url = f"/api/v1/blobs/{entry.digest}"
    await fetcher.download_to(url, part, max_length=entry.zsize, sink=sink)
    assert bytes(sink.data) == packed
    assert part.read_bytes() == packed
    assert sink.resets == 0
    assert [r["range"] for r in blob_requests(blob_server)] == ["bytes=1234567-"]


async def test_sink_is_reset_when_the_server_sends_the_whole_blob(
    fetcher: Fetcher, blob_server: BlobServer, tmp_path: Path
) -> None:
    entry, packed = make_blob(2_000_000, 31)
    blob_server.add(entry, packed)
    part = tmp_path / "b.zst.part"
    part.write_bytes(packed[:500_000])
    blob_server.ignore_range = True
    sink = RecordingSink()
    await fetcher.download_to(
        f"/api/v1/blobs/{entry.digest}", part, max_length=entry.zsize, sink=sink
    )
    assert bytes(sink.data) == packed
    assert sink.resets == 1


async def test_sink_gets_a_complete_part_file_without_a_request(
    fetcher: Fetcher, blob_server: BlobServer, tmp_path: Path
) -> None:
    entry, packed = make_blob(100_000, 32)
    blob_server.add(entry, packed)
    part = tmp_path / "b.zst.part"
    part.write_bytes(packed)
    sink = RecordingSink()
    await fetcher.download_to(
        f"/api/v1/blobs/{entry.digest}", part, max_length=entry.zsize, sink=sink
    )
    assert bytes(sink.data) == packed
    assert blob_requests(blob_server) == []


async def test_a_sink_error_stops_the_download_and_is_raised_as_it_is(
    fetcher: Fetcher, blob_server: BlobServer, tmp_path: Path
) -> None:
    entry, packed = make_blob(3_000_000, 33)
    blob_server.add(entry, packed)

    class Refusing(RecordingSink):
        async def write(self, chunks: list[bytes]) -> None:
            raise FormatError("not a zstd frame")

    part = tmp_path / "b.zst.part"
    with pytest.raises(FormatError):
        await fetcher.download_to(
            f"/api/v1/blobs/{entry.digest}", part, max_length=entry.zsize, sink=Refusing()
        )
    assert (part.stat().st_size if part.exists() else 0) < entry.zsize


async def test_the_part_file_stops_growing_once_the_sink_can_resume_by_itself(
    fetcher: Fetcher, blob_server: BlobServer, tmp_path: Path
) -> None:
    entry, packed = make_blob(6_000_000, 34)  # several batches
    blob_server.add(entry, packed)
    part = tmp_path / "b.zst.part"
    sink = RecordingSink(part_wanted_until=2_000_000)
    await fetcher.download_to(
        f"/api/v1/blobs/{entry.digest}", part, max_length=entry.zsize, sink=sink
    )
    assert bytes(sink.data) == packed
    kept = part.read_bytes()
    assert 0 < len(kept) < 2_000_000  # not a batch after the one that made the sink say so
    assert kept == packed[: len(kept)]  # still a prefix a later attempt could resume from


async def test_a_download_started_past_byte_zero_asks_only_for_the_rest(
    fetcher: Fetcher, blob_server: BlobServer, tmp_path: Path
) -> None:
    entry, packed = make_blob(3_000_000, 35)
    blob_server.add(entry, packed)
    part = tmp_path / "b.zst.part"
    part.write_bytes(b"stale bytes of an earlier attempt")
    sink = RecordingSink()
    await fetcher.download_to(
        f"/api/v1/blobs/{entry.digest}", part, max_length=entry.zsize, sink=sink, start=1_000_000
    )
    assert bytes(sink.data) == packed[1_000_000:]
    assert [r["range"] for r in blob_requests(blob_server)] == ["bytes=1000000-"]
    assert part.read_bytes() == b"stale bytes of an earlier attempt"  # neither read nor written
