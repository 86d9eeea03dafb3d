"""The SQLite store's write path: inline and offloaded transactions, another writer's lock,
cancellation, durability and WAL checkpoints, on a real database file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from central.domain import Version
from central.services.sync import named_version, state_versions
from central.stores import sqlite as sqlite_module
from central.stores.sqlite import SqliteStore
from shared.errors import ConflictError, NotFoundError


async def _add_change(store: SqliteStore, kind: str, *, offload: bool = False) -> None:
    async with store.transaction(offload=offload) as tx:
        await tx.append_change(kind)


async def _kinds(store: SqliteStore) -> list[str]:
    return [c.kind for c in await store.list_changes(0, 1000)]


async def test_inline_and_offloaded_transactions_commit_and_roll_back(store: SqliteStore) -> None:
    await _add_change(store, "a")
    await _add_change(store, "b", offload=True)
    for offload in (False, True):
        with pytest.raises(RuntimeError, match="boom"):
            async with store.transaction(offload=offload) as tx:
                await tx.append_change("never")
                raise RuntimeError("boom")
    assert await _kinds(store) == ["a", "b"]


async def test_a_constraint_failure_is_a_conflict_and_keeps_nothing(store: SqliteStore) -> None:
    with pytest.raises(ConflictError):
        async with store.transaction() as tx:
            await tx.append_change("first")
            await tx.insert_root(1, {"signed": {}}, "2026-01-01T00:00:00Z")
            await tx.insert_root(1, {"signed": {}}, "2026-01-01T00:00:00Z")
    assert await _kinds(store) == []
    assert await store.get_root() is None


async def test_a_transaction_waits_for_another_process_without_blocking_the_loop(
    store: SqliteStore,
) -> None:
    other = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    release_after = 0.4
    threading.Timer(release_after, lambda: other.execute("COMMIT")).start()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    start = time.monotonic()
    try:
        await _add_change(store, "after-the-other-writer")
    finally:
        task.cancel()
        other.close()
    waited = time.monotonic() - start
    assert waited >= release_after * 0.9
    assert ticks >= 10  # the loop ran other work while the write waited
    assert await _kinds(store) == ["after-the-other-writer"]


async def test_a_lock_held_past_the_busy_timeout_fails_the_write(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "BUSY_TIMEOUT_MS", 200)
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await _add_change(store, "never")
    finally:
        other.execute("ROLLBACK")
        other.close()
    await _add_change(store, "later")
    assert await _kinds(store) == ["later"]


async def test_a_cancelled_offloaded_transaction_leaves_the_writer_usable(
    store: SqliteStore,
) -> None:
    entered = asyncio.Event()

    async def slow() -> None:
        async with store.transaction(offload=True) as tx:
            await tx.append_change("cancelled")
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _add_change(store, "next")
    assert await _kinds(store) == ["next"]


async def test_full_durability_commits(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "full.db", durability="full")
    await s.open()
    try:
        await _add_change(s, "durable")
        await _add_change(s, "offloaded", offload=True)
    finally:
        await s.close()
    reopened = SqliteStore(tmp_path / "full.db")
    await reopened.open()
    try:
        assert await _kinds(reopened) == ["durable", "offloaded"]
    finally:
        await reopened.close()


async def test_checkpoints_keep_the_wal_from_growing(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_COMMITS", 5)
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_SECONDS", 3600.0)
    payload = {"pad": "x" * 20_000}  # a few pages a commit
    commits = 400  # the WAL would hold ~10 MB without checkpoints; a slow fsync may hold
    # one checkpoint back for a while, so the bound below leaves room for that
    for i in range(commits):
        async with store.transaction() as tx:
            await tx.append_change(f"c{i}", data=payload)
        await asyncio.sleep(0.005)  # the checkpoint runs on its own thread meanwhile
    wal = store.path.with_name(store.path.name + "-wal").stat().st_size
    written = commits * len(payload["pad"])
    # without checkpoints the WAL would hold every page written (the writer never
    # checkpoints inside a commit); with them it is rewound and reused
    assert wal < written / 4, f"WAL {wal} bytes after {written} bytes written"
    assert len(await _kinds(store)) == commits


async def test_the_wal_is_rewound_under_a_continuous_writer(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits back to back (a busy server) never leave a checkpoint a quiet moment to
    finish in; the WAL must be rewound all the same instead of growing with every commit."""
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_COMMITS", 20)
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_SECONDS", 3600.0)
    monkeypatch.setattr(sqlite_module, "WAL_REWIND_BYTES", 1_000_000)
    payload = {"pad": "x" * 20_000}
    commits = 1600  # never rewound, the WAL would reach about 60 MB
    for i in range(commits):
        async with store.transaction() as tx:
            await tx.append_change(f"c{i}", data=payload)
        await asyncio.sleep(0)  # one turn of the loop, as between two requests
    wal = store.path.with_name(store.path.name + "-wal").stat().st_size
    # Rewound from 1 MB on, the file holds that and what came in while the rewinding
    # checkpoint ran (its fsyncs take milliseconds, hundreds of these quick commits).
    assert wal < 25_000_000, f"WAL {wal} bytes after {commits} commits of 20 kB"
    row = await store._one("SELECT count(*) FROM changes")
    assert row is not None and row[0] == commits


def _add_version_rows(path: Path, version_id: int) -> None:
    """A version, and the audit row of its registration, as written directly."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(
            "INSERT OR IGNORE INTO models (id, name, owner, created_at, updated_at) "
            "VALUES (1, 'm', 'admin', 't', 't')"
        )
        db.execute(
            "INSERT INTO versions (id, model_id, version, sort_key, branch, format, stage,"
            " description, owner, tags, metadata, files, manifest, manifest_digest,"
            " metadata_digest, created_at) VALUES (?, 1, ?, ?, 'main', 'onnx', 'development',"
            " ?, 'admin', ?, ?, ?, '{}', 'sha256:x', 'sha256:y', 't')",
            (
                version_id,
                f"1.0.{version_id}",
                f"{version_id:05d}",
                f"version number {version_id}",
                json.dumps({"team": f"t{version_id}"}),
                json.dumps({"training": {"metrics": {"auc": version_id / 10}}}),
                json.dumps([{"path": "m.onnx", "digest": f"sha256:{version_id:064x}"}]),
            ),
        )
        db.execute(
            "INSERT INTO audit (id, at, actor, role, action, target, outcome)"
            " VALUES (?, ?, ?, 'admin', 'version.register', ?, 'ok')",
            (
                version_id,
                f"2026-01-01T00:00:0{version_id}Z",
                f"user{version_id}",
                f"m@{version_id}",
            ),
        )
    finally:
        db.close()


async def _search_rows(store: SqliteStore) -> dict[str, list[tuple[object, ...]]]:
    queries = {
        "tags": "SELECT version_id, key, value FROM version_tags ORDER BY 1",
        "metrics": "SELECT version_id, value FROM version_metrics ORDER BY 1",
        "words": "SELECT rowid FROM version_text WHERE version_text MATCH 'number' ORDER BY 1",
        "facets": "SELECT version_id, field, value FROM version_facets ORDER BY 1, 2",
        "audit": "SELECT audit_id, field, value FROM audit_facets ORDER BY 1, 2",
        "blobs": "SELECT version_id, digest FROM blob_versions ORDER BY 1",
    }
    return {k: [tuple(r) for r in await store._all(sql)] for k, sql in queries.items()}


def _expected_rows(
    ids: list[int], audit_ids: list[int] | None = None
) -> dict[str, list[tuple[object, ...]]]:
    facets = {"branch": "main", "format": "onnx", "owner": "admin"}
    audit = [
        [
            (i, "action", "version.register"),
            (i, "actor", f"user{i}"),
            (i, "at", f"2026-01-01T00:00:0{i}Z"),
        ]
        for i in (ids if audit_ids is None else audit_ids)
    ]
    return {
        "tags": [(i, "team", f"t{i}") for i in ids],
        "metrics": [(i, i / 10) for i in ids],
        "words": [(i,) for i in ids],
        "facets": [(i, f, v) for i in ids for f, v in sorted(facets.items())],
        "audit": [row for rows in audit for row in rows],
        "blobs": [(i, f"sha256:{i:064x}") for i in ids],
    }


async def test_the_search_index_is_built_from_the_versions_in_its_own_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    for version_id in (1, 2, 3):
        _add_version_rows(path, version_id)
    store = SqliteStore(path)
    await store.open()
    try:
        assert await store.search.index(2) == (2, 2, 2, 2)
        assert await store.search.index(500) == (1, 3, 1, 3)
        assert await store.search.index(500) == (0, 3, 0, 3)  # nothing left
        assert await _search_rows(store) == _expected_rows([1, 2, 3])
    finally:
        await store.close()
    registry = sqlite3.connect(path)
    try:
        tables = {r[0] for r in registry.execute("SELECT name FROM sqlite_schema")}
    finally:
        registry.close()
    assert not tables & {"version_tags", "version_metrics", "version_text", "version_facets"}


async def test_indexing_does_not_take_the_registry_write_lock(store: SqliteStore) -> None:
    _add_version_rows(store.path, 1)
    async with store.transaction():  # a registration holding the registry's lock
        assert await asyncio.wait_for(store.search.index(500), 5) == (1, 1, 1, 1)


@pytest.mark.parametrize("damage", ["deleted", "garbage", "ahead", "audit_ahead"])
async def test_a_lost_damaged_or_diverged_search_index_is_rebuilt(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "registry.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    for version_id in (1, 2):
        _add_version_rows(path, version_id)
    store = SqliteStore(path)
    await store.open()
    await store.search.index(500)
    await store.close()
    index = store.search.path
    if damage == "deleted":
        index.unlink()
    elif damage == "garbage":
        index.write_bytes(b"not a database" * 512)
    else:  # the registry lost its last row (a restored backup): the index is ahead
        db = sqlite3.connect(path, isolation_level=None)
        db.execute(f"DELETE FROM {'versions' if damage == 'ahead' else 'audit'} WHERE id = 2")
        db.close()
    store = SqliteStore(path)
    await store.open()
    try:
        indexed = [1] if damage == "ahead" else [1, 2]
        audited = [1] if damage == "audit_ahead" else [1, 2]
        done = await store.search.index(500)
        assert done == (len(indexed), indexed[-1], len(audited), audited[-1])
        assert await _search_rows(store) == _expected_rows(indexed, audited)
    finally:
        await store.close()


async def test_a_search_index_locked_by_another_process_is_not_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "registry.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    _add_version_rows(path, 1)
    store = SqliteStore(path)
    await store.open()
    await store.search.index(500)
    await store.close()
    monkeypatch.setattr(sqlite_module, "BUSY_TIMEOUT_MS", 100)
    other = sqlite3.connect(store.search.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another replica's indexer, for longer than the timeout
    try:
        store = SqliteStore(path)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await store.open()
        await store.close()
    finally:
        other.execute("ROLLBACK")
        other.close()
    store = SqliteStore(path)
    await store.open()
    try:
        assert await store.search.index(500) == (0, 1, 0, 1)  # the index it built is still there
    finally:
        await store.close()


def _version(
    number: str, created_at: str, *, model: str = "m", files: list[dict[str, Any]] | None = None
) -> Version:
    return Version(
        id=0,
        model=model,
        version=number,
        branch="main",
        parent=None,
        format="other",
        stage="development",
        description="",
        owner="admin",
        tags={},
        metadata={},
        signature=None,
        files=files or [],
        manifest={},
        manifest_digest=f"sha256:{model}-{number}",
        metadata_digest="sha256:m",
        created_at=created_at,
    )


async def test_a_model_was_last_updated_by_its_row_or_its_newest_version(
    store: SqliteStore,
) -> None:
    async with store.transaction() as tx:
        model_id = await tx.insert_model("m", "", "admin", {}, "2026-01-01T00:00:00Z")
    model = await store.get_model("m")
    assert model is not None
    assert (model.updated_at, model.latest_version, model.version_count) == (
        "2026-01-01T00:00:00Z",
        None,
        0,
    )
    for number, at in (("2.0.0", "2026-02-01T00:00:00Z"), ("1.5.0", "2026-03-01T00:00:00Z")):
        async with store.transaction() as tx:
            await tx.insert_version(model_id, _version(number, at), number.zfill(8))
    model = await store.get_model("m")
    assert model is not None  # the newest version came last, the latest is the highest
    assert (model.updated_at, model.latest_version, model.version_count) == (
        "2026-03-01T00:00:00Z",
        "2.0.0",
        2,
    )
    async with store.transaction() as tx:
        await tx.update_model(model_id, "described", {}, "2026-04-01T00:00:00Z")
    model = await store.get_model("m")
    assert model is not None and model.updated_at == "2026-04-01T00:00:00Z"


def test_the_log_tables_drop_autoincrement_and_keep_every_row(tmp_path: Path) -> None:
    """A registry of an earlier release keeps its change cursors and audit chain."""
    db = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
    try:
        db.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        for number, script in sqlite_module._migrations():
            if number < 16:  # the layout before the log tables dropped AUTOINCREMENT
                applied = f"INSERT INTO schema_migrations VALUES ({number}, 't');"
                db.executescript(f"BEGIN;\n{script}\n{applied}\nCOMMIT;")
        for i in range(1, 4):
            db.execute(
                "INSERT INTO changes (at, kind, data) VALUES (?, 'k', ?)",
                (f"t{i}", f'{{"i": {i}}}'),
            )
            db.execute(
                "INSERT INTO audit (at, actor, role, action, target, outcome, prev_hash, hash)"
                " VALUES (?, 'admin', 'admin', 'a', 'x', 'ok', ?, ?)",
                (f"t{i}", f"h{i - 1}", f"h{i}"),
            )
        before = [
            db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("changes", "audit")
        ]

        sqlite_module._migrate(db)

        after = [
            db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("changes", "audit")
        ]
        assert after == before
        schema = " ".join(
            r[0] for r in db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")
        )
        assert "AUTOINCREMENT" not in schema.upper()
        assert db.execute("SELECT count(*) FROM sqlite_sequence").fetchone() == (0,)
        db.execute("INSERT INTO changes (at, kind) VALUES ('t4', 'k')")
        assert db.execute("SELECT max(seq) FROM changes").fetchone() == (4,)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()


async def test_what_a_fleet_state_names_is_found_by_model_and_version(store: SqliteStore) -> None:
    def holding(*blobs: str) -> list[dict[str, Any]]:
        return [{"path": f"{b}.onnx", "digest": f"sha256:{b}"} for b in blobs]

    async with store.transaction() as tx:
        ids = {
            name: await tx.insert_model(name, "", "admin", {}, "2026-01-01T00:00:00Z")
            for name in ("a", "b")
        }
        for model, number, blobs in (
            ("a", "1.0.0", holding("x")),
            ("a", "2.0.0", holding("y", "z")),
            ("b", "1.0.0", holding("w")),  # the same version string in another model
        ):
            record = _version(number, "2026-01-02T00:00:00Z", model=model, files=blobs)
            await tx.insert_version(ids[model], record, number.zfill(8))
    signed = {
        "models": {
            "a": {"version": "2.0.0", "manifest_digest": "sha256:a-2.0.0"},
            "b": {"version": "1.0.0", "manifest_digest": "sha256:b-1.0.0"},
        },
        "rollouts": {"a": {"candidate": {"version": "1.0.0", "manifest_digest": "sha256:a-1.0.0"}}},
    }
    named = state_versions(signed)
    assert named == {
        "sha256:a-2.0.0": ("a", "2.0.0"),
        "sha256:b-1.0.0": ("b", "1.0.0"),
        "sha256:a-1.0.0": ("a", "1.0.0"),
    }
    assert await store.blobs_of_versions([("a", "2.0.0"), ("b", "1.0.0")]) == {
        "sha256:y",
        "sha256:z",
        "sha256:w",
    }
    assert await store.blobs_of_versions([("a", "1.0.0"), ("a", "9.9.9")]) == {"sha256:x"}
    assert await store.blobs_of_versions([]) == set()
    found = await named_version(store, "sha256:b-1.0.0", "b", "1.0.0")
    assert (found.model, found.version) == ("b", "1.0.0")
    with pytest.raises(NotFoundError, match="has manifest"):  # a digest the version lacks
        await named_version(store, "sha256:a-1.0.0", "b", "1.0.0")
    with pytest.raises(NotFoundError):
        await named_version(store, "sha256:a-3.0.0", "a", "3.0.0")
