"""Model slots with real onnxruntime sessions: install, swap, reject, roll back."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent.slots import (
    INLINE_SAMPLES,
    INLINE_SECONDS,
    INLINE_WORST,
    MAX_SLOW_INLINE,
    HealthCheckError,
    InferenceError,
    LoadedVersion,
    LoadError,
    NotReadyError,
    RunCost,
    SlotManager,
)
from edge_agent.tensors import TensorSpec
from shared.errors import ConflictError, InvalidInputError, NotFoundError
from shared.metrics import Registry
from tests.onnx_models import (
    IR_VERSION,
    OPSET,
    ORT_DATASETS,
    SLOW_SIDE,
    broken_model,
    linear_model,
    slow_model,
)

X = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)  # linear_model(scale) answers 14 * scale


def onnx_bytes(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: tuple[onnx.TensorProto, ...] = (),
    *,
    check: bool = True,
) -> bytes:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    if check:  # the checker wants every graph input and output to have a shape
        onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def nan_sqrt_model() -> bytes:
    """``Y = X + sqrt(-1)``: NaN whatever the input."""
    return onnx_bytes(
        [helper.make_node("Sqrt", ["C"], ["R"]), helper.make_node("Add", ["X", "R"], ["Y"])],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N"])],
        (numpy_helper.from_array(np.array([-1.0], dtype=np.float32), "C"),),
    )


def zero_div_model() -> bytes:
    """``Y = X / X`` and ``Z = X + 1``: 0/0 is NaN on the zero warm-up input."""
    return onnx_bytes(
        [helper.make_node("Div", ["X", "X"], ["Y"]), helper.make_node("Add", ["X", "O"], ["Z"])],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N"])],
        [
            helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N"]),
        ],
        (numpy_helper.from_array(np.array([1.0], dtype=np.float32), "O"),),
    )


def two_output_model() -> bytes:
    """``Z = X + 1`` and ``Y = X * 2``: two outputs, finite on zeros."""
    return onnx_bytes(
        [helper.make_node("Add", ["X", "O"], ["Z"]), helper.make_node("Add", ["X", "X"], ["Y"])],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N"])],
        [
            helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N"]),
        ],
        (numpy_helper.from_array(np.array([1.0], dtype=np.float32), "O"),),
    )


def constant_of_shape_model() -> bytes:
    """``Y = zeros(S)``: runs on the zero warm-up input, fails at run time for S = [-5]."""
    return onnx_bytes(
        [helper.make_node("ConstantOfShape", ["S"], ["Y"])],
        [helper.make_tensor_value_info("S", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        check=False,
    )


def gather_model() -> bytes:
    """``Y = [10, 20, 30][I]``: onnxruntime rejects an out-of-range index as an argument."""
    return onnx_bytes(
        [helper.make_node("Gather", ["D", "I"], ["Y"])],
        [helper.make_tensor_value_info("I", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N"])],
        (numpy_helper.from_array(np.array([10.0, 20.0, 30.0], dtype=np.float32), "D"),),
    )


def undeclared_shape_model() -> bytes:
    """``Y = X[0]`` with no declared shape for X: a scalar X fails, a vector works."""
    return onnx_bytes(
        [helper.make_node("Gather", ["X", "I"], ["Y"], axis=0)],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        (numpy_helper.from_array(np.array(0, dtype=np.int64), "I"),),
        check=False,
    )


@pytest.fixture
async def slots() -> AsyncIterator[SlotManager]:
    manager = SlotManager()
    yield manager
    await manager.close()


async def install(
    slots: SlotManager, tmp_path: Path, model: str, version: str, data: bytes
) -> LoadedVersion:
    path = tmp_path / f"{model}-{version}.onnx"
    path.write_bytes(data)
    return await slots.install(model, version, f"sha256:{version}", path)


async def answer(slots: SlotManager, loaded: LoadedVersion) -> float:
    outputs = await slots.infer(loaded, {"X": X})
    return float(outputs["Y"][0, 0])


async def test_install_serves_and_reports(slots: SlotManager, tmp_path: Path) -> None:
    loaded = await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0))

    assert slots.get("lin") is loaded
    assert await answer(slots, loaded) == 14.0
    assert loaded.platform == "onnxruntime_onnx"
    assert loaded.inputs == (TensorSpec("X", "FP32", (-1, 3)),)
    assert loaded.outputs == (TensorSpec("Y", "FP32", (-1, 1)),)
    [row] = slots.status()
    assert row["model"] == "lin"
    assert (row["serving"], row["previous"], row["bad_versions"]) == ("1.0.0", None, {})
    assert row["manifest_digest"] == "sha256:1.0.0"
    assert row["loaded_at"] == loaded.loaded_at.isoformat()
    assert slots.all_serving()


async def test_swap_keeps_previous_addressable(slots: SlotManager, tmp_path: Path) -> None:
    swaps: list[tuple[str, str | None, str]] = []
    slots.on_swap = lambda model, old, new: swaps.append((model, old, new))
    v1 = await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0))
    v2 = await install(slots, tmp_path, "lin", "2.0.0", linear_model(2.0))

    assert slots.get("lin") is v2
    assert slots.get("lin", "2.0.0") is v2
    assert slots.get("lin", "1.0.0") is v1
    assert slots.versions("lin") == ["2.0.0", "1.0.0"]
    assert await answer(slots, slots.get("lin")) == 28.0
    assert swaps == [("lin", None, "1.0.0"), ("lin", "1.0.0", "2.0.0")]

    await install(slots, tmp_path, "lin", "3.0.0", linear_model(3.0))
    with pytest.raises(NotFoundError, match=r"model lin has no version 1\.0\.0 loaded"):
        slots.get("lin", "1.0.0")


async def test_request_in_flight_finishes_on_its_version(
    slots: SlotManager, tmp_path: Path
) -> None:
    await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0))
    resolved = slots.get("lin")
    await install(slots, tmp_path, "lin", "2.0.0", linear_model(2.0))
    await install(slots, tmp_path, "lin", "3.0.0", linear_model(3.0))  # 1.0.0 evicted

    assert await answer(slots, resolved) == 14.0
    assert await answer(slots, slots.get("lin")) == 42.0


async def test_installing_what_is_served_does_nothing(slots: SlotManager, tmp_path: Path) -> None:
    first = await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0))
    again = await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0))

    assert again is first
    assert slots.slots["lin"].previous is None


async def test_concurrent_installs_apply_in_order(slots: SlotManager, tmp_path: Path) -> None:
    paths = {}
    for version, scale in (("1.0.0", 1.0), ("2.0.0", 2.0)):
        paths[version] = tmp_path / f"{version}.onnx"
        paths[version].write_bytes(linear_model(scale))

    await asyncio.gather(*(slots.install("lin", v, f"sha256:{v}", p) for v, p in paths.items()))

    assert slots.versions("lin") == ["2.0.0", "1.0.0"]


@pytest.mark.parametrize(
    "data, message",
    [
        (broken_model(), "does not load"),
        (b"not an onnx model", "does not load"),
        (linear_model()[:40], "does not load"),
    ],
    ids=["undefined-input", "garbage", "truncated"],
)
async def test_model_that_does_not_load_leaves_slot_unchanged(
    slots: SlotManager, tmp_path: Path, data: bytes, message: str
) -> None:
    served = await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0))

    with pytest.raises(LoadError, match=f"model lin version 2.0.0 {message}") as caught:
        await install(slots, tmp_path, "lin", "2.0.0", data)

    assert not isinstance(caught.value, HealthCheckError)
    assert (caught.value.code, caught.value.status) == ("model_load_failed", 500)
    slot = slots.slots["lin"]
    assert (slot.serving, slot.previous) == (served, None)
    assert slot.bad_versions == {"2.0.0": str(caught.value)}
    assert await answer(slots, slots.get("lin")) == 14.0


async def test_missing_file_is_a_load_error(slots: SlotManager, tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="does not load"):
        await slots.install("lin", "1.0.0", "sha256:x", tmp_path / "absent.onnx")

    assert slots.status()[0]["bad_versions"].keys() == {"1.0.0"}


@pytest.mark.parametrize(
    "data, output",
    [(nan_sqrt_model(), "Y"), (zero_div_model(), "Y")],
    ids=["sqrt-of-minus-one", "zero-over-zero"],
)
async def test_non_finite_output_fails_health_check(
    slots: SlotManager, tmp_path: Path, data: bytes, output: str
) -> None:
    served = await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0))

    with pytest.raises(HealthCheckError, match=f"output {output} is not finite"):
        await install(slots, tmp_path, "lin", "2.0.0", data)

    slot = slots.slots["lin"]
    assert (slot.serving, slot.previous) == (served, None)
    assert "not finite" in slot.bad_versions["2.0.0"]


async def test_good_install_clears_bad_record(slots: SlotManager, tmp_path: Path) -> None:
    with pytest.raises(LoadError):
        await install(slots, tmp_path, "lin", "1.0.0", b"junk")
    await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0))

    assert slots.slots["lin"].bad_versions == {}


async def test_slot_with_nothing_loaded_is_not_ready(slots: SlotManager, tmp_path: Path) -> None:
    with pytest.raises(LoadError):
        await install(slots, tmp_path, "lin", "1.0.0", b"junk")

    with pytest.raises(NotReadyError, match="model lin is not ready") as caught:
        slots.get("lin")
    assert (caught.value.code, caught.value.status) == ("not_ready", 503)
    assert not slots.all_serving()
    slots.add("other")
    with pytest.raises(NotReadyError):
        slots.get("other")


async def test_unknown_model_or_version(slots: SlotManager, tmp_path: Path) -> None:
    await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0))

    with pytest.raises(NotFoundError, match="unknown model nope"):
        slots.get("nope")
    with pytest.raises(NotFoundError, match=r"model lin has no version 9\.9\.9 loaded"):
        slots.get("lin", "9.9.9")


async def test_rollback(slots: SlotManager, tmp_path: Path) -> None:
    swaps: list[tuple[str, str | None, str]] = []
    v1 = await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0))
    v2 = await install(slots, tmp_path, "lin", "2.0.0", linear_model(2.0))
    slots.on_swap = lambda model, old, new: swaps.append((model, old, new))

    assert await slots.rollback("lin", reason="error rate too high") is v1

    slot = slots.slots["lin"]
    assert (slot.serving, slot.previous) == (v1, v2)
    assert slot.bad_versions == {"2.0.0": "error rate too high"}
    assert swaps == [("lin", "2.0.0", "1.0.0")]
    assert await answer(slots, slots.get("lin")) == 14.0


async def test_rollback_needs_a_previous_version(slots: SlotManager, tmp_path: Path) -> None:
    await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0))

    with pytest.raises(ConflictError, match="no previous version"):
        await slots.rollback("lin")
    with pytest.raises(NotFoundError):
        await slots.rollback("nope")
    assert slots.get("lin").version == "1.0.0"


async def test_remove(slots: SlotManager, tmp_path: Path) -> None:
    loaded = await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0))
    slots.remove("lin")

    with pytest.raises(NotFoundError):
        slots.get("lin")
    assert slots.status() == []
    assert await answer(slots, loaded) == 14.0  # a request already holding it finishes


async def test_evicted_version_is_freed(slots: SlotManager, tmp_path: Path) -> None:
    ref = weakref.ref(await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0)))
    await install(slots, tmp_path, "lin", "2.0.0", linear_model(2.0))
    assert ref() is not None  # still the rollback target
    await install(slots, tmp_path, "lin", "3.0.0", linear_model(3.0))

    async with asyncio.timeout(10):
        while ref() is not None:
            await asyncio.sleep(0.01)
            gc.collect()


async def test_infer_selects_outputs(slots: SlotManager, tmp_path: Path) -> None:
    loaded = await install(slots, tmp_path, "m", "1.0.0", two_output_model())
    x = np.array([2.0, 4.0], dtype=np.float32)

    outputs = await slots.infer(loaded, {"X": x}, ["Z"])
    assert list(outputs) == ["Z"]
    np.testing.assert_array_equal(outputs["Z"], [3.0, 5.0])
    with pytest.raises(InvalidInputError, match="output W: the model has no such output"):
        await slots.infer(loaded, {"X": x}, ["W"])


async def test_run_time_failure_is_an_inference_error(slots: SlotManager, tmp_path: Path) -> None:
    loaded = await install(slots, tmp_path, "zeros", "1.0.0", constant_of_shape_model())

    ok = await slots.infer(loaded, {"S": np.array([2], dtype=np.int64)})
    assert ok["Y"].shape == (2,)
    with pytest.raises(InferenceError, match=r"model zeros version 1\.0\.0 failed") as caught:
        await slots.infer(loaded, {"S": np.array([-5], dtype=np.int64)})
    assert caught.value.status == 500


async def test_input_rejected_by_onnxruntime_is_invalid_input(
    slots: SlotManager, tmp_path: Path
) -> None:
    loaded = await install(slots, tmp_path, "gather", "1.0.0", gather_model())

    ok = await slots.infer(loaded, {"I": np.array([2, 0], dtype=np.int64)})
    np.testing.assert_array_equal(ok["Y"], [30.0, 10.0])
    with pytest.raises(InvalidInputError, match="the model rejected the input"):
        await slots.infer(loaded, {"I": np.array([7], dtype=np.int64)})


async def test_undeclared_input_shape_warms_up_at_rank_one(
    slots: SlotManager, tmp_path: Path
) -> None:
    loaded = await install(slots, tmp_path, "first", "1.0.0", undeclared_shape_model())

    assert loaded.inputs == (TensorSpec("X", "FP32", None),)
    assert loaded.inputs[0].to_dict()["shape"] == [-1]
    out = await slots.infer(loaded, {"X": np.array([[5.0, 6.0]], dtype=np.float32)})
    np.testing.assert_array_equal(out["Y"], [5.0, 6.0])


async def test_onnxruntime_example_models(slots: SlotManager) -> None:
    iris = await slots.install("iris", "1.0.0", "sha256:i", ORT_DATASETS / "logreg_iris.onnx")
    mul = await slots.install("mul", "1.0.0", "sha256:m", ORT_DATASETS / "mul_1.onnx")

    assert iris.outputs == (
        TensorSpec("label", "INT64", (3,)),
        TensorSpec("probabilities", "seq(map(int64,tensor(float)))", ()),
    )
    features = np.array([[5.1, 3.5], [6.2, 2.9], [7.7, 3.0]], dtype=np.float32)
    out = await slots.infer(iris, {"float_input": features})
    assert out["label"].shape == (3,)
    assert len(out["probabilities"]) == 3
    assert set(out["probabilities"][0]) == {0, 1, 2}
    doubled = await slots.infer(mul, {"X": np.ones((3, 2), dtype=np.float32)})
    assert doubled["Y"].shape == (3, 2)


async def test_router_seam(slots: SlotManager, tmp_path: Path) -> None:
    await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0))
    await install(slots, tmp_path, "lin", "2.0.0", linear_model(2.0))

    slots.router = lambda model, key: "1.0.0" if key == "a" else None
    assert slots.get("lin", key="a").version == "1.0.0"
    assert slots.get("lin", key="b").version == "2.0.0"
    slots.router = lambda model, key: "7.0.0"  # not loaded: the serving version answers
    assert slots.get("lin").version == "2.0.0"


async def test_metrics(tmp_path: Path) -> None:
    registry = Registry()
    slots = SlotManager(metrics=registry)
    try:
        loaded = await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0))
        with pytest.raises(LoadError):
            await install(slots, tmp_path, "lin", "2.0.0", b"junk")
        await answer(slots, loaded)
    finally:
        await slots.close()

    text = registry.render()
    assert 'skiff_edge_model_loads_total{model="lin",result="ok"} 1' in text
    assert 'skiff_edge_model_loads_total{model="lin",result="failed"} 1' in text
    assert 'skiff_edge_model_swaps_total{model="lin"} 1' in text
    assert 'skiff_edge_inference_seconds_count{model="lin"} 1' in text


async def test_on_swap_hook_failure_does_not_fail_install(
    slots: SlotManager, tmp_path: Path
) -> None:
    def broken_hook(model: str, old: str | None, new: str) -> None:
        raise RuntimeError("metrics backend down")

    slots.on_swap = broken_hook
    loaded = await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0))

    assert slots.get("lin") is loaded


def test_thread_counts_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SlotManager(inference_threads=0)


# Tiny models run inline on the loop; anything slow stays in the inference threads


async def _ran_inline(slots: SlotManager, loaded: LoadedVersion, inputs: dict[str, Any]) -> bool:
    """Whether one inference finished in its task's first step (no thread hop)."""
    task = asyncio.create_task(slots.infer(loaded, inputs))
    await asyncio.sleep(0)  # the task's first step; a hop needs the thread and more steps
    inline = task.done()
    await task
    return inline


def test_run_cost_rules() -> None:
    cost = RunCost()
    for _ in range(INLINE_SAMPLES - 1):
        cost.record(INLINE_SECONDS / 10, 6)
    assert not cost.inline(6)  # not measured enough yet
    cost.record(INLINE_SECONDS / 10, 6)
    assert cost.inline(6)
    assert not cost.inline(7)  # larger than anything measured
    slow = RunCost()
    for _ in range(INLINE_SAMPLES):
        slow.record(INLINE_SECONDS * 2, 6)
    assert not slow.inline(6)  # too slow on average


def test_a_size_that_ran_slow_stays_in_the_threads() -> None:
    cost = RunCost()
    for _ in range(INLINE_SAMPLES * 4):
        cost.record(INLINE_SECONDS / 10, 6)
    cost.record(INLINE_WORST * 2, 600)  # a large batch, in the threads
    for _ in range(INLINE_SAMPLES * 4):
        cost.record(INLINE_SECONDS / 10, 6)
    assert cost.inline(6)
    assert not cost.inline(600)  # that size never ran fast
    assert cost.slow_inline == 0  # and the loop never paid for it


def test_a_slow_run_in_the_threads_restarts_the_count() -> None:
    cost = RunCost()
    for _ in range(INLINE_SAMPLES // 2):
        cost.record(INLINE_SECONDS / 10, 6)
    cost.record(INLINE_WORST * 2, 6)  # say, a first run slowed by page faults
    for _ in range(INLINE_SAMPLES - 1):
        cost.record(INLINE_SECONDS / 10, 6)
    assert not cost.inline(6)  # fifteen fast runs since the slow one
    for _ in range(INLINE_SAMPLES):  # the slow run's weight in the average decays
        cost.record(INLINE_SECONDS / 10, 6)
    assert cost.inline(6)


def test_slow_runs_on_the_loop_are_bounded() -> None:
    cost = RunCost()
    for _ in range(INLINE_SAMPLES * 4):
        cost.record(INLINE_SECONDS / 10, 6)
    for slow_runs in range(1, MAX_SLOW_INLINE + 1):
        assert cost.inline(6)
        cost.record(INLINE_WORST * 2, 6, inline=True)
        assert not cost.inline(6)  # back to the threads
        for _ in range(INLINE_SAMPLES * 4):
            cost.record(INLINE_SECONDS / 10, 6)
        assert cost.inline(6) == (slow_runs < MAX_SLOW_INLINE)
    assert cost.slow_inline == MAX_SLOW_INLINE  # the loop paid for three slow runs, no more


async def test_a_tiny_model_runs_inline_once_measured(slots: SlotManager, tmp_path: Path) -> None:
    loaded = await install(slots, tmp_path, "lin", "1.0.0", linear_model(1.0))
    assert not await _ran_inline(slots, loaded, {"X": X})
    for _ in range(INLINE_SAMPLES):
        assert await answer(slots, loaded) == 14.0
    assert await _ran_inline(slots, loaded, {"X": X})
    assert await answer(slots, loaded) == 14.0
    big = np.ones((64, 3), dtype=np.float32)  # more elements than any measured run
    assert not await _ran_inline(slots, loaded, {"X": big})


async def test_a_slow_run_sends_the_version_back_to_the_threads(
    slots: SlotManager, tmp_path: Path
) -> None:
    loaded = await install(slots, tmp_path, "slow", "1.0.0", slow_model())
    x = np.ones((SLOW_SIDE, SLOW_SIDE), dtype=np.float32)
    fast = {"M": np.array(0, dtype=np.int64), "X": x}  # no iteration: a copy of X
    for _ in range(INLINE_SAMPLES + 1):
        await slots.infer(loaded, fast)
    assert await _ran_inline(slots, loaded, fast)
    slow = {"M": np.array(40, dtype=np.int64), "X": x}  # 40 matrix products
    await slots.infer(loaded, slow)  # inline, once: its cost depends on a value
    assert not await _ran_inline(slots, loaded, fast)
    assert not await _ran_inline(slots, loaded, slow)
    for _ in range(INLINE_SAMPLES * 4):  # fast runs in the threads earn the loop back...
        await slots.infer(loaded, fast)
    assert await _ran_inline(slots, loaded, fast)
    for _ in range(MAX_SLOW_INLINE - 1):  # ...until it has cost the loop too many slow runs
        await slots.infer(loaded, slow)
        for _ in range(INLINE_SAMPLES * 4):
            await slots.infer(loaded, fast)
    assert loaded.cost.slow_inline == MAX_SLOW_INLINE
    assert not await _ran_inline(slots, loaded, fast)


async def test_several_intra_op_threads_never_run_inline(tmp_path: Path) -> None:
    manager = SlotManager(intra_op_threads=2)
    try:
        loaded = await install(manager, tmp_path, "lin", "1.0.0", linear_model(1.0))
        for _ in range(INLINE_SAMPLES + 2):
            assert await answer(manager, loaded) == 14.0
        assert not await _ran_inline(manager, loaded, {"X": X})
    finally:
        await manager.close()
