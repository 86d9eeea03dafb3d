"""Telemetry: per-version request statistics, buffered in SQLite, uploaded idempotently.

Inference only touches in-memory counters (no I/O on the request path). Every interval
the counters become a batch with a unique id in the cache's outbox, which survives
restarts and long offline periods (bounded: the oldest batches are dropped and counted
when it is full); the uploader sends queued batches when central is reachable, and
central ignores a batch id it has already counted, so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import numpy as np

from edge_agent.cache import Cache
from edge_agent.drift import FeatureBinner, binner_for
from edge_agent.fetcher import Fetcher
from edge_agent.slots import LoadedVersion
from shared.errors import SkiffError
from shared.telemetry import N_OUTPUT_BINS, OUTPUT_EDGES, VersionStats
from shared.timeutil import format_time, utcnow

logger = logging.getLogger(__name__)

UPLOAD_BATCHES = 50  # batches per upload request
MAX_LABELS = 1024  # predicted labels (or output values) counted per request
EDGES = np.array(OUTPUT_EDGES)
MAX_REFERENCES = 64  # versions whose reference distribution is kept (the oldest go first)
# Requests whose float outputs are binned together: one numpy pass for many requests keeps
# the per-request cost to appending a view.
PENDING_REQUESTS = 256


def _float_outputs(outputs: dict[str, Any] | None) -> list[tuple[str, np.ndarray]]:
    """Each numeric (floating point) output's values, at most MAX_LABELS of them.

    Copies of those values: a view would keep the whole output array alive until binned.
    """
    return [
        (str(name), np.array(value.ravel()[:MAX_LABELS], dtype=np.float64))
        for name, value in (outputs or {}).items()
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size
    ]


def _counts(values: np.ndarray) -> list[int]:
    """Counts of finite ``values`` on the fixed output bins."""
    flat = values[np.isfinite(values)]
    counts = np.bincount(np.searchsorted(EDGES, flat, side="right"), minlength=N_OUTPUT_BINS)
    return [int(n) for n in counts]


def _labels(outputs: dict[str, Any] | None) -> list[str] | None:
    """The predicted classes of a request: its first integer or string tensor output."""
    for value in (outputs or {}).values():
        if isinstance(value, np.ndarray) and value.dtype.kind in "iuUOb" and value.size:
            return [str(v) for v in value.ravel()[:MAX_LABELS].tolist()]
    return None


class TelemetryRecorder:
    """Counts what the slots serve, per model version, and ships it to central."""

    def __init__(self, cache: Cache, *, max_batches: int) -> None:
        self._cache = cache
        self._max_batches = max_batches
        self._stats: dict[tuple[str, str], VersionStats] = {}
        self._binners: dict[tuple[str, str], FeatureBinner] = {}
        # float outputs not binned yet, per version: (requests, values by output name)
        self._pending: dict[tuple[str, str], tuple[int, dict[str, list[np.ndarray]]]] = {}
        self._window_start = format_time(utcnow())
        self.dropped = 0
        self.uploaded = 0

    def set_reference(self, model: str, version: str, metadata: dict[str, Any] | None) -> None:
        """Count the inputs of ``model@version`` on the bins of its metadata's reference."""
        key = (model, version)
        self._binners.pop(key, None)
        binner = binner_for(metadata)
        if binner is None:
            return
        self._binners[key] = binner
        while len(self._binners) > MAX_REFERENCES:
            del self._binners[next(iter(self._binners))]

    def observe(
        self,
        loaded: LoadedVersion,
        seconds: float,
        ok: bool,
        outputs: dict[str, Any] | None,
        inputs: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Count one request (called on the request path: memory only)."""
        key = (loaded.model, loaded.version)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = VersionStats(loaded.model, loaded.version)
        stats.observe(seconds * 1000.0, ok, _labels(outputs) if ok else None)
        floats = _float_outputs(outputs) if ok else None
        if floats:
            requests, values = self._pending.get(key, (0, {}))
            for name, flat in floats:
                values.setdefault(name, []).append(flat)
            self._pending[key] = (requests + 1, values)
            if requests + 1 >= PENDING_REQUESTS:
                self._bin(key)
        binner = self._binners.get(key)
        if ok and inputs and binner is not None:
            binner.add(stats.features, inputs)

    def _bin(self, key: tuple[str, str]) -> None:
        """Add the pending float outputs of one version to its output histograms."""
        _, values = self._pending.pop(key, (0, {}))
        stats = self._stats.get(key)
        if stats is None:
            return
        for name, arrays in values.items():
            stats.observe_output(name, _counts(np.concatenate(arrays)))

    async def flush(self) -> str | None:
        """Move the current counters into the outbox as one batch; its id (None if empty)."""
        for key in list(self._pending):
            self._bin(key)
        if not self._stats:
            return None
        stats, self._stats = self._stats, {}
        start, self._window_start = self._window_start, format_time(utcnow())
        batch_id = uuid.uuid4().hex
        body = {
            "batch_id": batch_id,
            "window_start": start,
            "window_end": self._window_start,
            "versions": [s.to_dict() for s in stats.values()],
        }
        dropped = await self._cache.add_telemetry(batch_id, body, self._max_batches)
        if dropped:
            self.dropped += dropped
            logger.warning("Telemetry outbox full: dropped %d oldest batch(es)", dropped)
        return batch_id

    async def upload(self, fetcher: Fetcher, device_id: str) -> int:
        """Send queued batches until the outbox is empty; the number sent."""
        sent = 0
        for _ in range(1000):  # bounded: at most 50,000 batches per call
            queued = await self._cache.telemetry_batches(UPLOAD_BATCHES)
            if not queued:
                break
            await fetcher.post_json(
                f"/api/v1/devices/{device_id}/telemetry",
                {"batches": [body for _, body in queued], "dropped": self.dropped},
            )
            await self._cache.delete_telemetry([row for row, _ in queued])
            sent += len(queued)
        self.uploaded += sent
        return sent

    async def run(self, fetcher: Fetcher, device_id: str, interval: float) -> None:
        """Flush and upload every ``interval`` seconds until cancelled (then flush once)."""
        try:
            while True:
                await asyncio.sleep(interval)
                await self.flush()
                try:
                    await self.upload(fetcher, device_id)
                except SkiffError as e:
                    logger.debug("Telemetry kept for later: %s", e)
        finally:
            await asyncio.shield(self.flush())
