"""Telemetry statistics merge exactly and reject malformed input."""

from __future__ import annotations

import itertools
import math

import pytest

from shared.errors import FormatError
from shared.telemetry import (
    LATENCY_BOUNDS_MS,
    N_BUCKETS,
    N_OUTPUT_BINS,
    OUTPUT_EDGES,
    VersionStats,
    bucket_of,
    quantile,
)


def test_buckets_are_log_scale_and_cover_every_latency() -> None:
    assert all(b > a for a, b in itertools.pairwise(LATENCY_BOUNDS_MS))
    assert bucket_of(0.0) == 0
    assert bucket_of(10**9) == N_BUCKETS - 1
    assert LATENCY_BOUNDS_MS[bucket_of(3.0)] >= 3.0 > LATENCY_BOUNDS_MS[bucket_of(3.0) - 1]


def test_merging_windows_equals_observing_everything_once() -> None:
    a, b, whole = (VersionStats("m", "1.0.0") for _ in range(3))
    samples = [(0.2, True, ["1"]), (5.0, False, None), (40.0, True, ["2"]), (900.0, True, ["1"])]
    for i, (ms, ok, labels) in enumerate(samples):
        (a if i % 2 else b).observe(ms, ok, labels)
        whole.observe(ms, ok, labels)
    a.merge(b)
    assert a.to_dict() == whole.to_dict()
    assert (a.requests, a.errors, a.classes) == (4, 1, {"1": 2, "2": 1})


def test_quantiles_come_from_bucket_bounds() -> None:
    stats = VersionStats("m", "1.0.0")
    for ms in [1.0] * 98 + [100.0, 1000.0]:
        stats.observe(ms, True)
    p50, p99 = quantile(stats.latency, 0.5), quantile(stats.latency, 0.99)
    assert p50 is not None and 1.0 <= p50 < 1.5
    assert p99 is not None and 100.0 <= p99 < 150.0
    assert quantile([0] * N_BUCKETS, 0.5) is None
    assert quantile([0] * (N_BUCKETS - 1) + [1], 0.5) == math.inf


def test_round_trip() -> None:
    stats = VersionStats("m", "1.0.0")
    stats.observe(2.0, True, ["cat"])
    assert VersionStats.from_dict(stats.to_dict()).to_dict() == stats.to_dict()


@pytest.mark.parametrize(
    "change",
    [
        {"requests": -1},
        {"requests": True},
        {"errors": 5},
        {"latency": [1]},
        {"latency": [0] * N_BUCKETS},
        {"model": None} | {"requests": "1"},
    ],
    ids=[
        "negative",
        "bool",
        "errors-over-requests",
        "short-histogram",
        "counts-disagree",
        "not-a-number",
    ],
)
def test_malformed_statistics_are_refused(change: dict[str, object]) -> None:
    good = VersionStats("m", "1.0.0")
    good.observe(2.0, True)
    with pytest.raises(FormatError):
        VersionStats.from_dict(good.to_dict() | change)


def test_output_histograms_merge_and_validate() -> None:
    a, b = VersionStats("m", "1.0.0"), VersionStats("m", "1.0.0")
    counts = [0] * N_OUTPUT_BINS
    counts[3] = 2
    a.observe_output("Y", counts)
    b.observe_output("Y", counts)
    a.merge(b)
    assert a.outputs["Y"][3] == 4
    assert VersionStats.from_dict(a.to_dict()).outputs == a.outputs
    with pytest.raises(FormatError):
        VersionStats.from_dict(a.to_dict() | {"outputs": {"Y": [1, 2]}})
    assert len(OUTPUT_EDGES) + 1 == N_OUTPUT_BINS
    assert list(OUTPUT_EDGES) == sorted(OUTPUT_EDGES)
