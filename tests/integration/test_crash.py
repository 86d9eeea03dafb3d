"""Crash safety: SIGKILL the central and check that nothing committed is lost.

A blob half-uploaded when the process died must not appear as a blob, and its
temporary bytes must not linger; a version whose registration answered 201
must be there after the restart.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from shared.digest import sha256_digest
from tests.support import CentralProcess, all_changes, api, api_ok, register

BIG = 50 * 1024 * 1024
CHUNK = 1024 * 1024
SENT_BEFORE_KILL = 12 * CHUNK
LEFTOVER_LIMIT = 4 * CHUNK


def _start_slow_upload(central: CentralProcess, data: bytes, digest: str) -> socket.socket:
    """Send the headers and the first part of a blob upload, slowly; leave it open."""
    sock = socket.create_connection(("127.0.0.1", central.port), timeout=30)
    head = (
        f"PUT /api/v1/blobs/{digest} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{central.port}\r\n"
        f"Authorization: Bearer {central.token}\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    sock.sendall(head.encode())
    for offset in range(0, SENT_BEFORE_KILL, CHUNK):
        sock.sendall(data[offset : offset + CHUNK])
        time.sleep(0.02)
    return sock


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_kill_mid_upload_keeps_versions_and_drops_the_partial_blob(
    central: CentralProcess,
) -> None:
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        register(central, "crash", version)
    api_ok(central, "PUT", "/api/v1/models/crash/aliases/production", json={"version": "1.2.0"})
    versions = api_ok(central, "GET", "/api/v1/models/crash/versions")["items"]
    changes = all_changes(central)

    big = os.urandom(BIG)
    digest = sha256_digest(big)
    sock = _start_slow_upload(central, big, digest)
    try:
        time.sleep(0.5)  # let the server write what it has received so far
        central.kill()
    finally:
        sock.close()

    central.start()
    for version in versions:
        path = f"/api/v1/models/crash/versions/{version['version']}"
        assert api_ok(central, "GET", path) == version
    listed = [
        v["version"] for v in api_ok(central, "GET", "/api/v1/models/crash/versions")["items"]
    ]
    assert listed == ["1.2.0", "1.1.0", "1.0.0"]
    alias = api_ok(central, "GET", "/api/v1/models/crash/aliases/production")
    assert alias["version"] == "1.2.0"
    assert all_changes(central) == changes

    assert api(central, "GET", f"/api/v1/blobs/{digest}").status == 404
    assert api(central, "GET", f"/api/v1/blobs/{digest}/info").status == 404
    hexpart = digest.removeprefix("sha256:")
    named = [p for p in _files(central.data_dir) if hexpart in str(p)]
    assert not named, f"half-uploaded blob visible on disk: {named}"
    leftovers = [
        (p, p.stat().st_size)
        for p in _files(central.data_dir)
        if not p.name.startswith("registry.db") and p.stat().st_size > LEFTOVER_LIMIT
    ]
    assert not leftovers, f"temporary upload bytes left after restart: {leftovers}"

    resp = api(central, "PUT", f"/api/v1/blobs/{digest}", data=big, timeout=120)
    assert resp.status == 201, resp.body[:500]
    assert resp.json()["size"] == BIG
    version = api_ok(
        central,
        "POST",
        "/api/v1/models/crash/versions",
        201,
        json={"version": "2.0.0", "files": [{"path": "weights.bin", "digest": digest}]},
    )
    assert version["files"][0]["size"] == BIG


def test_kill_right_after_registration_keeps_the_version(central: CentralProcess) -> None:
    register(central, "durable", "1.0.0")
    record = register(central, "durable", "1.1.0", metadata={"training": {"metrics": {"a": 1}}})
    central.kill()  # the 201 has been received: the version is committed

    central.start()
    assert api_ok(central, "GET", "/api/v1/models/durable/versions/1.1.0") == record
    manifest = api_ok(central, "GET", "/api/v1/models/durable/versions/1.1.0/manifest")
    assert manifest["signed"]["version"] == "1.1.0"

    alias = api_ok(
        central, "PUT", "/api/v1/models/durable/aliases/production", json={"version": "1.1.0"}
    )
    last_seq = all_changes(central)[-1]["seq"]
    central.kill()

    central.start()
    assert api_ok(central, "GET", "/api/v1/models/durable/aliases/production") == alias
    assert all_changes(central)[-1]["seq"] == last_seq
    register(central, "durable", "1.2.0")
    after = all_changes(central, last_seq)
    assert after
    assert all(c["seq"] > last_seq for c in after)


def test_restart_after_sigterm_serves_the_same_registry(central: CentralProcess) -> None:
    record = register(central, "restart", "1.0.0")
    root = api_ok(central, "GET", "/api/v1/root")
    central.stop()
    central.start()
    assert api_ok(central, "GET", "/api/v1/models/restart/versions/1.0.0") == record
    assert api_ok(central, "GET", "/api/v1/root") == root
