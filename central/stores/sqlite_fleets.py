"""SQL of fleets, fleet states and devices (part of the SQLite metadata store)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from central.stores._sqlbase import SqlBase, dumps


@dataclass(frozen=True, slots=True)
class FleetRow:
    id: int
    name: str
    description: str
    created_at: str


@dataclass(frozen=True, slots=True)
class Assignment:
    """A model assigned to a fleet, and what its alias resolves to now (if anything)."""

    model: str
    model_id: int
    alias: str
    version: str | None
    manifest_digest: str | None
    manifest: dict[str, Any] | None
    stage: str | None


@dataclass(frozen=True, slots=True)
class StateRow:
    fleet: str
    fleet_id: int
    serial: int
    envelope: dict[str, Any]
    expires_at: str


@dataclass(frozen=True, slots=True)
class DeviceRow:
    id: str
    fleet: str
    token_id: str
    created_at: str
    last_seen: str | None
    report: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fleet": self.fleet,
            "created_at": self.created_at,
            "last_seen": self.last_seen,
            "report": self.report,
        }


def _fleet(row: sqlite3.Row) -> FleetRow:
    return FleetRow(row["id"], row["name"], row["description"], row["created_at"])


def _device(row: sqlite3.Row) -> DeviceRow:
    report = None if row["report"] is None else json.loads(row["report"])
    return DeviceRow(
        row["id"], row["fleet"], row["token_id"], row["created_at"], row["last_seen"], report
    )


_DEVICE = "SELECT d.*, f.name AS fleet FROM devices d JOIN fleets f ON f.id = d.fleet_id "
_STATE = (
    "SELECT f.name AS fleet, s.fleet_id, s.serial, s.envelope, s.expires_at FROM fleet_states s "
    "JOIN fleets f ON f.id = s.fleet_id "
)


def _state(row: sqlite3.Row) -> StateRow:
    return StateRow(
        row["fleet"], row["fleet_id"], row["serial"], json.loads(row["envelope"]), row["expires_at"]
    )


class FleetReads(SqlBase):
    async def get_fleet(self, name: str) -> FleetRow | None:
        row = await self._one("SELECT * FROM fleets WHERE name = ?", (name,))
        return None if row is None else _fleet(row)

    async def get_fleet_by_id(self, fleet_id: int) -> str:
        row = await self._one("SELECT name FROM fleets WHERE id = ?", (fleet_id,))
        if row is None:
            raise LookupError(f"fleet id {fleet_id} does not exist")
        return str(row[0])

    async def list_fleets(self) -> list[FleetRow]:
        return [_fleet(r) for r in await self._all("SELECT * FROM fleets ORDER BY name")]

    async def assignments(self, fleet_id: int) -> list[Assignment]:
        rows = await self._all(
            "SELECT m.name, fm.model_id, fm.alias, v.version, v.manifest_digest, v.manifest,"
            " v.stage FROM fleet_models fm JOIN models m ON m.id = fm.model_id"
            " LEFT JOIN aliases a ON a.model_id = fm.model_id AND a.name = fm.alias"
            " LEFT JOIN versions v ON v.id = a.version_id WHERE fm.fleet_id = ? ORDER BY m.name",
            (fleet_id,),
        )
        return [
            Assignment(
                r["name"],
                r["model_id"],
                r["alias"],
                r["version"],
                r["manifest_digest"],
                None if r["manifest"] is None else json.loads(r["manifest"]),
                r["stage"],
            )
            for r in rows
        ]

    async def fleets_of_model(self, model_id: int) -> list[int]:
        rows = await self._all("SELECT fleet_id FROM fleet_models WHERE model_id = ?", (model_id,))
        return [int(r[0]) for r in rows]

    async def latest_state(self, fleet_id: int) -> StateRow | None:
        row = await self._one(
            _STATE + "WHERE s.fleet_id = ? ORDER BY s.serial DESC LIMIT 1", (fleet_id,)
        )
        return None if row is None else _state(row)

    async def latest_states(self) -> list[StateRow]:
        rows = await self._all(
            _STATE + "WHERE s.serial = (SELECT max(serial) FROM fleet_states x"
            " WHERE x.fleet_id = s.fleet_id)"
        )
        return [_state(r) for r in rows]

    async def state_change_seqs(self) -> dict[str, int]:
        """The change-log sequence number of each fleet's latest state."""
        rows = await self._all(
            "SELECT json_extract(data, '$.fleet') AS fleet, max(seq) AS seq FROM changes"
            " WHERE kind = 'fleet_state.updated' GROUP BY fleet"
        )
        return {r["fleet"]: int(r["seq"]) for r in rows}

    async def last_root_seq(self) -> int:
        row = await self._one(
            "SELECT coalesce(max(seq), 0) FROM changes WHERE kind = 'root.rotated'"
        )
        return 0 if row is None else int(row[0])

    async def roots_after(self, version: int) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT envelope FROM roots WHERE version > ? ORDER BY version", (version,)
        )
        return [dict(json.loads(r[0])) for r in rows]

    async def get_device(self, device_id: str) -> DeviceRow | None:
        row = await self._one(_DEVICE + "WHERE d.id = ?", (device_id,))
        return None if row is None else _device(row)

    async def device_by_token(self, token_id: str) -> DeviceRow | None:
        row = await self._one(_DEVICE + "WHERE d.token_id = ?", (token_id,))
        return None if row is None else _device(row)

    async def devices_of(self, fleet_id: int) -> list[DeviceRow]:
        rows = await self._all(_DEVICE + "WHERE d.fleet_id = ? ORDER BY d.id", (fleet_id,))
        return [_device(r) for r in rows]

    async def blobs_of_versions(self, versions: Iterable[tuple[str, str]]) -> set[str]:
        """The blobs the given (model, version) pairs hold."""
        wanted = list(versions)
        if not wanted:
            return set()
        pairs = ",".join("(?, ?)" for _ in wanted)
        rows = await self._all(  # each pair looked up by name, then by (model, version)
            f"WITH wanted(model, version) AS (VALUES {pairs}) "
            "SELECT DISTINCT json_extract(f.value, '$.digest') FROM wanted w"
            " JOIN models m ON m.name = w.model"
            " JOIN versions v ON v.model_id = m.id AND v.version = w.version,"
            " json_each(v.files) f",
            [x for pair in wanted for x in pair],
        )
        return {r[0] for r in rows}


class FleetWrites(SqlBase):
    async def insert_fleet(self, name: str, description: str, at: str) -> int:
        return await self._run(
            "INSERT INTO fleets (name, description, created_at) VALUES (?, ?, ?)",
            (name, description, at),
        )

    async def assign(self, fleet_id: int, model_id: int, alias: str) -> None:
        await self._run(
            "INSERT INTO fleet_models (fleet_id, model_id, alias) VALUES (?, ?, ?)"
            " ON CONFLICT (fleet_id, model_id) DO UPDATE SET alias = excluded.alias",
            (fleet_id, model_id, alias),
        )

    async def unassign(self, fleet_id: int, model_id: int) -> None:
        await self._run(
            "DELETE FROM fleet_models WHERE fleet_id = ? AND model_id = ?", (fleet_id, model_id)
        )

    async def insert_state(
        self, fleet_id: int, serial: int, envelope: dict[str, Any], expires_at: str, at: str
    ) -> None:
        await self._run(
            "INSERT INTO fleet_states (fleet_id, serial, envelope, expires_at, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (fleet_id, serial, dumps(envelope), expires_at, at),
        )

    async def insert_device(self, device_id: str, fleet_id: int, token_id: str, at: str) -> None:
        await self._run(
            "INSERT INTO devices (id, fleet_id, token_id, created_at) VALUES (?, ?, ?, ?)",
            (device_id, fleet_id, token_id, at),
        )

    async def save_report(self, device_id: str, report: dict[str, Any], at: str) -> None:
        await self._run(
            "UPDATE devices SET report = ?, last_seen = ? WHERE id = ?",
            (dumps(report), at, device_id),
        )
