"""The edge cache: catalogue round trips, model directories, eviction and reconcile."""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.cache import Cache
from shared.codec import compress
from shared.digest import sha256_digest
from shared.errors import DigestMismatchError, InvalidInputError, LengthError, NotFoundError
from shared.manifest import FileEntry, Manifest, manifest_digest

BUDGET = 1 << 30


def blob(size: int, seed: int, path: str = "model.onnx") -> tuple[FileEntry, bytes]:
    """A file entry and the raw bytes it names."""
    raw = random.Random(seed).randbytes(size)
    packed = compress(raw)
    return FileEntry(path, sha256_digest(raw), size, sha256_digest(packed), len(packed)), raw


def manifest_for(
    model: str, version: str, files: list[FileEntry]
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A manifest digest, envelope (unsigned: the cache stores verified input) and metadata."""
    metadata = {"training": {"metrics": {"auc": 0.92}}, "model": model, "version": version}
    signed = Manifest(
        model=model,
        version=version,
        format="onnx",
        files=tuple(files),
        metadata_digest=sha256_digest(b"metadata"),
        parent=None,
        branch="main",
        created_at="2026-11-26T10:00:00Z",
    ).to_dict()
    return manifest_digest(signed), {"signed": signed, "signatures": []}, metadata


async def add_blob(cache: Cache, entry: FileEntry, raw: bytes) -> None:
    staged = cache.staging_path(entry.digest)
    staged.write_bytes(raw)
    await cache.add_blob_from(staged, entry.digest, entry.size)


async def add_version(
    cache: Cache, model: str, version: str, blobs: list[tuple[FileEntry, bytes]]
) -> str:
    digest, envelope, metadata = manifest_for(model, version, [e for e, _ in blobs])
    await cache.put_manifest(digest, model, version, envelope, metadata)
    for entry, raw in blobs:
        await add_blob(cache, entry, raw)
    return digest


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[Cache]:
    c = await Cache.open(tmp_path / "data", budget_bytes=BUDGET)
    try:
        yield c
    finally:
        await c.close()


async def test_round_trip_of_every_table_survives_reopen(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cache = await Cache.open(data, budget_bytes=BUDGET)
    try:
        assert await cache.roots() == []
        assert await cache.fleet_state() is None
        assert await cache.cursor() == 0
        assert await cache.last_contact() is None
        root1 = {"signed": {"_type": "root", "version": 1}, "signatures": []}
        root2 = {"signed": {"_type": "root", "version": 2}, "signatures": []}
        await cache.add_root(2, root2)
        await cache.add_root(1, root1)
        state = {"signed": {"_type": "fleet_state", "serial": 7}, "signatures": []}
        await cache.set_fleet_state(state)
        await cache.set_cursor(123)
        await cache.set_last_contact("2026-11-26T10:00:00Z")
        entry, raw = blob(5000, 1)
        digest = await add_version(cache, "demo-mul", "1.1.0", [(entry, raw)])
        await cache.set_slot("demo-mul", digest, None)
        await cache.mark_bad("demo-mul", "1.2.0", "sha256:" + "b" * 64, "does not load")
    finally:
        await cache.close()

    cache = await Cache.open(data, budget_bytes=BUDGET)
    try:
        assert await cache.roots() == [root1, root2]
        assert await cache.fleet_state() == state
        assert await cache.cursor() == 123
        assert await cache.last_contact() == "2026-11-26T10:00:00Z"
        _, envelope, metadata = manifest_for("demo-mul", "1.1.0", [entry])
        assert await cache.manifest(digest) == (envelope, metadata)
        assert await cache.manifest("sha256:" + "0" * 64) is None
        assert await cache.has_blob(entry.digest)
        assert not await cache.has_blob("sha256:" + "0" * 64)
        assert cache.blob_path(entry.digest).read_bytes() == raw
        hexd = entry.digest.removeprefix("sha256:")
        assert cache.blob_path(entry.digest) == data / "blobs" / "sha256" / hexd[:2] / hexd
        assert cache.partial_path(entry.digest) == data / "partial" / f"{hexd}.zst.part"
        assert await cache.usage() == 5000
        assert await cache.slots() == {"demo-mul": (digest, None)}
        (bad,) = await cache.bad_versions()
        assert bad["model"] == "demo-mul" and bad["version"] == "1.2.0"
        assert bad["reason"] == "does not load" and bad["at"].endswith("Z")
        assert await cache.is_bad("sha256:" + "b" * 64)
        assert not await cache.is_bad(digest)
        # later writes replace earlier ones
        await cache.set_slot("demo-mul", "sha256:" + "c" * 64, digest)
        assert await cache.slots() == {"demo-mul": ("sha256:" + "c" * 64, digest)}
        await cache.mark_bad("demo-mul", "1.2.0", "sha256:" + "b" * 64, "health check failed")
        assert [b["reason"] for b in await cache.bad_versions()] == ["health check failed"]
    finally:
        await cache.close()

    with sqlite3.connect(data / "cache.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"roots", "trusted", "manifests", "blobs", "slots", "bad_versions"} <= tables
        assert {"telemetry_outbox", "schema_migrations", "cache_settings", "blob_keys"} <= tables
        db.execute(
            "INSERT INTO telemetry_outbox (batch_id, created_at, body) VALUES ('b1', 't', '{}')"
        )
        with pytest.raises(sqlite3.IntegrityError):
            db.execute(
                "INSERT INTO telemetry_outbox (batch_id, created_at, body) VALUES ('b1', 't', '{}')"
            )
        assert db.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == 2


async def test_put_manifest_checks_the_digest(cache: Cache) -> None:
    entry, _ = blob(10, 1)
    digest, envelope, metadata = manifest_for("m", "1.0.0", [entry])
    with pytest.raises(DigestMismatchError):
        await cache.put_manifest("sha256:" + "0" * 64, "m", "1.0.0", envelope, metadata)
    await cache.put_manifest(digest, "m", "1.0.0", envelope, metadata)
    await cache.put_manifest(digest, "m", "1.0.0", envelope, metadata)  # idempotent
    assert await cache.manifest(digest) == (envelope, metadata)


async def test_add_blob_from_is_idempotent_and_checks_the_size(cache: Cache) -> None:
    entry, raw = blob(2000, 2)
    await add_blob(cache, entry, raw)
    await add_blob(cache, entry, raw)
    assert await cache.usage() == 2000
    assert cache.blob_path(entry.digest).read_bytes() == raw
    assert list((cache.data_dir / "blobs" / "tmp").iterdir()) == []
    staged = cache.staging_path(entry.digest)
    staged.write_bytes(raw[:-1])
    with pytest.raises(LengthError):
        await cache.add_blob_from(staged, entry.digest, entry.size)


async def test_materialise_hard_links_the_blobs(cache: Cache) -> None:
    a, raw_a = blob(3000, 1, "model.onnx")
    b, raw_b = blob(100, 2, "tokenizer/vocab.txt")
    digest = await add_version(cache, "m", "1.0.0", [(a, raw_a), (b, raw_b)])
    model_dir = await cache.materialise(digest, [a, b])
    assert model_dir == cache.data_dir / "models" / digest.removeprefix("sha256:")
    assert (model_dir / "model.onnx").read_bytes() == raw_a
    assert (model_dir / "tokenizer" / "vocab.txt").read_bytes() == raw_b
    assert os.path.samefile(model_dir / "model.onnx", cache.blob_path(a.digest))
    assert os.path.samefile(model_dir / "tokenizer" / "vocab.txt", cache.blob_path(b.digest))
    assert await cache.materialise(digest, [a, b]) == model_dir  # idempotent
    assert [p.name for p in (cache.data_dir / "models").iterdir()] == [model_dir.name]


async def test_materialise_refuses_missing_blobs_and_bad_paths(cache: Cache) -> None:
    a, raw_a = blob(100, 1, "model.onnx")
    missing, _ = blob(100, 2, "other.bin")
    digest = await add_version(cache, "m", "1.0.0", [(a, raw_a)])
    with pytest.raises(NotFoundError):
        await cache.materialise(digest, [a, missing])
    clash = FileEntry("model.onnx/inner", a.digest, a.size, a.zdigest, a.zsize)
    with pytest.raises(InvalidInputError):
        await cache.materialise(digest, [a, clash])
    escape = FileEntry("x", a.digest, a.size, a.zdigest, a.zsize)
    object.__setattr__(escape, "path", "../../escaped")
    with pytest.raises(InvalidInputError):
        await cache.materialise(digest, [escape])
    assert list((cache.data_dir / "models").iterdir()) == []
    assert not (cache.data_dir / "escaped").exists()


async def test_evict_honours_protection_lru_order_and_budget(tmp_path: Path) -> None:
    cache = await Cache.open(tmp_path / "data", budget_bytes=2500)
    try:
        shared_blob = blob(500, 99, "common.bin")
        versions = {}
        for i in range(4):
            files = [blob(1000, i), shared_blob]
            versions[i] = (await add_version(cache, "m", f"1.{i}.0", files), files)
            await cache.materialise(versions[i][0], [e for e, _ in files])
        assert await cache.usage() == 4500
        # LRU order, oldest first: 2, 0, 3, 1 (version 1 is protected)
        for i in (2, 0, 3, 1):
            await cache.touch(versions[i][0])
        protected = {versions[1][0]}
        evicted = await cache.evict(protected)
        blob_of = {i: versions[i][1][0][0].digest for i in versions}
        assert evicted == [blob_of[2], blob_of[0]]
        assert await cache.usage() == 2500
        assert await cache.has_blob(blob_of[1]) and await cache.has_blob(blob_of[3])
        assert await cache.has_blob(shared_blob[0].digest)
        assert not cache.blob_path(blob_of[2]).exists()
        assert await cache.manifest(versions[2][0]) is None
        assert await cache.manifest(versions[3][0]) is not None
        model_dirs = {p.name for p in (cache.data_dir / "models").iterdir()}
        assert model_dirs == {versions[1][0].removeprefix("sha256:")}
        # everything left is protected: nothing more goes, even over budget
        assert await cache.evict(protected | {versions[3][0]}) == []
        cache.budget_bytes = 0
        assert await cache.evict(protected) == [blob_of[3]]
        assert await cache.usage() == 1500
        assert await cache.has_blob(shared_blob[0].digest)
        assert (await cache.materialise(versions[1][0], [e for e, _ in versions[1][1]])).is_dir()
    finally:
        await cache.close()


async def test_evict_under_budget_evicts_nothing(cache: Cache) -> None:
    entry, raw = blob(100, 1)
    await add_version(cache, "m", "1.0.0", [(entry, raw)])
    assert await cache.evict(set()) == []
    assert await cache.has_blob(entry.digest)


async def test_lru_order_survives_reopen(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cache = await Cache.open(data, budget_bytes=BUDGET)
    try:
        old = await add_version(cache, "m", "1.0.0", [blob(1000, 1)])
        new = await add_version(cache, "m", "1.1.0", [blob(1000, 2)])
    finally:
        await cache.close()
    cache = await Cache.open(data, budget_bytes=1000)
    try:
        await cache.touch(old)  # after reopen, the clock continues: old is now newest
        evicted = await cache.evict(set())
        assert evicted == [blob(1000, 2)[0].digest]
        assert await cache.manifest(new) is None and await cache.manifest(old) is not None
    finally:
        await cache.close()


async def test_reconcile_repairs_files_and_rows(cache: Cache) -> None:
    good, raw_good = blob(4000, 1, "good.bin")
    corrupt, raw_corrupt = blob(4000, 2, "corrupt.bin")
    gone, raw_gone = blob(4000, 3, "gone.bin")
    keep = await add_version(cache, "m", "1.0.0", [(good, raw_good)])
    broken = await add_version(cache, "m", "2.0.0", [(corrupt, raw_corrupt), (gone, raw_gone)])
    keep_dir = await cache.materialise(keep, [good])
    broken_dir = await cache.materialise(broken, [corrupt, gone])
    data = cache.data_dir

    # flip one byte of a blob file, and delete another
    path = cache.blob_path(corrupt.digest)
    path.chmod(0o644)
    flipped = bytearray(path.read_bytes())
    flipped[1234] ^= 0x01
    path.write_bytes(bytes(flipped))
    cache.blob_path(gone.digest).unlink()
    # orphans: a blob file with no row, junk in the store, a leftover staged file,
    # a model directory with no manifest, a half-built model directory
    orphan_entry, orphan_raw = blob(100, 4)
    orphan = cache.blob_path(orphan_entry.digest)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(orphan_raw)
    (data / "blobs" / "sha256" / "junk").write_text("x")
    cache.staging_path(good.digest).write_bytes(b"staged")
    stray_model = data / "models" / ("e" * 64)
    stray_model.mkdir()
    (stray_model / "model.onnx").write_bytes(b"x")
    (data / "models" / f".tmp-{'f' * 64}-abc").mkdir()
    # partial downloads are kept, even old ones
    part = cache.partial_path(orphan_entry.digest)
    part.write_bytes(b"partial bytes")
    os.utime(part, (1_000_000, 1_000_000))
    output, mark = cache.resume_paths(orphan_entry.digest)
    output.write_bytes(b"output so far")
    mark.write_text("{}")
    half_written_mark = mark.with_name(mark.name + ".tmp")
    half_written_mark.write_text("{")
    # ...but not those of a blob stored since
    stored_part = cache.partial_path(good.digest)
    stored_part.write_bytes(b"old partial bytes")

    report = await cache.reconcile()

    assert report.missing_or_corrupt == sorted([corrupt.digest, gone.digest])
    assert not await cache.has_blob(corrupt.digest)
    assert not await cache.has_blob(gone.digest)
    assert not path.exists()
    assert await cache.has_blob(good.digest)
    assert cache.blob_path(good.digest).read_bytes() == raw_good
    assert await cache.usage() == 4000
    assert not orphan.exists()
    assert not (data / "blobs" / "sha256" / "junk").exists()
    assert list((data / "blobs" / "tmp").iterdir()) == []
    assert not stray_model.exists()
    assert [p.name for p in (data / "models").iterdir()] == [keep_dir.name]
    assert not broken_dir.exists()
    assert report.model_dirs_removed == sorted([broken, "sha256:" + "e" * 64])
    assert part.read_bytes() == b"partial bytes"
    assert output.read_bytes() == b"output so far" and mark.exists()
    assert not half_written_mark.exists()
    assert not stored_part.exists()
    assert report.partials_kept == [orphan_entry.digest]
    removed = set(report.orphans_removed)
    assert str(orphan.relative_to(data)) in removed
    assert "blobs/sha256/junk" in removed
    # manifests stay: the daemon fetches the blobs again
    assert await cache.manifest(broken) is not None
    # a second pass finds nothing to do
    again = await cache.reconcile()
    assert again.missing_or_corrupt == [] and again.orphans_removed == []
    assert again.model_dirs_removed == []


async def test_reconcile_detects_a_model_dir_that_was_tampered_with(cache: Cache) -> None:
    entry, raw = blob(1000, 1)
    digest = await add_version(cache, "m", "1.0.0", [(entry, raw)])
    model_dir = await cache.materialise(digest, [entry])
    (model_dir / "model.onnx").unlink()
    (model_dir / "model.onnx").write_bytes(b"y" * 1000)
    report = await cache.reconcile()
    assert report.model_dirs_removed == [digest]
    assert report.missing_or_corrupt == []
    assert (await cache.materialise(digest, [entry]) / "model.onnx").read_bytes() == raw


async def test_reconcile_removes_a_model_dir_with_extra_files(cache: Cache) -> None:
    a, raw_a = blob(100, 1, "deep/er/model.onnx")
    b, raw_b = blob(100, 2, "deep/vocab.txt")
    digest = await add_version(cache, "m", "1.0.0", [(a, raw_a), (b, raw_b)])
    model_dir = await cache.materialise(digest, [a, b])
    assert (await cache.reconcile()).model_dirs_removed == []
    (model_dir / "deep" / "planted.py").write_text("import os")
    assert (await cache.reconcile()).model_dirs_removed == [digest]
    assert not model_dir.exists()
