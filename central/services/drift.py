"""Data drift: how far the inputs devices see have moved from a version's training data.

Both sides are histograms on the same bins (the reference's, see :mod:`shared.drift`):
the reference counts signed into the version's metadata, and the live counts devices
send with their telemetry. Per input feature:

- PSI (population stability index) = sum over bins of (q - p) * ln(q / p), with p the
  reference share of a bin and q the live share. An empty bin would make the logarithm
  infinite, so every share is floored at ``EPSILON`` (1e-4) before the sum.
- KS: the two-sample Kolmogorov-Smirnov statistic on the binned data, the largest gap
  between the two cumulative distributions at the bin edges (0: same, 1: disjoint).

The level is ``alert`` from ``drift_psi_alert`` or ``drift_ks_alert``, ``warn`` from
``drift_psi_warn``, else ``ok``; with fewer than ``drift_min_samples`` live values it is
``insufficient``. A background check evaluates each (version, fleet) that received
telemetry and appends a ``drift.alert`` change (and an audit row) when a feature enters
``alert``, once per episode: it must leave ``alert`` before it can alert again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from central.domain import SYSTEM, Actor
from central.services.permissions import READ, require
from central.stores.sqlite import SqliteStore
from shared.drift import FeatureBins, parse_reference
from shared.errors import FormatError, InvalidInputError, NotFoundError
from shared.telemetry import VersionStats
from shared.timeutil import format_time, parse_time, utcnow

logger = logging.getLogger(__name__)

EPSILON = 1e-4  # floor of a bin's share in PSI, so an empty bin costs a finite amount
LEVELS = ("insufficient", "ok", "warn", "alert")  # in order of concern


def _shares(counts: Sequence[int]) -> list[float]:
    total = sum(counts)
    return [max(c / total, EPSILON) for c in counts]


def psi(reference: Sequence[int], live: Sequence[int]) -> float:
    """Population stability index of two histograms on the same bins."""
    if len(reference) != len(live) or not sum(reference) or not sum(live):
        raise ValueError("psi needs two non-empty histograms with the same number of bins")
    return sum(
        (q - p) * math.log(q / p) for p, q in zip(_shares(reference), _shares(live), strict=True)
    )


def ks(reference: Sequence[int], live: Sequence[int]) -> float:
    """Largest gap between the two cumulative distributions at the bin edges."""
    if len(reference) != len(live) or not sum(reference) or not sum(live):
        raise ValueError("ks needs two non-empty histograms with the same number of bins")
    n_ref, n_live = sum(reference), sum(live)
    cdf_ref = itertools.accumulate(c / n_ref for c in reference)
    cdf_live = itertools.accumulate(c / n_live for c in live)
    return max(abs(a - b) for a, b in zip(cdf_ref, cdf_live, strict=True))


@dataclass(frozen=True, slots=True)
class Thresholds:
    psi_warn: float = 0.1
    psi_alert: float = 0.25
    ks_alert: float = 0.2
    min_samples: int = 200

    def level(self, psi_value: float, ks_value: float, live_n: int) -> str:
        if live_n < self.min_samples:
            return "insufficient"
        if psi_value >= self.psi_alert or ks_value >= self.ks_alert:
            return "alert"
        return "warn" if psi_value >= self.psi_warn else "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "psi_warn": self.psi_warn,
            "psi_alert": self.psi_alert,
            "ks_alert": self.ks_alert,
            "min_samples": self.min_samples,
        }


def compare(
    reference: Mapping[str, FeatureBins], live: Mapping[str, list[int]], thresholds: Thresholds
) -> dict[str, dict[str, Any]]:
    """Per reference feature: PSI, KS, live sample count and level."""
    out: dict[str, dict[str, Any]] = {}
    for name, bins in reference.items():
        counts = live.get(name)
        if counts is None or len(counts) != len(bins.counts) or not sum(counts):
            out[name] = {"psi": None, "ks": None, "live_n": 0, "level": "insufficient"}
            continue
        p, k, n = psi(bins.counts, counts), ks(bins.counts, counts), sum(counts)
        out[name] = {
            "psi": round(p, 6),
            "ks": round(k, 6),
            "live_n": n,
            "level": thresholds.level(p, k, n),
        }
    return out


def _worst(features: Mapping[str, Mapping[str, Any]]) -> str:
    return max((f["level"] for f in features.values()), key=LEVELS.index, default="insufficient")


def _merge(windows: Iterable[VersionStats]) -> dict[str, list[int]]:
    total = VersionStats("", "")
    for stats in windows:
        total.merge(stats)
    return total.features


class DriftService:
    """Compares live input distributions with each version's reference; raises alerts."""

    def __init__(self, store: SqliteStore, thresholds: Thresholds, *, window_seconds: float):
        self._store = store
        self._thresholds = thresholds
        self._window = timedelta(seconds=window_seconds)
        self._cursor = 0  # last telemetry row the background check has seen

    async def _reference(self, model: str, version: str) -> dict[str, FeatureBins] | None:
        v = await self._store.get_version(model, version)
        if v is None:
            raise NotFoundError(f"version {model}@{version} does not exist")
        value = v.metadata.get("reference")
        if value is None:
            return None
        try:
            return parse_reference(value)
        except FormatError as e:  # validated on registration; never trust it blindly
            logger.warning("Reference of %s@%s is unusable: %s", model, version, e)
            return None

    async def report(
        self, actor: Actor, model: str, version: str, *, fleet: str | None, since: str | None
    ) -> dict[str, Any]:
        """Drift of every reference feature, over the fleet (or every fleet) and per device."""
        require(actor, READ, model)
        try:
            since = None if since is None else format_time(parse_time(since))
        except FormatError as e:
            raise InvalidInputError(f"since: {e}") from e
        reference = await self._reference(model, version)
        if reference is None:
            raise NotFoundError(
                f"version {model}@{version} has no reference distribution; "
                "push it with --reference-data to detect drift"
            )
        windows = await self._store.telemetry_windows(model, version, fleet=fleet, since=since)
        by_device: dict[str, list[VersionStats]] = {}
        for device, stats in windows:
            by_device.setdefault(device, []).append(stats)
        features = compare(reference, _merge(s for _, s in windows), self._thresholds)
        devices = {}
        for device, stats_list in sorted(by_device.items()):
            per_device = compare(reference, _merge(stats_list), self._thresholds)
            devices[device] = {"level": _worst(per_device), "features": per_device}
        return {
            "model": model,
            "version": version,
            "fleet": fleet,
            "since": since,
            "thresholds": self._thresholds.to_dict(),
            "level": _worst(features),
            "features": features,
            "devices": devices,
        }

    async def check(self) -> int:
        """Evaluate every (version, fleet) with new telemetry; the number of alerts raised."""
        fresh, last = await self._store.telemetry_since(self._cursor)
        since = format_time(utcnow() - self._window)
        raised = 0
        for model, version, fleet in fresh:
            reference = await self._reference(model, version)
            if reference is None:
                continue
            windows = await self._store.telemetry_windows(model, version, fleet=fleet, since=since)
            features = compare(reference, _merge(s for _, s in windows), self._thresholds)
            raised += await self._record(model, version, fleet, features)
        self._cursor = last
        return raised

    async def _record(
        self, model: str, version: str, fleet: str, features: Mapping[str, Mapping[str, Any]]
    ) -> int:
        known = await self._store.drift_levels(model, version, fleet)
        judged = {n: r["level"] for n, r in features.items() if r["level"] != "insufficient"}
        if all(known.get(n) == level for n, level in judged.items()):
            return 0  # nothing moved: no write transaction
        raised = 0
        now = format_time(utcnow())
        async with self._store.transaction() as tx:
            before = await tx.drift_levels(model, version, fleet)
            for name, result in features.items():
                level = result["level"]
                if level == "insufficient" or before.get(name) == level:
                    continue
                await tx.set_drift_level(model, version, fleet, name, level, now)
                if level != "alert" or before.get(name) == "alert":
                    continue
                data = {
                    "model": model,
                    "version": version,
                    "fleet": fleet,
                    "feature": name,
                    "psi": result["psi"],
                    "ks": result["ks"],
                    "live_n": result["live_n"],
                }
                await tx.append_change("drift.alert", model=model, version=version, data=data)
                await tx.append_audit(
                    actor=SYSTEM.name,
                    role=SYSTEM.role,
                    action="drift.alert",
                    target=f"{model}@{version}",
                    detail={"fleet": fleet, "feature": name, "psi": result["psi"]},
                )
                logger.warning(
                    "Drift alert: %s@%s in fleet %s, feature %s (PSI %.3f, KS %.3f)",
                    model,
                    version,
                    fleet,
                    name,
                    result["psi"],
                    result["ks"],
                )
                raised += 1
        return raised


async def keep_checking(service: DriftService, interval: float) -> None:
    """Run :meth:`DriftService.check` every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await service.check()
        except Exception:
            logger.exception("Drift check failed; trying again in %.0f s", interval)
