"""The query helpers every SQLite query class builds on, and the two ways to run them.

A query class (:class:`SqlBase`) runs its statements through a :class:`Statements`:

- :class:`ThreadedStatements` sends each statement to an aiosqlite connection's
  thread. Reads use it: a search may take milliseconds and must not hold the loop.
- :class:`InlineStatements` runs each statement on the calling thread, for the short
  write transactions of the single writer connection. Handing an indexed insert to a
  thread and back costs several times more than the insert itself, and a registration
  runs a dozen of them; inline, a transaction costs what its SQL costs.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import aiosqlite
import orjson

from shared.errors import ConflictError


def dumps(obj: Any) -> str:
    """A stored JSON column: compact, sorted keys, UTF-8 kept as is."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # integers beyond 64 bits, non-string keys
        return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


class Statements(Protocol):
    """How a query class reaches its connection."""

    async def fetchall(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]: ...

    async def insert(self, sql: str, params: Sequence[Any]) -> int: ...

    async def change(self, sql: str, params: Sequence[Any]) -> int: ...

    async def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...


class ThreadedStatements:
    """Each statement runs to completion in one hop to an aiosqlite connection's thread.

    Reads execute, fetch and close together: interleaving other coroutines' statements
    with an open cursor would make them share its read snapshot and miss writes
    committed meanwhile.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def fetchall(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        return list(await self._conn.execute_fetchall(sql, params))

    async def insert(self, sql: str, params: Sequence[Any]) -> int:
        row = await self._conn.execute_insert(sql, params)
        return int(row[0]) if row is not None and row[0] is not None else 0

    async def change(self, sql: str, params: Sequence[Any]) -> int:
        async with self._conn.execute(sql, params) as cur:
            return cur.rowcount

    async def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def close(self) -> None:
        await self._conn.close()


class InlineStatements:
    """Each statement runs at once on the calling thread (the writer's short transactions)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def fetchall(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        return self._conn.execute(sql, params).fetchall()

    async def insert(self, sql: str, params: Sequence[Any]) -> int:
        return self._conn.execute(sql, params).lastrowid or 0

    async def change(self, sql: str, params: Sequence[Any]) -> int:
        return self._conn.execute(sql, params).rowcount

    async def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)


class SqlBase:
    """Runs bound queries through one :class:`Statements`."""

    def __init__(self, db: Statements) -> None:
        self._db = db

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self._db.fetchall(sql, params)
        return rows[0] if rows else None

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return await self._db.fetchall(sql, params)

    async def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute one write; returns the last row id. Constraint failures are conflicts."""
        try:
            return await self._db.insert(sql, params)
        except sqlite3.IntegrityError as e:
            raise ConflictError(f"conflicting write: {e}") from e

    async def _change(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute one write; returns how many rows it changed."""
        try:
            return await self._db.change(sql, params)
        except sqlite3.IntegrityError as e:
            raise ConflictError(f"conflicting write: {e}") from e

    async def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Execute one write once per row of parameters."""
        try:
            await self._db.many(sql, rows)
        except sqlite3.IntegrityError as e:
            raise ConflictError(f"conflicting write: {e}") from e
