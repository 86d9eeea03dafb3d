"""SQLite metadata store (aiosqlite, WAL): all of the registry's SQL lives here.

One writer connection serialised by a lock, with ``BEGIN IMMEDIATE`` transactions
(the change-log and audit rows commit with the change they describe), and one reader
connection that WAL lets run beside it. Parameters are always bound.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from central import jsonio
from central.domain import Alias, AliasEvent, Blob, Change, Model, Token, Version
from central.stores._sqlbase import InlineStatements, Statements, ThreadedStatements, dumps
from central.stores.sqlite_approvals import ApprovalReads, ApprovalWrites
from central.stores.sqlite_audit import AuditReads, AuditWrites
from central.stores.sqlite_blobkeys import BlobKeyReads, BlobKeyWrites
from central.stores.sqlite_drift import DriftReads, DriftWrites
from central.stores.sqlite_fleets import FleetReads, FleetWrites
from central.stores.sqlite_rollouts import RolloutReads, RolloutWrites
from central.stores.sqlite_search import SearchIndex
from central.stores.sqlite_telemetry import TelemetryReads, TelemetryWrites
from central.stores.sqlite_webhooks import WebhookReads, WebhookWrites
from shared.errors import ConflictError
from shared.timeutil import format_time, utcnow

logger = logging.getLogger(__name__)

# A version row with its model's name and its aliases (names never hold a comma).
_VERSION_COLUMNS = (
    "v.*, m.name AS model_name, "
    "(SELECT group_concat(a.name, ',') FROM aliases a WHERE a.version_id = v.id) AS alias_names"
)
BUSY_TIMEOUT_MS = 10_000  # how long to wait for another process's write lock
CHECKPOINT_COMMITS = 200  # a WAL checkpoint after this many commits...
CHECKPOINT_SECONDS = 1.0  # ...or this long after the last one, whichever comes first
# Under a steady stream of commits the WAL is rewound (with writers held off for a
# checkpoint's fsyncs) once it holds this much, and cut back to it if a bulk load left
# it larger: commits write over what the file holds instead of extending it.
WAL_REWIND_BYTES = 128 << 20
READER_MMAP_BYTES = 1 << 30  # address space for reads (not memory: the OS pages it in)
READER_CACHE_KIB = 32 * 1024  # SQLite's own page cache of the reader connection
T = TypeVar("T")


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("central.stores") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


class _Reads(
    FleetReads,
    AuditReads,
    ApprovalReads,
    BlobKeyReads,
    WebhookReads,
    TelemetryReads,
    RolloutReads,
    DriftReads,
):
    """Queries shared by the reader connection and write transactions."""

    # models

    async def get_model(self, name: str) -> Model | None:
        row = await self._one("SELECT * FROM models WHERE name = ?", (name,))
        return None if row is None else await self._model(row)

    async def model_id(self, name: str) -> int | None:
        row = await self._one("SELECT id FROM models WHERE name = ?", (name,))
        return None if row is None else int(row["id"])

    async def list_models(
        self, prefix: str, after: str | None, limit: int, patterns: Sequence[str] | None = None
    ) -> list[Model]:
        """Models by name; ``patterns`` (GLOB) keeps only the names matching one of them."""
        sql = "SELECT * FROM models WHERE name >= ? AND name < ?"
        params: list[Any] = [prefix, prefix + "\U0010ffff"]
        if patterns is not None:
            sql += " AND (" + (" OR ".join(["name GLOB ?"] * len(patterns)) or "0") + ")"
            params += patterns
        if after is not None:
            sql += " AND name > ?"
            params.append(after)
        sql += " ORDER BY name LIMIT ?"
        params.append(limit)
        return [await self._model(r) for r in await self._all(sql, params)]

    async def _model(self, row: sqlite3.Row) -> Model:
        # A registration leaves the model's row alone (one page fewer in its commit): the
        # model was last updated when its row was, or when its newest version came.
        latest = await self._one(
            "SELECT (SELECT version FROM versions WHERE model_id = ?1"
            " ORDER BY sort_key DESC LIMIT 1) AS version, s.n,"
            " (SELECT created_at FROM versions WHERE id = s.newest) AS newest_at"
            " FROM (SELECT count(*) AS n, max(id) AS newest FROM versions WHERE model_id = ?1) s",
            (row["id"],),
        )
        assert latest is not None  # an aggregate always gives a row
        aliases = await self._all(
            "SELECT a.name, v.version FROM aliases a JOIN versions v ON v.id = a.version_id "
            "WHERE a.model_id = ? ORDER BY a.name",
            (row["id"],),
        )
        return Model(
            id=row["id"],
            name=row["name"],
            description=row["description"],
            owner=row["owner"],
            tags=json.loads(row["tags"]),
            created_at=row["created_at"],
            updated_at=max(row["updated_at"], latest["newest_at"] or ""),
            latest_version=latest["version"],
            version_count=latest["n"],
            aliases={a["name"]: a["version"] for a in aliases},
        )

    # versions

    async def last_ids(self) -> tuple[int, int]:
        """The id of the last version and of the last audit row (0 when there is none)."""
        row = await self._one(
            "SELECT (SELECT coalesce(max(id), 0) FROM versions),"
            " (SELECT coalesce(max(id), 0) FROM audit)"
        )
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    async def get_version(self, model: str, version: str) -> Version | None:
        rows = await self._all(
            f"SELECT {_VERSION_COLUMNS} FROM versions v JOIN models m ON m.id = v.model_id "
            "WHERE m.name = ? AND v.version = ?",
            (model, version),
        )
        found = await self._versions(rows)
        return found[0] if found else None

    async def get_version_by_id(self, version_id: int) -> Version | None:
        rows = await self._all(
            f"SELECT {_VERSION_COLUMNS} FROM versions v JOIN models m ON m.id = v.model_id "
            "WHERE v.id = ?",
            (version_id,),
        )
        found = await self._versions(rows)
        return found[0] if found else None

    async def get_versions_by_ids(self, ids: Sequence[int]) -> list[Version]:
        """Versions by id, in the order of ``ids`` (one query)."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = await self._all(
            f"SELECT {_VERSION_COLUMNS} FROM versions v JOIN models m ON m.id = v.model_id "
            f"WHERE v.id IN ({marks})",
            list(ids),
        )
        by_id = {v.id: v for v in await self._versions(rows)}
        return [by_id[i] for i in ids if i in by_id]

    async def list_versions(
        self, model_id: int, branch: str | None, before: str | None, limit: int
    ) -> list[Version]:
        """Versions of a model, highest semver first, keyset-paginated on ``sort_key``."""
        sql = f"SELECT {_VERSION_COLUMNS} FROM versions v JOIN models m ON m.id = v.model_id "
        sql += "WHERE v.model_id = ?"
        params: list[Any] = [model_id]
        if branch is not None:
            sql += " AND v.branch = ?"
            params.append(branch)
        if before is not None:
            sql += " AND v.sort_key < ?"
            params.append(before)
        sql += " ORDER BY v.sort_key DESC LIMIT ?"
        params.append(limit)
        return await self._versions(await self._all(sql, params))

    async def model_and_latest(self, name: str, branch: str) -> tuple[int | None, str | None]:
        """The model's id and its highest version on ``branch`` (None when there is none)."""
        row = await self._one(
            "SELECT id, (SELECT version FROM versions WHERE model_id = models.id AND branch = ?"
            " ORDER BY sort_key DESC LIMIT 1) AS latest FROM models WHERE name = ?",
            (branch, name),
        )
        return (None, None) if row is None else (int(row["id"]), row["latest"])

    async def _versions(self, rows: list[sqlite3.Row]) -> list[Version]:
        return [_version(r) for r in rows]

    # aliases

    async def get_alias(self, model: str, alias: str) -> Alias | None:
        row = await self._one(
            "SELECT m.name AS model, a.name AS alias, v.version, v.id AS version_id, "
            "v.manifest_digest, a.updated_at FROM aliases a "
            "JOIN models m ON m.id = a.model_id JOIN versions v ON v.id = a.version_id "
            "WHERE m.name = ? AND a.name = ?",
            (model, alias),
        )
        return None if row is None else _alias(row)

    async def list_aliases(self, model_id: int) -> list[Alias]:
        rows = await self._all(
            "SELECT m.name AS model, a.name AS alias, v.version, v.id AS version_id, "
            "v.manifest_digest, a.updated_at FROM aliases a "
            "JOIN models m ON m.id = a.model_id JOIN versions v ON v.id = a.version_id "
            "WHERE a.model_id = ? ORDER BY a.name",
            (model_id,),
        )
        return [_alias(r) for r in rows]

    async def alias_history(self, model_id: int, alias: str, limit: int) -> list[AliasEvent]:
        rows = await self._all(
            "SELECT h.action, v.version, p.version AS previous, h.actor, h.at "
            "FROM alias_history h LEFT JOIN versions v ON v.id = h.version_id "
            "LEFT JOIN versions p ON p.id = h.previous_version_id "
            "WHERE h.model_id = ? AND h.alias = ? ORDER BY h.id DESC LIMIT ?",
            (model_id, alias, limit),
        )
        return [
            AliasEvent(r["action"], r["version"], r["previous"], r["actor"], r["at"]) for r in rows
        ]

    async def previous_alias_target(self, model_id: int, alias: str) -> int | None:
        """The version the alias pointed at before its current target, if any."""
        row = await self._one(
            "SELECT previous_version_id FROM alias_history WHERE model_id = ? AND alias = ? "
            "ORDER BY id DESC LIMIT 1",
            (model_id, alias),
        )
        return None if row is None or row[0] is None else int(row[0])

    # blobs

    async def get_blob(self, digest: str) -> Blob | None:
        row = await self._one("SELECT * FROM blobs WHERE digest = ?", (digest,))
        return None if row is None else Blob(**dict(row))

    async def get_blobs(self, digests: Iterable[str]) -> dict[str, Blob]:
        wanted = list(dict.fromkeys(digests))
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        rows = await self._all(f"SELECT * FROM blobs WHERE digest IN ({marks})", wanted)
        return {r["digest"]: Blob(**dict(r)) for r in rows}

    async def onnx_signature(self, digest: str) -> dict[str, Any] | None:
        row = await self._one("SELECT signature FROM onnx_signatures WHERE digest = ?", (digest,))
        return None if row is None else dict(json.loads(row[0]))

    # change log, tokens, roots

    async def list_changes(self, since: int, limit: int) -> list[Change]:
        rows = await self._all(
            "SELECT * FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", (since, limit)
        )
        return [
            Change(
                r["seq"],
                r["at"],
                r["kind"],
                r["model"],
                r["version"],
                r["alias"],
                json.loads(r["data"]),
            )
            for r in rows
        ]

    async def last_seq(self) -> int:
        row = await self._one("SELECT coalesce(max(seq), 0) FROM changes")
        return 0 if row is None else int(row[0])

    async def token_by_hash(self, token_hash: str) -> tuple[Token, str] | None:
        row = await self._one("SELECT * FROM tokens WHERE hash = ?", (token_hash,))
        return None if row is None else (_token(row), row["hash"])

    async def get_token(self, token_id: str) -> Token | None:
        row = await self._one("SELECT * FROM tokens WHERE id = ?", (token_id,))
        return None if row is None else _token(row)

    async def list_tokens(self) -> list[Token]:
        return [_token(r) for r in await self._all("SELECT * FROM tokens ORDER BY created_at")]

    async def get_root(self, version: int | None = None) -> dict[str, Any] | None:
        if version is None:
            row = await self._one("SELECT envelope FROM roots ORDER BY version DESC LIMIT 1")
        else:
            row = await self._one("SELECT envelope FROM roots WHERE version = ?", (version,))
        return None if row is None else dict(json.loads(row[0]))


class Transaction(
    _Reads,
    FleetWrites,
    AuditWrites,
    ApprovalWrites,
    BlobKeyWrites,
    WebhookWrites,
    TelemetryWrites,
    RolloutWrites,
    DriftWrites,
):
    """Writes of one ``BEGIN IMMEDIATE`` transaction; reads see its own writes."""

    def __init__(self, db: Statements) -> None:
        super().__init__(db)
        self.changes: list[Change] = []  # appended to the change log, in order

    async def insert_model(
        self, name: str, description: str, owner: str, tags: dict[str, str], at: str
    ) -> int:
        model_id = await self._run(
            "INSERT INTO models (name, description, owner, tags, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, description, owner, dumps(tags), at, at),
        )
        await self._many(
            "INSERT INTO model_tags (model_id, key, value) VALUES (?, ?, ?)",
            [(model_id, k, v) for k, v in tags.items()],
        )
        return model_id

    async def update_model(
        self, model_id: int, description: str, tags: dict[str, str], at: str
    ) -> None:
        await self._run(
            "UPDATE models SET description = ?, tags = ?, updated_at = ? WHERE id = ?",
            (description, dumps(tags), at, model_id),
        )
        await self._run("DELETE FROM model_tags WHERE model_id = ?", (model_id,))
        await self._many(
            "INSERT INTO model_tags (model_id, key, value) VALUES (?, ?, ?)",
            [(model_id, k, v) for k, v in tags.items()],
        )

    async def insert_version(self, model_id: int, v: Version, sort_key: str) -> int:
        try:
            version_id = await self._run(
                "INSERT INTO versions (model_id, version, sort_key, branch, parent, format, stage,"
                " description, owner, tags, metadata, signature, files, manifest, manifest_digest,"
                " metadata_digest, created_at, signed_metadata)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    model_id,
                    v.version,
                    sort_key,
                    v.branch,
                    v.parent,
                    v.format,
                    v.stage,
                    v.description,
                    v.owner,
                    dumps(v.tags),
                    dumps(v.metadata),
                    None if v.signature is None else dumps(v.signature),
                    dumps(v.files),
                    dumps(v.manifest),
                    v.manifest_digest,
                    v.metadata_digest,
                    v.created_at,
                    None if v.signed_metadata is None else dumps(v.signed_metadata),
                ),
            )
        except ConflictError as e:
            raise ConflictError(f"version {v.model}@{v.version} already exists") from e
        # Its facets, tags, metrics, description and blobs reach the search index later,
        # in batches, in a file of its own (sqlite_search). The model's row is not touched:
        # its updated_at is read from its newest version (see _model).
        return version_id

    async def set_stage(self, version_id: int, stage: str) -> None:
        await self._run("UPDATE versions SET stage = ? WHERE id = ?", (stage, version_id))

    async def set_alias(self, model_id: int, alias: str, version_id: int, at: str) -> None:
        await self._run(
            "INSERT INTO aliases (model_id, name, version_id, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (model_id, name) DO UPDATE SET version_id = excluded.version_id, "
            "updated_at = excluded.updated_at",
            (model_id, alias, version_id, at),
        )

    async def delete_alias(self, model_id: int, alias: str) -> None:
        await self._run("DELETE FROM aliases WHERE model_id = ? AND name = ?", (model_id, alias))

    async def add_alias_event(
        self,
        model_id: int,
        alias: str,
        action: str,
        version_id: int | None,
        previous_id: int | None,
        actor: str,
        at: str,
    ) -> None:
        await self._run(
            "INSERT INTO alias_history (model_id, alias, action, version_id, previous_version_id,"
            " actor, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (model_id, alias, action, version_id, previous_id, actor, at),
        )

    async def insert_blob(self, blob: Blob) -> bool:
        """Record a blob; False if it was already recorded."""
        return (
            await self._change(
                "INSERT OR IGNORE INTO blobs (digest, size, zdigest, zsize, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (blob.digest, blob.size, blob.zdigest, blob.zsize, blob.created_at),
            )
            == 1
        )

    async def put_onnx_signature(self, digest: str, signature: dict[str, Any]) -> None:
        await self._run(
            "INSERT OR REPLACE INTO onnx_signatures (digest, signature) VALUES (?, ?)",
            (digest, dumps(signature)),
        )

    async def append_change(
        self,
        kind: str,
        *,
        model: str | None = None,
        version: str | None = None,
        alias: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> int:
        at, text = format_time(utcnow()), dumps(data or {})
        seq = await self._run(
            "INSERT INTO changes (at, kind, model, version, alias, data) VALUES (?,?,?,?,?,?)",
            (at, kind, model, version, alias, text),
        )
        self.changes.append(Change(seq, at, kind, model, version, alias, jsonio.loads(text)))
        return seq

    async def insert_token(self, token: Token, token_hash: str) -> None:
        await self._run(
            "INSERT INTO tokens (id, name, role, hash, models, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                token.id,
                token.name,
                token.role,
                token_hash,
                None if token.models is None else dumps(list(token.models)),
                token.created_at,
                token.expires_at,
            ),
        )

    async def revoke_token(self, token_id: str, at: str) -> None:
        await self._run("UPDATE tokens SET revoked_at = ? WHERE id = ?", (at, token_id))

    async def resign_manifests(self, sign: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
        """Replace every manifest's signatures (the signed part, and so its digest, stay)."""
        count, last_id = 0, 0
        while True:
            rows = await self._all(
                "SELECT id, manifest FROM versions WHERE id > ? ORDER BY id LIMIT 500", (last_id,)
            )
            if not rows:
                return count
            await self._many(
                "UPDATE versions SET manifest = ? WHERE id = ?",
                [(dumps(sign(json.loads(r["manifest"])["signed"])), r["id"]) for r in rows],
            )
            count += len(rows)
            last_id = rows[-1]["id"]

    async def insert_root(self, version: int, envelope: dict[str, Any], at: str) -> None:
        await self._run(
            "INSERT INTO roots (version, envelope, created_at) VALUES (?, ?, ?)",
            (version, dumps(envelope), at),
        )


# order name -> (extra join, sort expression, direction); fixed text only.
SEARCH_ORDERS: dict[str, tuple[str, str, str]] = {
    # creation order is registration order: a version's id comes from the same commit
    "created_at desc": ("", "v.id", "DESC"),
    "created_at asc": ("", "v.id", "ASC"),
    "version desc": ("", "v.sort_key", "DESC"),
    "version asc": ("", "v.sort_key", "ASC"),
    "metric desc": (
        "JOIN version_metrics sm ON sm.version_id = v.id AND sm.key = ?",
        "sm.value",
        "DESC",
    ),
    "metric asc": (
        "JOIN version_metrics sm ON sm.version_id = v.id AND sm.key = ?",
        "sm.value",
        "ASC",
    ),
}


class SqliteStore(_Reads):
    """The registry's metadata in one SQLite database file.

    Reads go through an aiosqlite connection (one hop to its thread each). Writes go
    through one writer connection under an asyncio lock: a transaction's statements
    run inline on the loop (each is an indexed write of microseconds, cheaper than a
    hop to a thread), and ``transaction(offload=True)`` sends them to the writer's
    own thread instead, for the few that rewrite whole tables. Nothing inline can
    wait on a lock or a disk: ``BEGIN IMMEDIATE`` is retried asynchronously while
    another process writes, and WAL checkpoints (the fsyncs of ``normal``
    durability) run on a separate connection's thread. With ``full`` durability the
    ``COMMIT`` itself syncs, so it runs on the writer's thread.
    """

    def __init__(self, path: Path, *, durability: str = "normal") -> None:
        self.path = path
        self._durability = durability
        self._writer: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: asyncio.Future[Any] | None = None  # last work sent to the writer thread
        self._checkpointer: aiosqlite.Connection | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._commits_since_checkpoint = 0
        self._last_checkpoint = 0.0
        self._frame_bytes = 24 + 4096  # a WAL frame: its header and one page
        self._lock = asyncio.Lock()
        # told after every commit, with the changes it appended to the log
        self.on_commit: Callable[[Sequence[Change]], None] | None = None
        self.search = SearchIndex(path, busy_timeout_ms=BUSY_TIMEOUT_MS)

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="skiff-sqlite-writer")
        self._writer = await self._offload(self._open_writer)
        self._checkpointer = await self._connect()
        async with self._checkpointer.execute("PRAGMA page_size") as cursor:
            row = await cursor.fetchone()
        self._frame_bytes = 24 + (int(row[0]) if row is not None else 4096)  # header + page
        await self.search.open()
        super().__init__(ThreadedStatements(await self._connect(attach_search=True)))
        self._last_checkpoint = time.monotonic()

    async def models_of_blob(self, digest: str) -> list[str]:
        """Names of the models that have a version holding the blob ``digest``.

        Reads the search index (attached as ``search``): the caller brings it up to date.
        """
        rows = await self._all(
            "SELECT DISTINCT m.name FROM search.blob_versions b"
            " JOIN versions v ON v.id = b.version_id JOIN models m ON m.id = v.model_id"
            " WHERE b.digest = ?",
            (digest,),
        )
        return [str(r[0]) for r in rows]

    async def count_tagged(self, key: str, value: str, *, at_most: int) -> int:
        """How many versions carry the tag ``key=value`` (search index), up to ``at_most``."""
        row = await self._one(
            "SELECT count(*) FROM (SELECT 1 FROM version_tags WHERE key = ? AND value = ? LIMIT ?)",
            (key, value, at_most),
        )
        return 0 if row is None else int(row[0])

    async def search_versions(
        self,
        where: Sequence[str],
        params: Sequence[Any],
        order: str,
        limit: int,
        order_key: str | None = None,
        facet: tuple[str, str] | None = None,
    ) -> list[tuple[Version, Any]]:
        """Run a search built by the search service; returns (version, sort value) pairs.

        On the reader connection, the one that sees the search index (``ATTACH``).

        ``where`` holds SQL fragments made only from fixed text by the caller, on the
        columns of ``versions v`` (and ``sm``, the joined metric of a metric order, or
        ``f``, the walked facet); every value is in ``params``. ``order`` is one of the
        fixed orders of :data:`SEARCH_ORDERS`. ``facet`` (field, value), for a creation
        order only, walks that facet's entries in id order, so a page of a facet most
        versions share stops after its rows instead of collecting every match first.
        """
        join, sort_col, direction = SEARCH_ORDERS[order]
        head: list[Any] = [order_key] if join else []
        source = "versions v"
        conditions = list(where)
        if facet is not None:
            if not order.startswith("created_at"):
                raise ValueError("a facet is walked only in creation order")
            source = "version_facets f JOIN versions v ON v.id = f.version_id"
            sort_col = "f.version_id"
            conditions.insert(0, "f.field = ? AND f.value = ?")
            head += list(facet)
        # The page is chosen on (id, sort value) alone, then only its rows are read whole:
        # sorting a thousand matches costs their keys, not their metadata documents.
        page = f"SELECT v.id, {sort_col} AS sort_value FROM {source} {join}"
        if conditions:
            page += " WHERE " + " AND ".join(conditions)
        # Ties go by the id the sort's own index holds (a metric's entry names its
        # version): the walk then follows that index and stops after the page's rows,
        # where ordering by the versions' id would sort every match first.
        tie = "sm.version_id" if join else "v.id"
        page += f" ORDER BY sort_value {direction}, {tie} {direction} LIMIT ?"
        sql = (
            f"WITH page AS ({page}) SELECT {_VERSION_COLUMNS}, page.sort_value FROM page "
            "JOIN versions v ON v.id = page.id JOIN models m ON m.id = v.model_id "
            f"ORDER BY page.sort_value {direction}, v.id {direction}"
        )
        rows = await self._all(sql, [*head, *params, limit])
        return [(_version(r), r["sort_value"]) for r in rows]

    def _open_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            for pragma in _pragmas(self._durability):
                conn.execute(pragma)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")  # here, on the thread
            _migrate(conn)
            # Inline statements must never sleep on a lock: BEGIN is retried by _begin.
            conn.execute("PRAGMA busy_timeout = 0")
            # Checkpoints run on the checkpointer's thread, never inside a commit.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_REWIND_BYTES}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _connect(self, *, attach_search: bool = False) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        for pragma in _pragmas(self._durability):
            await conn.execute(pragma)
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        schemas = ["main"]
        if attach_search:  # searches join the versions with the search index
            await conn.execute("ATTACH DATABASE ? AS search", (str(self.search.path),))
            schemas.append("search")
        for schema in schemas:
            # Reads map the file instead of copying each page through read(); the page
            # cache holds the hot index pages of a large catalogue.
            await conn.execute(f"PRAGMA {schema}.mmap_size = {READER_MMAP_BYTES}")
            await conn.execute(f"PRAGMA {schema}.cache_size = -{READER_CACHE_KIB}")
        return conn

    async def close(self) -> None:
        if self._checkpoint_task is not None:
            await asyncio.wait([self._checkpoint_task])
            self._checkpoint_task = None
        reader = getattr(self, "_db", None)
        if isinstance(reader, ThreadedStatements):
            await reader.close()
        if self._checkpointer is not None:
            await self._checkpointer.close()
            self._checkpointer = None
        await self.search.close()
        if self._executor is not None:
            await self._settle()
            writer, self._writer = self._writer, None
            if writer is not None:
                await self._offload(writer.close)
            self._executor.shutdown(wait=True)
            self._executor = None

    def _offload(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``fn`` on the writer's thread; later work waits for it (see _settle)."""
        assert self._executor is not None
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn)
        self._inflight = future
        return future

    async def _settle(self) -> None:
        """Wait for work a cancelled transaction left running on the writer's thread."""
        while (pending := self._inflight) is not None and not pending.done():
            await asyncio.wait([pending])
        self._inflight = None

    @asynccontextmanager
    async def transaction(self, *, offload: bool = False) -> AsyncIterator[Transaction]:
        """One write transaction; commits on success, rolls back on any exception.

        Args:
            offload: Run the statements on the writer's thread: for transactions that
                rewrite many rows and would hold the event loop for too long.
        """
        conn = self._writer
        if conn is None:
            raise RuntimeError("store is not open")
        async with self._lock:
            await self._settle()
            if conn.in_transaction:  # left open by a cancelled transaction
                conn.execute("ROLLBACK")
            await self._begin(conn)
            statements: Statements = (
                _OffloadedStatements(conn, self._offload) if offload else InlineStatements(conn)
            )
            tx = Transaction(statements)
            try:
                yield tx
            except BaseException:
                if self._inflight is not None and not self._inflight.done():
                    self._offload(lambda: _rollback(conn))  # after the statement in flight
                else:
                    _rollback(conn)
                raise
            if offload or self._durability == "full":
                await asyncio.shield(self._offload(lambda: conn.execute("COMMIT")))
            else:
                conn.execute("COMMIT")
        self._committed()
        if self.on_commit is not None:
            self.on_commit(tx.changes)

    async def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, retried without blocking while another process writes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BUSY_TIMEOUT_MS / 1000
        delay = 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or loop.time() >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _committed(self) -> None:
        """Start a WAL checkpoint now and then, off the loop and outside any commit."""
        self._commits_since_checkpoint += 1
        if self._checkpoint_task is not None or self._checkpointer is None:
            return
        due = time.monotonic() - self._last_checkpoint >= CHECKPOINT_SECONDS
        if due or self._commits_since_checkpoint >= CHECKPOINT_COMMITS:
            self._checkpoint_task = asyncio.create_task(self._checkpoint(self._checkpointer))

    async def _checkpoint(self, conn: aiosqlite.Connection) -> None:
        """Copy the WAL back into the database; rewind it once it holds WAL_REWIND_BYTES.

        SQLite rewinds the WAL only when a write finds every frame copied back. Under a
        steady stream of commits that never happens, as frames are appended while the
        checkpoint runs, and every commit extends the file (which costs it more than
        writing over the file's start) without end. So once the WAL is large, the frames
        added during the checkpoint are copied with writers held off, and the next
        commit starts the WAL over.

        Only a checkpoint that copies the whole WAL syncs the database file, so that one
        would flush every page the others copied while it holds writers off. With writers
        running, the file is synced, what came in meanwhile copied, and synced again:
        what is left for the last one is a few milliseconds of commits.
        """
        self._commits_since_checkpoint = 0
        try:
            frames = await _passive_checkpoint(conn)
            if frames * self._frame_bytes >= WAL_REWIND_BYTES:
                await asyncio.to_thread(_flush_file, self.path)
                await _passive_checkpoint(conn)
                await asyncio.to_thread(_flush_file, self.path)
                async with self._lock:
                    await self._settle()
                    await _passive_checkpoint(conn)
        except (sqlite3.Error, OSError) as e:  # the next one tries again
            logger.warning("WAL checkpoint failed: %s", e)
        finally:
            self._last_checkpoint = time.monotonic()
            self._checkpoint_task = None


class _OffloadedStatements:
    """The writer's statements, each run on the writer's thread."""

    def __init__(
        self, conn: sqlite3.Connection, offload: Callable[[Callable[[], Any]], asyncio.Future[Any]]
    ) -> None:
        self._conn = conn
        self._offload = offload

    async def fetchall(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        conn = self._conn
        rows: list[sqlite3.Row] = await self._offload(lambda: conn.execute(sql, params).fetchall())
        return rows

    async def insert(self, sql: str, params: Sequence[Any]) -> int:
        conn = self._conn
        rowid: int = await self._offload(lambda: conn.execute(sql, params).lastrowid or 0)
        return rowid

    async def change(self, sql: str, params: Sequence[Any]) -> int:
        conn = self._conn
        count: int = await self._offload(lambda: conn.execute(sql, params).rowcount)
        return count

    async def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        conn, batch = self._conn, list(rows)
        await self._offload(lambda: conn.executemany(sql, batch))


def _flush_file(path: Path) -> None:
    """Write the file's dirty pages to disk (what the OS holds for any descriptor)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        getattr(os, "fdatasync", os.fsync)(fd)  # macOS has no fdatasync
    finally:
        os.close(fd)


async def _passive_checkpoint(conn: aiosqlite.Connection) -> int:
    """Run a passive checkpoint; returns how many frames the WAL held."""
    async with conn.execute("PRAGMA wal_checkpoint(PASSIVE)") as cursor:
        row = await cursor.fetchone()  # (busy, frames in the WAL, frames copied back)
    return 0 if row is None else int(row[1])


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _pragmas(durability: str) -> list[str]:
    """What every connection to the database sets first."""
    return [
        "PRAGMA journal_mode = WAL",
        f"PRAGMA synchronous = {durability.upper()}",
        "PRAGMA foreign_keys = ON",
    ]


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply the schema migrations the database has not seen, each in one transaction."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    current = 0 if row is None else int(row[0])
    for number, script in _migrations():
        if number <= current:
            continue
        logger.info("Applying schema migration %04d", number)
        # executescript commits first; the script and its bookkeeping go in one transaction.
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\n"
                f"INSERT INTO schema_migrations VALUES ({number}, '{format_time(utcnow())}');\n"
                "COMMIT;"
            )
        except BaseException:
            _rollback(conn)
            raise


def _version(row: sqlite3.Row) -> Version:
    names = row["alias_names"]
    aliases = () if names is None else tuple(sorted(names.split(",")))
    return Version(
        id=row["id"],
        model=row["model_name"],
        version=row["version"],
        branch=row["branch"],
        parent=row["parent"],
        format=row["format"],
        stage=row["stage"],
        description=row["description"],
        owner=row["owner"],
        tags=jsonio.loads(row["tags"]),
        metadata=jsonio.loads(row["metadata"]),
        signature=None if row["signature"] is None else jsonio.loads(row["signature"]),
        files=jsonio.loads(row["files"]),
        manifest=jsonio.loads(row["manifest"]),
        manifest_digest=row["manifest_digest"],
        metadata_digest=row["metadata_digest"],
        created_at=row["created_at"],
        aliases=aliases,
        signed_metadata=None
        if row["signed_metadata"] is None
        else jsonio.loads(row["signed_metadata"]),
    )


def _alias(row: sqlite3.Row) -> Alias:
    return Alias(
        model=row["model"],
        alias=row["alias"],
        version=row["version"],
        version_id=row["version_id"],
        manifest_digest=row["manifest_digest"],
        updated_at=row["updated_at"],
    )


def _token(row: sqlite3.Row) -> Token:
    return Token(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        models=None if row["models"] is None else tuple(json.loads(row["models"])),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )
