"""SQL of edge telemetry (part of the SQLite metadata store)."""

from __future__ import annotations

import json
from typing import Any

from central.stores._sqlbase import SqlBase, dumps
from shared.telemetry import VersionStats


class TelemetryReads(SqlBase):
    async def telemetry_windows(
        self, model: str, version: str, *, fleet: str | None, since: str | None
    ) -> list[tuple[str, VersionStats]]:
        """Every stored window of a version (device, statistics), oldest first."""
        sql = "SELECT * FROM telemetry WHERE model = ? AND version = ?"
        params: list[Any] = [model, version]
        if fleet is not None:
            sql += " AND fleet = ?"
            params.append(fleet)
        if since is not None:
            sql += " AND window_end >= ?"
            params.append(since)
        rows = await self._all(sql + " ORDER BY id", params)
        return [
            (
                r["device"],
                VersionStats(
                    r["model"],
                    r["version"],
                    r["requests"],
                    r["errors"],
                    json.loads(r["latency"]),
                    json.loads(r["classes"]),
                    json.loads(r["features"]),
                    json.loads(r["outputs"]),
                ),
            )
            for r in rows
        ]


class TelemetryWrites(SqlBase):
    async def claim_batch(self, batch_id: str, device: str, at: str) -> bool:
        """Record a batch id; False if it was counted before (a retried upload)."""
        return (
            await self._change(
                "INSERT OR IGNORE INTO telemetry_batches (batch_id, device, received_at)"
                " VALUES (?, ?, ?)",
                (batch_id, device, at),
            )
            == 1
        )

    async def insert_window(
        self, device: str, fleet: str, start: str, end: str, stats: VersionStats
    ) -> None:
        await self._run(
            "INSERT INTO telemetry (model, version, device, fleet, window_start, window_end,"
            " requests, errors, latency, classes, features, outputs)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                stats.model,
                stats.version,
                device,
                fleet,
                start,
                end,
                stats.requests,
                stats.errors,
                dumps(stats.latency),
                dumps(stats.classes),
                dumps(stats.features),
                dumps(stats.outputs),
            ),
        )
