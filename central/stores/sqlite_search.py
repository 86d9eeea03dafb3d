"""The search index: tables derived from the registry, in a database file of their own.

The branch, owner and format of every version, its tags, its metrics, the words of its
description and the blobs it holds, and the actor, action and time of every audit row,
are copied into
``<registry>.search.db`` in batches, by a connection of their own on a thread of their
own. Writing them takes that file's write lock, not the
registry's: indexing a burst of a thousand versions never holds up a registration or
an alias move. Reads see both files through one connection (``ATTACH``).

The file holds nothing that is not in the registry. Deleted, damaged, of an older
layout, or ahead of the registry (one restored from a backup, or that lost its last
commits in a power cut), it is rebuilt from the versions.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, TypeVar

logger = logging.getLogger(__name__)

SEARCH_SCHEMA = 3  # the file's layout (PRAGMA user_version); another one is rebuilt
T = TypeVar("T")

_TABLES = (
    "search_index_state",
    "audit_facets",
    "blob_versions",
    "version_facets",
    "version_tags",
    "version_metrics",
    "version_text",
)
# What a file that is no database, or a damaged one, raises: rebuilt. Anything else (a
# lock another replica holds past the busy timeout, a full disk) is raised as it is.
_UNREADABLE = {sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS search_index_state (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_through INTEGER NOT NULL,  -- every version id up to this one is indexed
    audit_through   INTEGER NOT NULL   -- every audit row id up to this one is indexed
);
INSERT OR IGNORE INTO search_index_state (id, indexed_through, audit_through) VALUES (1, 0, 0);
CREATE TABLE IF NOT EXISTS blob_versions (
    digest     TEXT NOT NULL,  -- a blob a version holds (its files' digests)
    version_id INTEGER NOT NULL,
    PRIMARY KEY (digest, version_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_facets (
    field    TEXT NOT NULL,  -- actor, action or at
    value    TEXT NOT NULL,
    audit_id INTEGER NOT NULL,
    PRIMARY KEY (field, value, audit_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS version_facets (
    field      TEXT NOT NULL,  -- branch, owner or format
    value      TEXT NOT NULL,
    version_id INTEGER NOT NULL,
    PRIMARY KEY (field, value, version_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS version_tags (
    version_id INTEGER NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (version_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS version_tags_kv ON version_tags(key, value, version_id);
CREATE TABLE IF NOT EXISTS version_metrics (
    version_id INTEGER NOT NULL,
    key        TEXT NOT NULL,
    value      REAL NOT NULL,
    PRIMARY KEY (version_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS version_metrics_kv ON version_metrics(key, value, version_id);
CREATE VIRTUAL TABLE IF NOT EXISTS version_text USING fts5(description);
"""
# Each reads the versions after ?1 up to ?2 from the registry (JSON1 reads the documents).
_INDEX_STATEMENTS = (
    "INSERT OR IGNORE INTO version_facets (field, value, version_id) "
    "SELECT 'branch', branch, id FROM versions WHERE id > ?1 AND id <= ?2 "
    "UNION ALL SELECT 'owner', owner, id FROM versions WHERE id > ?1 AND id <= ?2 "
    "UNION ALL SELECT 'format', format, id FROM versions WHERE id > ?1 AND id <= ?2",
    "INSERT OR IGNORE INTO version_tags (version_id, key, value) "
    "SELECT v.id, t.key, t.value FROM versions v, json_each(v.tags) t "
    "WHERE v.id > ?1 AND v.id <= ?2",
    "INSERT OR IGNORE INTO version_metrics (version_id, key, value) "
    "SELECT v.id, m.key, CAST(m.value AS REAL) "
    "FROM versions v, json_each(v.metadata, '$.training.metrics') m "
    "WHERE v.id > ?1 AND v.id <= ?2",
    "INSERT OR IGNORE INTO blob_versions (digest, version_id) "
    "SELECT json_extract(f.value, '$.digest'), v.id FROM versions v, json_each(v.files) f "
    "WHERE v.id > ?1 AND v.id <= ?2",
    "INSERT INTO version_text (rowid, description) SELECT id, description "
    "FROM versions WHERE id > ?1 AND id <= ?2 AND description != ''",
)


# Reads the audit rows after ?1 up to ?2 from the registry.
_AUDIT_STATEMENT = (
    "INSERT OR IGNORE INTO audit_facets (field, value, audit_id) "
    "SELECT 'actor', actor, id FROM audit WHERE id > ?1 AND id <= ?2 "
    "UNION ALL SELECT 'action', action, id FROM audit WHERE id > ?1 AND id <= ?2 "
    "UNION ALL SELECT 'at', at, id FROM audit WHERE id > ?1 AND id <= ?2"
)


def search_path(registry: Path) -> Path:
    """The search index file of the registry database ``registry``."""
    return registry.with_suffix(".search.db")


class SearchIndex:
    """The connection that writes the search index, on a thread of its own."""

    def __init__(self, registry: Path, *, busy_timeout_ms: int) -> None:
        self.registry = registry
        self.path = search_path(registry)
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        """Open (creating or rebuilding as needed) the index; the registry's schema is current."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="skiff-search-index")
        try:
            self._conn = await self._run(self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        if self._executor is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._run(conn.close)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def index(self, limit: int) -> Indexed:
        """Index the next ``limit`` unindexed versions and audit rows in one transaction."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("search index is not open")
        return await self._run(lambda: _index(conn, limit))

    def _run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        assert self._executor is not None
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as e:
            if e.sqlite_errorcode & 0xFF not in _UNREADABLE:
                raise
            logger.warning("Search index %s unreadable (%s); rebuilding it", self.path, e)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # derived data: rebuilt if lost
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version not in (0, SEARCH_SCHEMA):
                logger.info("Search index %s has layout %d; rebuilding it", self.path, version)
                _drop(conn)
            _create(conn)
            conn.execute("ATTACH DATABASE ? AS registry", (str(self.registry),))
            through, audit_through = _indexed_through(conn)
            last, last_audit = conn.execute(
                "SELECT (SELECT coalesce(max(id), 0) FROM versions),"
                " (SELECT coalesce(max(id), 0) FROM audit)"
            ).fetchone()
            if through > last or audit_through > last_audit:
                logger.warning(
                    "Search index %s is ahead of the registry (version %d of %d, audit row"
                    " %d of %d); rebuilding it",
                    self.path,
                    through,
                    last,
                    audit_through,
                    last_audit,
                )
                _drop(conn)
                _create(conn)
            elif through < last or audit_through < last_audit:
                logger.info(
                    "Search index: %d versions and %d audit rows to index",
                    last - through,
                    last_audit - audit_through,
                )
        except BaseException:
            conn.close()
            raise
        return conn


def _indexed_through(conn: sqlite3.Connection) -> tuple[int, int]:
    """The last version id and the last audit row id indexed."""
    row = conn.execute("SELECT indexed_through, audit_through FROM search_index_state").fetchone()
    return int(row[0]), int(row[1])


def _create(conn: sqlite3.Connection) -> None:
    # Here and in _drop, a deferred BEGIN: the first write takes this file's lock alone,
    # where BEGIN IMMEDIATE would take the registry's too once it is attached.
    conn.executescript(f"BEGIN;\n{_SCHEMA}\nPRAGMA main.user_version = {SEARCH_SCHEMA};\nCOMMIT;")


def _drop(conn: sqlite3.Connection) -> None:
    drops = "".join(f"DROP TABLE IF EXISTS main.{t};\n" for t in _TABLES)
    conn.executescript(f"BEGIN;\n{drops}COMMIT;")


class Indexed(NamedTuple):
    """What one indexing transaction went through, and how far each kind is indexed."""

    versions: int
    versions_through: int
    audit_rows: int
    audit_through: int


def _index(conn: sqlite3.Connection, limit: int) -> Indexed:
    conn.execute("BEGIN")
    try:
        # This file's write lock first (another replica's indexer waits here), then the
        # registry's rows as they are now: only this file is written.
        conn.execute("UPDATE search_index_state SET indexed_through = indexed_through")
        through, audit_through = _indexed_through(conn)
        count, last = _next(conn, "versions", through, limit)
        if count:
            for sql in _INDEX_STATEMENTS:
                conn.execute(sql, (through, last))
            through = last
        audit_count, audit_last = _next(conn, "audit", audit_through, limit)
        if audit_count:
            conn.execute(_AUDIT_STATEMENT, (audit_through, audit_last))
            audit_through = audit_last
        if count or audit_count:
            conn.execute(
                "UPDATE search_index_state SET indexed_through = ?, audit_through = ?",
                (through, audit_through),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return Indexed(count, through, audit_count, audit_through)


def _next(conn: sqlite3.Connection, table: str, after: int, limit: int) -> tuple[int, int]:
    """How many of ``table``'s next ``limit`` rows after id ``after`` exist, and the last id."""
    count, last = conn.execute(
        f"SELECT count(*), coalesce(max(id), 0) FROM "  # table: a fixed name, never input
        f"(SELECT id FROM {table} WHERE id > ? ORDER BY id LIMIT ?)",
        (after, limit),
    ).fetchone()
    return int(count), int(last)
