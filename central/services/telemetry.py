"""Edge telemetry on central: idempotent ingestion of device batches, and summaries.

A batch is counted once: its id is claimed in the same transaction that stores its
windows, so an upload retried after a lost answer changes nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from central.domain import Actor
from central.services.permissions import READ, require
from central.services.sync import SyncService
from central.stores.sqlite import SqliteStore
from shared.errors import ForbiddenError, FormatError, InvalidInputError
from shared.telemetry import MAX_VERSIONS_PER_BATCH, N_BUCKETS, OUTPUT_EDGES, VersionStats, quantile
from shared.timeutil import format_time, parse_time, utcnow

logger = logging.getLogger(__name__)

MAX_BATCHES = 500


def summarize(windows: list[tuple[str, VersionStats]]) -> dict[str, Any]:
    """Merge windows into one summary: counts, error rate, latency percentiles, classes."""
    total = VersionStats("", "")
    devices = set()
    for device, stats in windows:
        total.merge(stats)
        devices.add(device)
    latency = {f"p{int(q * 100)}": quantile(total.latency, q) for q in (0.5, 0.95, 0.99)}
    return {
        "devices": len(devices),
        "requests": total.requests,
        "errors": total.errors,
        "error_rate": total.errors / total.requests if total.requests else None,
        "latency_ms": latency,
        "latency_buckets": total.latency if total.requests else [0] * N_BUCKETS,
        "classes": dict(sorted(total.classes.items(), key=lambda kv: -kv[1])),
        "outputs": {
            name: {"edges": list(OUTPUT_EDGES), "counts": counts}
            for name, counts in sorted(total.outputs.items())
        },
    }


class TelemetryService:
    """Takes device telemetry in and answers what a version did in the field."""

    def __init__(self, store: SqliteStore, sync: SyncService) -> None:
        self._store = store
        self._sync = sync

    async def ingest(self, actor: Actor, device_id: str, body: Any) -> dict[str, int]:
        device = await self._sync.device(actor)
        if device.id != device_id:
            raise ForbiddenError(f"device {device.id} may not send telemetry for {device_id}")
        batches = body.get("batches") if isinstance(body, dict) else None
        if not isinstance(batches, list) or len(batches) > MAX_BATCHES:
            raise InvalidInputError(f'body must be {{"batches": [...]}} with at most {MAX_BATCHES}')
        parsed = [self._parse(b) for b in batches]
        accepted = duplicates = 0
        now = format_time(utcnow())
        async with self._store.transaction() as tx:
            for batch_id, start, end, versions in parsed:
                if not await tx.claim_batch(batch_id, device.id, now):
                    duplicates += 1
                    continue
                for stats in versions:
                    await tx.insert_window(device.id, device.fleet, start, end, stats)
                accepted += 1
        logger.debug(
            "Device %s telemetry: %d batch(es), %d duplicate(s)", device.id, accepted, duplicates
        )
        return {"accepted": accepted, "duplicates": duplicates}

    @staticmethod
    def _parse(batch: Any) -> tuple[str, str, str, list[VersionStats]]:
        try:
            if not isinstance(batch, dict):
                raise FormatError("a batch must be an object")
            batch_id = batch["batch_id"]
            if not isinstance(batch_id, str) or not 8 <= len(batch_id) <= 64:
                raise FormatError("batch_id must be a string of 8 to 64 characters")
            start = format_time(parse_time(batch["window_start"]))
            end = format_time(parse_time(batch["window_end"]))
            versions = batch["versions"]
            if not isinstance(versions, list) or len(versions) > MAX_VERSIONS_PER_BATCH:
                raise FormatError("versions must be a list")
            return batch_id, start, end, [VersionStats.from_dict(v) for v in versions]
        except (KeyError, TypeError, FormatError) as e:
            raise InvalidInputError(f"malformed telemetry batch: {e}") from e

    async def summary(
        self, actor: Actor, model: str, version: str, *, fleet: str | None, since: str | None
    ) -> dict[str, Any]:
        require(actor, READ, model)
        windows = await self._store.telemetry_windows(model, version, fleet=fleet, since=since)
        return {"model": model, "version": version, "fleet": fleet, **summarize(windows)}
