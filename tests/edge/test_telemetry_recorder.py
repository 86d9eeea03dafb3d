"""The agent's telemetry recorder: output histograms binned in groups of requests."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.cache import Cache
from edge_agent.slots import LoadedVersion, SlotManager
from edge_agent.telemetry import PENDING_REQUESTS, TelemetryRecorder
from shared.telemetry import N_OUTPUT_BINS, OUTPUT_EDGES
from tests.onnx_models import linear_model


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Cache, LoadedVersion]]:
    cache = await Cache.open(tmp_path / "cache", budget_bytes=1 << 30)
    slots = SlotManager()
    model = tmp_path / "lin.onnx"
    model.write_bytes(linear_model())
    loaded = await slots.install("lin", "1.0.0", "sha256:" + "0" * 64, model)
    try:
        yield cache, loaded
    finally:
        await slots.close()
        await cache.close()


async def test_output_histograms_count_every_request_across_groups(
    setup: tuple[Cache, LoadedVersion],
) -> None:
    cache, loaded = setup
    recorder = TelemetryRecorder(cache, max_batches=10)
    requests = PENDING_REQUESTS + 44  # one full group binned at once, the rest at flush
    values = np.linspace(-5.0, 5.0, requests)
    for value in values:
        output = np.array([[value]], dtype=np.float32)
        recorder.observe(loaded, 0.001, True, {"Y": output})
    await recorder.flush()
    [(_, body)] = await cache.telemetry_batches(10)
    [stats] = body["versions"]
    expected = np.bincount(
        np.searchsorted(OUTPUT_EDGES, values.astype(np.float32), side="right"),
        minlength=N_OUTPUT_BINS,
    )
    assert stats["requests"] == requests
    assert stats["outputs"]["Y"] == expected.tolist()


async def test_pending_outputs_do_not_keep_the_output_arrays(
    setup: tuple[Cache, LoadedVersion],
) -> None:
    cache, loaded = setup
    recorder = TelemetryRecorder(cache, max_batches=10)
    big = np.ones((4096, 256), dtype=np.float32)  # 4 MiB, of which at most 1,024 are counted
    alive = weakref.ref(big)
    recorder.observe(loaded, 0.001, True, {"Y": big})
    del big
    gc.collect()
    assert alive() is None
    await recorder.flush()
    [(_, body)] = await cache.telemetry_batches(10)
    assert sum(body["versions"][0]["outputs"]["Y"]) == 1024
