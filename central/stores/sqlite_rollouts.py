"""SQL of rollouts (part of the SQLite metadata store)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from central.stores._sqlbase import SqlBase, dumps

ACTIVE = ("running", "paused", "awaiting_approval")


@dataclass(frozen=True, slots=True)
class RolloutRow:
    id: str
    model: str
    fleet: str
    fleet_id: int
    candidate: str
    baseline: str
    strategy: str
    steps: list[int]
    step: int
    sticky_header: str | None
    soak_seconds: float
    rules: dict[str, Any]
    status: str
    reason: str | None
    step_started_at: str
    created_by: str
    created_at: str
    updated_at: str
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def percent(self) -> int:
        return self.steps[self.step]


def _row(r: sqlite3.Row) -> RolloutRow:
    return RolloutRow(
        id=r["id"],
        model=r["model"],
        fleet=r["fleet"],
        fleet_id=r["fleet_id"],
        candidate=r["candidate"],
        baseline=r["baseline"],
        strategy=r["strategy"],
        steps=json.loads(r["steps"]),
        step=r["step"],
        sticky_header=r["sticky_header"],
        soak_seconds=r["soak_seconds"],
        rules=json.loads(r["rules"]),
        status=r["status"],
        reason=r["reason"],
        step_started_at=r["step_started_at"],
        created_by=r["created_by"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


_SELECT = "SELECT r.*, f.name AS fleet FROM rollouts r JOIN fleets f ON f.id = r.fleet_id "


class RolloutReads(SqlBase):
    async def get_rollout(self, rollout_id: str) -> RolloutRow | None:
        row = await self._one(_SELECT + "WHERE r.id = ?", (rollout_id,))
        if row is None:
            return None
        events = await self._all(
            "SELECT at, kind, detail FROM rollout_events WHERE rollout_id = ? ORDER BY id",
            (rollout_id,),
        )
        found = _row(row)
        found.events.extend(
            {"at": e["at"], "kind": e["kind"], **json.loads(e["detail"])} for e in events
        )
        return found

    async def list_rollouts(
        self, *, fleet: str | None = None, model: str | None = None, status: str | None = None
    ) -> list[RolloutRow]:
        sql, params = _SELECT + "WHERE 1 = 1", []
        for column, value in (("f.name", fleet), ("r.model", model), ("r.status", status)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        return [_row(r) for r in await self._all(sql + " ORDER BY r.created_at DESC", params)]

    async def active_rollouts(self, fleet_id: int) -> list[RolloutRow]:
        rows = await self._all(
            _SELECT
            + "WHERE r.fleet_id = ? AND r.status IN ('running', 'paused', 'awaiting_approval')",
            (fleet_id,),
        )
        return [_row(r) for r in rows]

    async def running_rollouts(self) -> list[RolloutRow]:
        rows = await self._all(_SELECT + "WHERE r.status IN ('running', 'awaiting_approval')")
        return [_row(r) for r in rows]


class RolloutWrites(SqlBase):
    async def insert_rollout(self, r: RolloutRow) -> None:
        await self._run(
            "INSERT INTO rollouts (id, model, fleet_id, candidate, baseline, strategy, steps,"
            " step, sticky_header, soak_seconds, rules, status, reason, step_started_at,"
            " created_by, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                r.id,
                r.model,
                r.fleet_id,
                r.candidate,
                r.baseline,
                r.strategy,
                dumps(r.steps),
                r.step,
                r.sticky_header,
                r.soak_seconds,
                dumps(r.rules),
                r.status,
                r.reason,
                r.step_started_at,
                r.created_by,
                r.created_at,
                r.updated_at,
            ),
        )

    async def update_rollout(
        self,
        rollout_id: str,
        *,
        status: str,
        step: int,
        step_started_at: str,
        reason: str | None,
        at: str,
    ) -> None:
        await self._run(
            "UPDATE rollouts SET status = ?, step = ?, step_started_at = ?, reason = ?,"
            " updated_at = ? WHERE id = ?",
            (status, step, step_started_at, reason, at, rollout_id),
        )

    async def add_rollout_event(
        self, rollout_id: str, kind: str, detail: dict[str, Any], at: str
    ) -> None:
        await self._run(
            "INSERT INTO rollout_events (rollout_id, at, kind, detail) VALUES (?, ?, ?, ?)",
            (rollout_id, at, kind, dumps(detail)),
        )
