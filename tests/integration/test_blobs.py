"""Blob upload and download against a real central: idempotence, zstd, ranges, limits."""

from __future__ import annotations

import asyncio
import http.client
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from central.api.blobs import COPY_CHUNK
from shared.aio import EVENT_LOOP_ENV
from shared.digest import sha256_digest
from tests.support import (
    ApiResponse,
    CentralProcess,
    api,
    init_central,
    run_skiff,
    running_central,
)

UPLOAD_LIMIT = 1000


@pytest.fixture(scope="module")
def small_central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralProcess]:
    """A central that accepts uploads of at most ``UPLOAD_LIMIT`` bytes."""
    data_dir = tmp_path_factory.mktemp("small") / "central"
    with running_central(data_dir, max_upload_bytes=UPLOAD_LIMIT) as process:
        yield process


def _decompress(frame: bytes) -> bytes:
    # stream_reader also handles frames that do not record their content size
    return (
        zstandard.ZstdDecompressor()
        .stream_reader(io.BytesIO(frame), read_across_frames=True)
        .read()
    )


def _blob_path(digest: str) -> str:
    return f"/api/v1/blobs/{digest}"


def _put(
    central: CentralProcess,
    data: bytes,
    digest: str | None = None,
    headers: dict[str, str] | None = None,
) -> ApiResponse:
    path = _blob_path(digest or sha256_digest(data))
    return api(central, "PUT", path, data=data, headers=headers)


@pytest.fixture(scope="module")
def stored(central_module: CentralProcess) -> tuple[bytes, bytes, dict[str, object]]:
    """A random (incompressible) blob: its bytes, its stored zstd bytes, its record."""
    data = os.urandom(20_000) + b"skiff " * 2000
    resp = _put(central_module, data)
    assert resp.status == 201, resp.body
    record = resp.json()
    got = api(central_module, "GET", _blob_path(record["digest"]))
    assert got.status == 200, got.body
    return data, got.body, record


def test_put_stores_once_and_again_is_a_no_op(central_module: CentralProcess) -> None:
    data = os.urandom(3000)
    first = _put(central_module, data)
    assert first.status == 201, first.body
    record = first.json()
    assert record["digest"] == sha256_digest(data)
    assert record["size"] == len(data)
    assert record["zdigest"].startswith("sha256:")
    assert record["zsize"] > 0
    assert record["created_at"].endswith("Z")

    again = _put(central_module, data)
    assert again.status == 200, again.body
    assert again.json() == record

    info = api(central_module, "GET", _blob_path(record["digest"]) + "/info")
    assert info.status == 200
    assert info.json() == record


def test_get_returns_zstd_bytes_of_the_original(
    central_module: CentralProcess, stored: tuple[bytes, bytes, dict[str, object]]
) -> None:
    data, zbytes, record = stored
    resp = api(central_module, "GET", _blob_path(str(record["digest"])))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/zstd")
    assert resp.body == zbytes
    assert len(zbytes) == record["zsize"]
    assert sha256_digest(zbytes) == record["zdigest"]
    assert _decompress(zbytes) == data
    assert int(resp.headers["X-Skiff-Size"]) == len(data)
    assert resp.headers["X-Skiff-Zdigest"] == record["zdigest"]
    assert resp.headers["ETag"] == f'"{str(record["zdigest"]).removeprefix("sha256:")}"'


def test_head_describes_the_blob_without_a_body(
    central_module: CentralProcess, stored: tuple[bytes, bytes, dict[str, object]]
) -> None:
    data, zbytes, record = stored
    resp = api(central_module, "HEAD", _blob_path(str(record["digest"])))
    assert resp.status == 200
    assert resp.body == b""
    assert int(resp.headers["Content-Length"]) == len(zbytes)
    assert int(resp.headers["X-Skiff-Size"]) == len(data)
    assert resp.headers["ETag"]


def test_if_none_match_gives_304(
    central_module: CentralProcess, stored: tuple[bytes, bytes, dict[str, object]]
) -> None:
    _, _, record = stored
    path = _blob_path(str(record["digest"]))
    etag = api(central_module, "GET", path).headers["ETag"]
    resp = api(central_module, "GET", path, headers={"If-None-Match": etag})
    assert resp.status == 304
    assert resp.body == b""
    other = api(central_module, "GET", path, headers={"If-None-Match": '"0123"'})
    assert other.status == 200


def test_range_gives_206_with_the_exact_slice(
    central_module: CentralProcess, stored: tuple[bytes, bytes, dict[str, object]]
) -> None:
    _, zbytes, record = stored
    resp = api(
        central_module, "GET", _blob_path(str(record["digest"])), headers={"Range": "bytes=10-99"}
    )
    assert resp.status == 206, resp.body[:200]
    assert resp.body == zbytes[10:100]
    assert resp.headers["Content-Range"] == f"bytes 10-99/{len(zbytes)}"
    assert int(resp.headers["Content-Length"]) == 90


def test_open_ended_range_resumes_a_download(
    central_module: CentralProcess, stored: tuple[bytes, bytes, dict[str, object]]
) -> None:
    _, zbytes, record = stored
    start = len(zbytes) - 1234
    resp = api(
        central_module,
        "GET",
        _blob_path(str(record["digest"])),
        headers={"Range": f"bytes={start}-"},
    )
    assert resp.status == 206
    assert resp.body == zbytes[start:]
    assert resp.headers["Content-Range"] == f"bytes {start}-{len(zbytes) - 1}/{len(zbytes)}"


def test_suffix_range_gives_the_last_bytes(
    central_module: CentralProcess, stored: tuple[bytes, bytes, dict[str, object]]
) -> None:
    _, zbytes, record = stored
    resp = api(
        central_module, "GET", _blob_path(str(record["digest"])), headers={"Range": "bytes=-50"}
    )
    assert resp.status == 206
    assert resp.body == zbytes[-50:]
    size = len(zbytes)
    assert resp.headers["Content-Range"] == f"bytes {size - 50}-{size - 1}/{size}"


def test_unsatisfiable_range_gives_416(
    central_module: CentralProcess, stored: tuple[bytes, bytes, dict[str, object]]
) -> None:
    _, zbytes, record = stored
    size = len(zbytes)
    resp = api(
        central_module,
        "GET",
        _blob_path(str(record["digest"])),
        headers={"Range": f"bytes={size}-{size + 10}"},
    )
    assert resp.status == 416
    assert resp.error()["code"] == "range_not_satisfiable"


def test_if_range_with_a_stale_etag_sends_the_whole_blob(
    central_module: CentralProcess, stored: tuple[bytes, bytes, dict[str, object]]
) -> None:
    _, zbytes, record = stored
    path = _blob_path(str(record["digest"]))
    etag = api(central_module, "HEAD", path).headers["ETag"]
    fresh = api(central_module, "GET", path, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert fresh.status == 206
    assert fresh.body == zbytes[:10]
    stale = api(central_module, "GET", path, headers={"Range": "bytes=0-9", "If-Range": '"beef"'})
    assert stale.status == 200
    assert stale.body == zbytes


def test_put_of_a_zstd_frame_stores_the_uncompressed_digest(
    central_module: CentralProcess,
) -> None:
    data = b"weights " * 5000 + os.urandom(100)
    frame = zstandard.ZstdCompressor(level=5).compress(data)
    resp = _put(central_module, frame, sha256_digest(data), headers={"Content-Encoding": "zstd"})
    assert resp.status == 201, resp.body
    record = resp.json()
    assert record["digest"] == sha256_digest(data)
    assert record["size"] == len(data)
    got = api(central_module, "GET", _blob_path(sha256_digest(data)))
    assert _decompress(got.body) == data


def test_digest_mismatch_is_refused_and_nothing_kept(central_module: CentralProcess) -> None:
    claimed = sha256_digest(b"what the client promised")
    resp = _put(central_module, b"what the client sent", claimed)
    assert resp.status == 400
    err = resp.error()
    assert err["code"] == "invalid"
    assert "digest" in err["message"].lower()
    assert api(central_module, "GET", _blob_path(claimed)).status == 404
    assert api(central_module, "GET", _blob_path(claimed) + "/info").status == 404


def test_truncated_zstd_frame_is_refused(central_module: CentralProcess) -> None:
    data = os.urandom(50_000)
    frame = zstandard.ZstdCompressor().compress(data)
    resp = _put(
        central_module,
        frame[: len(frame) // 2],
        sha256_digest(data),
        headers={"Content-Encoding": "zstd"},
    )
    assert resp.status == 400
    assert resp.error()["code"] == "invalid"
    assert api(central_module, "GET", _blob_path(sha256_digest(data))).status == 404


async def _send_truncated(central: CentralProcess, digest: str, sent: bytes, length: int) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", central.port)
    head = (
        f"PUT {_blob_path(digest)} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{central.port}\r\n"
        f"Authorization: Bearer {central.token}\r\n"
        f"Content-Length: {length}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    writer.write(head.encode() + sent)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await writer.wait_closed()


async def test_truncated_upload_is_not_stored(central_module: CentralProcess) -> None:
    data = os.urandom(100_000)
    digest = sha256_digest(data)
    await _send_truncated(central_module, digest, data[:30_000], len(data))
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        resp = await asyncio.to_thread(api, central_module, "GET", _blob_path(digest))
        assert resp.status == 404
        await asyncio.sleep(0.1)
    # the complete upload is a first store (201), not a no-op over a partial blob
    full = await asyncio.to_thread(api, central_module, "PUT", _blob_path(digest), data=data)
    assert full.status == 201, full.body
    got = await asyncio.to_thread(api, central_module, "GET", _blob_path(digest))
    assert _decompress(got.body) == data


def test_upload_at_the_limit_is_accepted(small_central: CentralProcess) -> None:
    data = os.urandom(UPLOAD_LIMIT)
    assert _put(small_central, data).status == 201


def test_oversize_upload_gives_413_and_nothing_stored(small_central: CentralProcess) -> None:
    data = os.urandom(UPLOAD_LIMIT * 5)
    resp = _put(small_central, data)
    assert resp.status == 413
    err = resp.error()
    assert err["code"] == "too_large"
    assert str(UPLOAD_LIMIT) in err["message"]
    assert api(small_central, "GET", _blob_path(sha256_digest(data))).status == 404


def test_oversize_chunked_upload_gives_413(small_central: CentralProcess) -> None:
    data = os.urandom(UPLOAD_LIMIT * 5)
    digest = sha256_digest(data)
    conn = http.client.HTTPConnection("127.0.0.1", small_central.port, timeout=30)
    try:
        conn.request(
            "PUT",
            _blob_path(digest),
            body=iter([data[i : i + 512] for i in range(0, len(data), 512)]),
            headers={"Authorization": f"Bearer {small_central.token}"},
            encode_chunked=True,
        )
        status = conn.getresponse().status
    finally:
        conn.close()
    assert status == 413
    assert api(small_central, "GET", _blob_path(digest)).status == 404


def test_zstd_frame_expanding_over_the_limit_gives_413(small_central: CentralProcess) -> None:
    data = b"\0" * (UPLOAD_LIMIT * 50)
    frame = zstandard.ZstdCompressor().compress(data)
    assert len(frame) < UPLOAD_LIMIT
    resp = _put(small_central, frame, sha256_digest(data), headers={"Content-Encoding": "zstd"})
    assert resp.status == 413
    assert resp.error()["code"] == "too_large"
    assert api(small_central, "GET", _blob_path(sha256_digest(data))).status == 404


def test_unknown_blob_is_404(central_module: CentralProcess) -> None:
    digest = sha256_digest(b"never uploaded")
    for path in (_blob_path(digest), _blob_path(digest) + "/info"):
        resp = api(central_module, "GET", path)
        assert resp.status == 404
        assert resp.error()["code"] == "not_found"
    assert api(central_module, "HEAD", _blob_path(digest)).status == 404


@pytest.mark.parametrize(
    "bad",
    ["sha256:xyz", "sha256:" + "A" * 64, "md5:" + "0" * 32, "sha256:" + "0" * 63],
)
def test_malformed_digest_is_400(central_module: CentralProcess, bad: str) -> None:
    resp = api(central_module, "PUT", _blob_path(bad), data=b"x")
    assert resp.status == 400
    assert resp.error()["code"] == "invalid"


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def loop_central(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CentralProcess]:
    """A central on each event loop: uvloop sends blobs in chunks, asyncio by sendfile(2)."""
    data_dir = tmp_path_factory.mktemp(request.param) / "central"
    with running_central(data_dir, env={EVENT_LOOP_ENV: request.param}) as central:
        assert f"({request.param} event loop)" in central.log_text()
        yield central


def test_a_blob_of_several_chunks_comes_back_whole_and_in_ranges(
    loop_central: CentralProcess,
) -> None:
    data = os.urandom(2 * COPY_CHUNK + 12_345)  # incompressible: stored about as large
    resp = _put(loop_central, data)
    assert resp.status == 201, resp.body
    record = resp.json()
    path = _blob_path(record["digest"])
    whole = api(loop_central, "GET", path)
    assert whole.status == 200
    assert sha256_digest(whole.body) == record["zdigest"]
    assert _decompress(whole.body) == data
    zsize = len(whole.body)
    assert zsize > 2 * COPY_CHUNK
    start, end = COPY_CHUNK - 7, 2 * COPY_CHUNK + 9  # across both chunk boundaries
    part = api(loop_central, "GET", path, headers={"Range": f"bytes={start}-{end}"})
    assert part.status == 206
    assert part.body == whole.body[start : end + 1]
    tail = api(loop_central, "GET", path, headers={"Range": f"bytes={zsize - 100}-"})
    assert tail.status == 206
    assert tail.body == whole.body[-100:]


def test_an_unknown_event_loop_stops_the_start_with_its_name(tmp_path: Path) -> None:
    central = init_central(tmp_path / "central")
    env = {**central.env, EVENT_LOOP_ENV: "gevent"}
    proc = run_skiff("central", "serve", "--data-dir", str(central.data_dir), env=env, check=False)
    assert proc.returncode != 0
    assert "SKIFF_EVENT_LOOP must be uvloop or asyncio, not 'gevent'" in proc.stderr
    assert "Traceback" not in proc.stderr
