"""The query helpers every SQLite query class builds on."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite

from shared.errors import ConflictError


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


class SqlBase:
    """Runs bound queries on one aiosqlite connection."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    # Each read runs to completion in one hop to the connection's thread (execute, fetch,
    # close together). Interleaving other coroutines' statements with an open cursor would
    # make them share its read snapshot and miss writes committed meanwhile.

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self._conn.execute_fetchall(sql, params)
        return next(iter(rows), None)

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return list(await self._conn.execute_fetchall(sql, params))

    async def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute one write; returns the last row id. Constraint failures are conflicts."""
        try:
            row = await self._conn.execute_insert(sql, params)
            return int(row[0]) if row is not None and row[0] is not None else 0
        except sqlite3.IntegrityError as e:
            raise ConflictError(f"conflicting write: {e}") from e
