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

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        async with self._conn.execute(sql, params) as cur:
            row: sqlite3.Row | None = await cur.fetchone()
            return row

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute one write; returns the last row id. Constraint failures are conflicts."""
        try:
            async with self._conn.execute(sql, params) as cur:
                return int(cur.lastrowid or 0)
        except sqlite3.IntegrityError as e:
            raise ConflictError(f"conflicting write: {e}") from e
