"""SQLite metadata store (aiosqlite, WAL): all of the registry's SQL lives here.

One writer connection serialised by a lock, with ``BEGIN IMMEDIATE`` transactions
(the change-log and audit rows commit with the change they describe), and one reader
connection that WAL lets run beside it. Parameters are always bound.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from central.domain import Alias, AliasEvent, Blob, Change, Model, Token, Version
from central.stores._sqlbase import dumps
from central.stores.sqlite_approvals import ApprovalReads, ApprovalWrites
from central.stores.sqlite_audit import AuditReads, AuditWrites
from central.stores.sqlite_blobkeys import BlobKeyReads, BlobKeyWrites
from central.stores.sqlite_drift import DriftReads, DriftWrites
from central.stores.sqlite_fleets import FleetReads, FleetWrites
from central.stores.sqlite_rollouts import RolloutReads, RolloutWrites
from central.stores.sqlite_telemetry import TelemetryReads, TelemetryWrites
from central.stores.sqlite_webhooks import WebhookReads, WebhookWrites
from shared.errors import ConflictError
from shared.timeutil import format_time, utcnow

logger = logging.getLogger(__name__)

_VERSION_COLUMNS = "v.*, m.name AS model_name"


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
        latest = await self._one(
            "SELECT version, (SELECT count(*) FROM versions WHERE model_id = ?) AS n "
            "FROM versions WHERE model_id = ? ORDER BY sort_key DESC LIMIT 1",
            (row["id"], row["id"]),
        )
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
            updated_at=row["updated_at"],
            latest_version=None if latest is None else latest["version"],
            version_count=0 if latest is None else latest["n"],
            aliases={a["name"]: a["version"] for a in aliases},
        )

    # versions

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

    async def version_by_manifest(self, manifest_digest: str) -> Version | None:
        rows = await self._all(
            f"SELECT {_VERSION_COLUMNS} FROM versions v JOIN models m ON m.id = v.model_id "
            "WHERE v.manifest_digest = ? LIMIT 1",
            (manifest_digest,),
        )
        found = await self._versions(rows)
        return found[0] if found else None

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

    async def latest_on_branch(self, model_id: int, branch: str) -> str | None:
        row = await self._one(
            "SELECT version FROM versions WHERE model_id = ? AND branch = ? "
            "ORDER BY sort_key DESC LIMIT 1",
            (model_id, branch),
        )
        return None if row is None else str(row["version"])

    async def search_versions(
        self,
        where: Sequence[str],
        params: Sequence[Any],
        order: str,
        limit: int,
        order_key: str | None = None,
    ) -> list[tuple[Version, Any]]:
        """Run a search built by the search service; returns (version, sort value) pairs.

        ``where`` holds SQL fragments made only from fixed text by the caller; every value
        is in ``params``. ``order`` is one of the fixed orders of :data:`SEARCH_ORDERS`.
        """
        join, sort_col, direction = SEARCH_ORDERS[order]
        sql = f"SELECT {_VERSION_COLUMNS}, {sort_col} AS sort_value FROM versions v "
        sql += f"JOIN models m ON m.id = v.model_id {join}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY sort_value {direction}, v.id {direction} LIMIT ?"
        head = [order_key] if join else []
        rows = await self._all(sql, [*head, *params, limit])
        versions = await self._versions(rows)
        return [(v, r["sort_value"]) for v, r in zip(versions, rows, strict=True)]

    async def _versions(self, rows: list[sqlite3.Row]) -> list[Version]:
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        marks = ",".join("?" * len(ids))
        alias_rows = await self._all(
            f"SELECT version_id, name FROM aliases WHERE version_id IN ({marks}) ORDER BY name",
            ids,
        )
        aliases: dict[int, list[str]] = {}
        for a in alias_rows:
            aliases.setdefault(a["version_id"], []).append(a["name"])
        return [_version(r, tuple(aliases.get(r["id"], ()))) for r in rows]

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

    async def models_of_blob(self, digest: str) -> list[str]:
        """Names of the models that have a version holding the blob ``digest``."""
        rows = await self._all(
            "SELECT DISTINCT m.name FROM version_files f JOIN versions v ON v.id = f.version_id "
            "JOIN models m ON m.id = v.model_id WHERE f.digest = ?",
            (digest,),
        )
        return [str(r[0]) for r in rows]

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

    async def insert_model(
        self, name: str, description: str, owner: str, tags: dict[str, str], at: str
    ) -> int:
        model_id = await self._run(
            "INSERT INTO models (name, description, owner, tags, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, description, owner, dumps(tags), at, at),
        )
        await self._conn.executemany(
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
        await self._conn.executemany(
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
        conn = self._conn
        await conn.executemany(
            "INSERT INTO version_files (version_id, path, digest) VALUES (?, ?, ?)",
            [(version_id, f["path"], f["digest"]) for f in v.files],
        )
        if v.tags:  # each statement is a hop to the database thread: skip empty ones
            await conn.executemany(
                "INSERT INTO version_tags (version_id, key, value) VALUES (?, ?, ?)",
                [(version_id, k, val) for k, val in v.tags.items()],
            )
        metrics = v.metadata.get("training", {}).get("metrics", {})
        if metrics:
            await conn.executemany(
                "INSERT INTO version_metrics (version_id, key, value) VALUES (?, ?, ?)",
                [(version_id, k, float(val)) for k, val in metrics.items()],
            )
        if v.description:
            await self._run(
                "INSERT INTO version_text (rowid, description) VALUES (?, ?)",
                (version_id, v.description),
            )
        await self._run("UPDATE models SET updated_at = ? WHERE id = ?", (v.created_at, model_id))
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
        async with self._conn.execute(
            "INSERT OR IGNORE INTO blobs (digest, size, zdigest, zsize, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (blob.digest, blob.size, blob.zdigest, blob.zsize, blob.created_at),
        ) as cur:
            return cur.rowcount == 1

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
        return await self._run(
            "INSERT INTO changes (at, kind, model, version, alias, data) VALUES (?,?,?,?,?,?)",
            (format_time(utcnow()), kind, model, version, alias, dumps(data or {})),
        )

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
            await self._conn.executemany(
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
    "created_at desc": ("", "v.created_at", "DESC"),
    "created_at asc": ("", "v.created_at", "ASC"),
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
    """The registry's metadata in one SQLite database file."""

    def __init__(self, path: Path, *, durability: str = "normal") -> None:
        self.path = path
        self._durability = durability
        self._writer: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self.on_commit: Callable[[], None] | None = None  # told after every commit

    async def open(self) -> None:
        self._writer = await self._connect()
        await self._migrate(self._writer)
        super().__init__(await self._connect())

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute(f"PRAGMA synchronous = {self._durability.upper()}")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    async def close(self) -> None:
        for conn in (getattr(self, "_conn", None), self._writer):
            if conn is not None:
                await conn.close()
        self._writer = None

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        async with conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations") as cur:
            row = await cur.fetchone()
        current = 0 if row is None else int(row[0])
        for number, script in _migrations():
            if number <= current:
                continue
            logger.info("Applying schema migration %04d", number)
            # executescript commits first; the script and its bookkeeping go in one transaction.
            await conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\n"
                f"INSERT INTO schema_migrations VALUES ({number}, '{format_time(utcnow())}');\n"
                "COMMIT;"
            )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One write transaction; commits on success, rolls back on any exception."""
        if self._writer is None:
            raise RuntimeError("store is not open")
        async with self._lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._writer)
            except BaseException:
                await self._writer.execute("ROLLBACK")
                raise
            await self._writer.execute("COMMIT")
        if self.on_commit is not None:
            self.on_commit()


def _version(row: sqlite3.Row, aliases: tuple[str, ...]) -> Version:
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
        tags=json.loads(row["tags"]),
        metadata=json.loads(row["metadata"]),
        signature=None if row["signature"] is None else json.loads(row["signature"]),
        files=json.loads(row["files"]),
        manifest=json.loads(row["manifest"]),
        manifest_digest=row["manifest_digest"],
        metadata_digest=row["metadata_digest"],
        created_at=row["created_at"],
        aliases=aliases,
        signed_metadata=None
        if row["signed_metadata"] is None
        else json.loads(row["signed_metadata"]),
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
