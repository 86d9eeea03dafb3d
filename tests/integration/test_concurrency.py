"""Many clients at once: parallel uploads and registrations stay consistent."""

from __future__ import annotations

import asyncio
import io
import os
from typing import Any

import aiohttp

from shared.digest import sha256_digest
from tests.onnx_models import linear_model
from tests.support import CentralProcess, all_pages, put_blob, unique


async def _send(
    session: aiohttp.ClientSession, central: CentralProcess, method: str, path: str, **kw: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {central.token}"}
    async with session.request(method, central.url + path, headers=headers, **kw) as resp:
        body = await resp.read()
        return resp.status, body


async def test_parallel_uploads_of_one_blob(central_module: CentralProcess) -> None:
    data = os.urandom(2_000_000)
    digest = sha256_digest(data)
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *(
                _send(
                    session, central_module, "PUT", f"/api/v1/blobs/{digest}", data=io.BytesIO(data)
                )
                for _ in range(8)
            )
        )
        statuses = sorted(status for status, _ in results)
        assert set(statuses) <= {200, 201}, results
        assert 201 in statuses
        status, info = await _send(session, central_module, "GET", f"/api/v1/blobs/{digest}/info")
    assert status == 200
    assert b'"size":2000000' in info.replace(b" ", b"")


async def test_parallel_registrations_of_distinct_versions(
    central_module: CentralProcess,
) -> None:
    model = unique("parallel")
    digest = put_blob(central_module, linear_model())
    files = [{"path": "model.onnx", "digest": digest}]
    path = f"/api/v1/models/{model}/versions"
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *(
                _send(
                    session,
                    central_module,
                    "POST",
                    path,
                    json={"version": f"1.0.{i}", "files": files},
                )
                for i in range(20)
            )
        )
    assert [status for status, _ in results] == [201] * 20, results
    listed = all_pages(central_module, path)
    assert sorted(v["version"] for v in listed) == sorted(f"1.0.{i}" for i in range(20))


async def test_parallel_registrations_of_one_version_create_it_once(
    central_module: CentralProcess,
) -> None:
    model = unique("race")
    digest = put_blob(central_module, linear_model())
    body = {"version": "1.0.0", "files": [{"path": "model.onnx", "digest": digest}]}
    path = f"/api/v1/models/{model}/versions"
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *(_send(session, central_module, "POST", path, json=body) for _ in range(10))
        )
    statuses = sorted(status for status, _ in results)
    assert statuses == [201] + [409] * 9, results
    assert len(all_pages(central_module, path)) == 1


async def test_parallel_auto_versions_are_distinct(central_module: CentralProcess) -> None:
    model = unique("autorace")
    digest = put_blob(central_module, linear_model())
    body = {"files": [{"path": "model.onnx", "digest": digest}]}
    path = f"/api/v1/models/{model}/versions"
    async with aiohttp.ClientSession() as session:
        await _send(session, central_module, "POST", path, json={"version": "1.0.0", **body})
        results = await asyncio.gather(
            *(_send(session, central_module, "POST", path, json=body) for _ in range(10))
        )
    statuses = [status for status, _ in results]
    assert all(status in (201, 409) for status in statuses), results
    listed = [v["version"] for v in all_pages(central_module, path)]
    assert len(listed) == len(set(listed)) == 1 + statuses.count(201)
