"""The edge cache encrypted at rest with a device key (docs/encryption.md, "Edge cache")."""

from __future__ import annotations

import io
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent import cli
from edge_agent.cache import Cache
from edge_agent.cache_key import generate_cache_key_file, read_cache_key
from edge_agent.downloads import import_blob
from edge_agent.slots import LoadError, ModelSource, SlotManager
from shared.codec import compress
from shared.digest import sha256_digest
from shared.errors import ConflictError, DecryptionError, InvalidInputError, SkiffError
from shared.manifest import FileEntry
from shared.segments import SegmentWriter, is_encrypted, new_key, open_plain
from tests.edge.test_cache import BUDGET, add_version
from tests.onnx_models import IR_VERSION, OPSET, linear_model

MARKER = b"PLAINTEXT-MARKER-7f3a"


def marked_blob(size: int, path: str = "model.onnx") -> tuple[FileEntry, bytes]:
    """A blob whose raw bytes repeat a marker the stored files must never contain."""
    raw = (MARKER * (size // len(MARKER) + 1))[:size]
    packed = compress(raw)
    return FileEntry(path, sha256_digest(raw), size, sha256_digest(packed), len(packed)), raw


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def leaks(root: Path, needle: bytes) -> list[Path]:
    return [p for p in files_under(root) if p.name != "cache.db" and needle in p.read_bytes()]


async def store(cache: Cache, entry: FileEntry, raw: bytes) -> None:
    """Store a blob the way the agent does: verified and encrypted on the way in."""
    packed = compress(raw)
    await import_blob(lambda: io.BytesIO(packed), cache, entry)


@pytest.fixture
def key() -> bytes:
    return new_key()


@pytest.fixture
async def cache(tmp_path: Path, key: bytes) -> AsyncIterator[Cache]:
    c = await Cache.open(tmp_path / "data", budget_bytes=BUDGET, device_key=key)
    try:
        yield c
    finally:
        await c.close()


async def test_stored_blob_holds_no_plaintext_and_round_trips(cache: Cache) -> None:
    entry, raw = marked_blob(3 << 20)  # several segments
    await store(cache, entry, raw)
    assert await cache.has_blob(entry.digest)
    path = cache.blob_path(entry.digest)
    assert is_encrypted(path.read_bytes()[:5])
    assert leaks(cache.data_dir, MARKER) == []
    assert await cache.read_blob(entry.digest) == raw
    assert await cache.usage() == entry.size
    report = await cache.reconcile()
    assert report.missing_or_corrupt == [] and report.orphans_removed == []


async def test_staged_plaintext_is_encrypted_into_place_and_deleted(cache: Cache) -> None:
    entry, raw = marked_blob(5000)
    staged = cache.staging_path(entry.digest)
    staged.write_bytes(raw)
    await cache.add_blob_from(staged, entry.digest, entry.size)
    assert not staged.exists()
    assert leaks(cache.data_dir, MARKER) == []
    assert await cache.read_blob(entry.digest) == raw


async def test_flipped_byte_is_detected_by_reconcile(cache: Cache) -> None:
    entry, raw = marked_blob(4000)
    await store(cache, entry, raw)
    path = cache.blob_path(entry.digest)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    report = await cache.reconcile()
    assert report.missing_or_corrupt == [entry.digest]
    assert not await cache.has_blob(entry.digest)
    assert not path.exists()


async def test_blob_failing_decryption_at_load_is_dropped(cache: Cache) -> None:
    entry, raw = marked_blob(4000)
    await store(cache, entry, raw)
    path = cache.blob_path(entry.digest)
    data = bytearray(path.read_bytes())
    data[60] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(DecryptionError, match="failed authentication"):
        await cache.read_blob(entry.digest)
    assert not await cache.has_blob(entry.digest)
    assert not path.exists()


async def test_no_model_directories_with_encryption(cache: Cache) -> None:
    entry, raw = marked_blob(2000)
    digest = await add_version(cache, "m", "1.0.0", [])
    await store(cache, entry, raw)
    with pytest.raises(RuntimeError):
        await cache.materialise(digest, [entry])
    assert list((cache.data_dir / "models").iterdir()) == []


async def test_wrong_key_or_no_key_refuses_to_open(tmp_path: Path, key: bytes) -> None:
    data = tmp_path / "data"
    cache = await Cache.open(data, budget_bytes=BUDGET, device_key=key)
    await cache.close()
    with pytest.raises(SkiffError, match="cache_key_file holds key"):
        await Cache.open(data, budget_bytes=BUDGET, device_key=new_key())
    with pytest.raises(SkiffError, match="set cache_key_file"):
        await Cache.open(data, budget_bytes=BUDGET)


async def test_plain_cache_is_encrypted_in_place_at_open(tmp_path: Path, key: bytes) -> None:
    data = tmp_path / "data"
    entries = [marked_blob(3000, "model.onnx"), marked_blob(70_000, "labels.txt")]
    plain = await Cache.open(data, budget_bytes=BUDGET)
    digest = await add_version(plain, "m", "1.0.0", entries)
    await plain.materialise(digest, [e for e, _ in entries])
    await plain.close()
    assert leaks(data, MARKER)

    cache = await Cache.open(data, budget_bytes=BUDGET, device_key=key)
    try:
        assert leaks(data, MARKER) == []
        assert list((data / "models").iterdir()) == []
        for entry, raw in entries:
            assert await cache.read_blob(entry.digest) == raw
        assert (await cache.reconcile()).missing_or_corrupt == []
    finally:
        await cache.close()

    # a crash between storing the new data key and the rename leaves a file in the
    # clear: the next start encrypts it again
    entry, raw = entries[0]
    path = data / "blobs" / "sha256" / entry.digest[7:9] / entry.digest[7:]
    os.chmod(path, 0o644)
    path.write_bytes(raw)
    cache = await Cache.open(data, budget_bytes=BUDGET, device_key=key)
    try:
        assert leaks(data, MARKER) == []
        assert await cache.read_blob(entry.digest) == raw
        assert (await cache.reconcile()).missing_or_corrupt == []
    finally:
        await cache.close()


async def test_eviction_drops_data_keys(cache: Cache) -> None:
    cache.budget_bytes = 0
    entry, raw = marked_blob(1000)
    await store(cache, entry, raw)
    assert await cache.evict(set()) == [entry.digest]
    with sqlite3.connect(cache.data_dir / "cache.db") as db:
        assert db.execute("SELECT count(*) FROM blob_keys").fetchone() == (0,)


async def test_model_loads_from_decrypted_bytes(cache: Cache) -> None:
    model = linear_model(2.0)
    entry = FileEntry(
        "model.onnx",
        sha256_digest(model),
        len(model),
        sha256_digest(compress(model)),
        len(compress(model)),
    )
    await store(cache, entry, model)
    slots = SlotManager()
    try:
        source = ModelSource(data=await cache.read_blob(entry.digest))
        loaded = await slots.install("lin", "1.0.0", "sha256:x", source)
        assert loaded.version == "1.0.0"
    finally:
        await slots.close()


async def test_external_data_model_is_refused_naming_the_setting(tmp_path: Path) -> None:
    weights = np.ones((3, 1), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "external",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(weights, name="W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.save_model(
        model,
        str(tmp_path / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    slots = SlotManager()
    try:
        source = ModelSource(data=(tmp_path / "model.onnx").read_bytes(), other_files=1)
        with pytest.raises(LoadError, match="cache_key_file"):
            await slots.install("ext", "1.0.0", "sha256:e", source)
    finally:
        await slots.close()


@pytest.mark.parametrize("size", [0, 1, 1024, 1025, 4096, 5000])
def test_segment_writer_matches_the_reader(size: int) -> None:
    raw = os.urandom(size)
    digest, data_key = sha256_digest(raw), new_key()
    out = io.BytesIO()
    writer = SegmentWriter(out, key=data_key, digest=digest, segment_size=1024)
    for i in range(0, size, 700):
        writer.write(raw[i : i + 700])
    assert writer.finish() == size
    with open_plain(io.BytesIO(out.getvalue()), key=data_key, digest=digest) as f:
        assert f.read() == raw


def test_key_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "edge.key"
    key = generate_cache_key_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert read_cache_key(path) == key
    with pytest.raises(ConflictError):
        generate_cache_key_file(path)
    os.chmod(path, 0o640)
    with pytest.raises(InvalidInputError, match="chmod 600"):
        read_cache_key(path)
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_cache_key(tmp_path / "absent.key")


def test_gen_key_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "device.key"
    assert cli.main(["gen-key", "-o", str(path)]) == 0
    assert "cache_key_file" in capsys.readouterr().out
    assert len(read_cache_key(path)) == 32
    assert cli.main(["gen-key", "-o", str(path)]) == 1
