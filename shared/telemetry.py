"""Edge telemetry: mergeable per-version statistics and the batch wire format.

Latency goes into fixed log-scale buckets, so histograms from any number of devices and
windows merge by adding counts, and central computes percentiles from the merged counts.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.drift import MAX_BINS, MAX_FEATURES, MAX_NAME, MIN_BINS
from shared.errors import FormatError

# Upper bounds in milliseconds: 0.05 ms doubling every two buckets up to ~52 s, then +Inf.
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(round(0.05 * 2 ** (i / 2), 6) for i in range(41))
N_BUCKETS = len(LATENCY_BOUNDS_MS) + 1
MAX_CLASSES = 256  # distinct predicted classes counted per version; the rest go to "other"
MAX_VERSIONS_PER_BATCH = 1000
# Numeric outputs: symmetric log-scale bins, +-1e-4 .. +-1e6 and zero; mergeable everywhere.
_POSITIVE = tuple(10.0**k for k in range(-4, 7))
OUTPUT_EDGES: tuple[float, ...] = (*(-x for x in reversed(_POSITIVE)), 0.0, *_POSITIVE)
N_OUTPUT_BINS = len(OUTPUT_EDGES) + 1
MAX_OUTPUTS = 16


def bucket_of(ms: float) -> int:
    """The index of the bucket that counts a latency of ``ms`` milliseconds."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, ms)


def quantile(counts: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a bucketed latency, as its bucket's upper bound (ms)."""
    total = sum(counts)
    if total == 0:
        return None
    rank = math.ceil(q * total)
    running = 0
    for i, n in enumerate(counts):
        running += n
        if running >= rank:
            return LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else math.inf
    return math.inf


@dataclass(slots=True)
class VersionStats:
    """What one device saw of one model version during one window."""

    model: str
    version: str
    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)
    classes: dict[str, int] = field(default_factory=dict)
    # per input feature of the version's reference: live counts on the reference's bins
    features: dict[str, list[int]] = field(default_factory=dict)
    # per numeric (non-class) output: counts on the fixed OUTPUT_EDGES bins
    outputs: dict[str, list[int]] = field(default_factory=dict)

    def observe_output(self, name: str, counts: list[int]) -> None:
        """Add a request's histogram of one numeric output (bounded number of outputs)."""
        mine = self.outputs.get(name)
        if mine is None:
            if len(self.outputs) < MAX_OUTPUTS:
                self.outputs[name] = list(counts)
        else:
            self.outputs[name] = [a + b for a, b in zip(mine, counts, strict=True)]

    def observe(self, ms: float, ok: bool, labels: list[str] | None = None) -> None:
        self.requests += 1
        if not ok:
            self.errors += 1
        self.latency[bucket_of(ms)] += 1
        for label in labels or ():
            key = label if label in self.classes or len(self.classes) < MAX_CLASSES else "other"
            self.classes[key] = self.classes.get(key, 0) + 1

    def merge(self, other: VersionStats) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]
        for key, n in other.classes.items():
            self.classes[key] = self.classes.get(key, 0) + n
        for name, counts in other.features.items():
            mine = self.features.get(name)
            if mine is None:
                self.features[name] = list(counts)
            elif len(mine) == len(counts):
                self.features[name] = [a + b for a, b in zip(mine, counts, strict=True)]
        for name, counts in other.outputs.items():
            self.observe_output(name, counts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "requests": self.requests,
            "errors": self.errors,
            "latency": list(self.latency),
            "classes": dict(self.classes),
            "features": {name: list(counts) for name, counts in self.features.items()},
            "outputs": {name: list(counts) for name, counts in self.outputs.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VersionStats:
        """Parse untrusted input.

        Raises:
            FormatError: a field is missing or out of range.
        """
        try:
            model, version = str(d["model"]), str(d["version"])
            requests, errors = _count(d["requests"]), _count(d["errors"])
            latency = [_count(n) for n in d["latency"]]
            classes = {str(k)[:128]: _count(v) for k, v in dict(d.get("classes", {})).items()}
            features = _features(d.get("features", {}))
            outputs = _outputs(d.get("outputs", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"malformed version statistics: {e}") from e
        if len(latency) != N_BUCKETS or errors > requests or len(classes) > MAX_CLASSES + 1:
            raise FormatError("malformed version statistics: bucket count or totals")
        if sum(latency) != requests:
            raise FormatError("malformed version statistics: latency counts != requests")
        return cls(model, version, requests, errors, latency, classes, features, outputs)


def _features(value: Any) -> dict[str, list[int]]:
    """Live feature counts: bounded like a reference (absent in older batches: empty)."""
    if not isinstance(value, Mapping) or len(value) > MAX_FEATURES:
        raise ValueError(f"features must be an object of at most {MAX_FEATURES} features")
    out = {}
    for name, counts in value.items():
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
            raise ValueError(f"feature names must be 1 to {MAX_NAME} characters")
        if not isinstance(counts, list) or not MIN_BINS <= len(counts) <= MAX_BINS:
            raise ValueError(f"feature {name[:64]!r}: {MIN_BINS} to {MAX_BINS} bin counts")
        out[name] = [_count(n) for n in counts]
    return out


def _outputs(value: Any) -> dict[str, list[int]]:
    """Output histograms on OUTPUT_EDGES (absent in older batches: empty)."""
    if not isinstance(value, Mapping) or len(value) > MAX_OUTPUTS:
        raise ValueError(f"outputs must be an object of at most {MAX_OUTPUTS} outputs")
    out = {}
    for name, counts in value.items():
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
            raise ValueError(f"output names must be 1 to {MAX_NAME} characters")
        if not isinstance(counts, list) or len(counts) != N_OUTPUT_BINS:
            raise ValueError(f"output {name[:64]!r}: {N_OUTPUT_BINS} bin counts")
        out[name] = [_count(n) for n in counts]
    return out


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise ValueError(f"expected a count, got {value!r}")
    return value
