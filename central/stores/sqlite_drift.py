"""SQL of data-drift checks (part of the SQLite metadata store)."""

from __future__ import annotations

from central.stores._sqlbase import SqlBase


class DriftReads(SqlBase):
    async def telemetry_since(self, after_id: int) -> tuple[list[tuple[str, str, str]], int]:
        """The (model, version, fleet) with telemetry windows stored after row ``after_id``,
        and the last row id."""
        # The last id first, and only rows up to it: a window committed between the two
        # reads is left for the next call, not skipped.
        row = await self._one("SELECT coalesce(max(id), 0) AS last FROM telemetry")
        last = int(row["last"]) if row is not None else after_id
        rows = await self._all(
            "SELECT DISTINCT model, version, fleet FROM telemetry WHERE id > ? AND id <= ?"
            " ORDER BY model, version, fleet",
            (after_id, last),
        )
        found = [(r["model"], r["version"], r["fleet"]) for r in rows]
        return found, max(last, after_id)

    async def drift_levels(self, model: str, version: str, fleet: str) -> dict[str, str]:
        """The last level of each feature of a version in a fleet."""
        rows = await self._all(
            "SELECT feature, level FROM drift_levels WHERE model = ? AND version = ? AND fleet = ?",
            (model, version, fleet),
        )
        return {r["feature"]: r["level"] for r in rows}


class DriftWrites(SqlBase):
    async def set_drift_level(
        self, model: str, version: str, fleet: str, feature: str, level: str, at: str
    ) -> None:
        await self._run(
            "INSERT INTO drift_levels (model, version, fleet, feature, level, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (model, version, fleet, feature)"
            " DO UPDATE SET level = excluded.level, updated_at = excluded.updated_at",
            (model, version, fleet, feature, level, at),
        )
