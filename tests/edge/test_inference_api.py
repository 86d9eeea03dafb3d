"""The Open Inference Protocol over real sessions, served by aiohttp on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from onnx import TensorProto, helper

import shared
from edge_agent.inference_api import setup_inference_routes
from edge_agent.slots import LoadedVersion, SlotManager
from tests.onnx_models import (
    IR_VERSION,
    OPSET,
    ORT_DATASETS,
    SLOW_SIDE,
    linear_model,
    multi_input_model,
    slow_model,
)

Client = TestClient[web.Request, web.Application]


def onnx_bytes(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: tuple[onnx.TensorProto, ...] = (),
) -> bytes:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def identity_model(elem_type: int) -> bytes:
    """``Y = X`` for a tensor [N, 2] of any element type."""
    return onnx_bytes(
        [helper.make_node("Identity", ["X"], ["Y"])],
        [helper.make_tensor_value_info("X", elem_type, ["N", 2])],
        [helper.make_tensor_value_info("Y", elem_type, ["N", 2])],
    )


def two_output_model() -> bytes:
    """``Sum = A + B`` and ``Diff = A - B`` over FP32 vectors."""
    return onnx_bytes(
        [
            helper.make_node("Add", ["A", "B"], ["Sum"]),
            helper.make_node("Sub", ["A", "B"], ["Diff"]),
        ],
        [
            helper.make_tensor_value_info("A", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("B", TensorProto.FLOAT, ["N"]),
        ],
        [
            helper.make_tensor_value_info("Sum", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("Diff", TensorProto.FLOAT, ["N"]),
        ],
    )


def constant_of_shape_model() -> bytes:
    """``Y = zeros(S)``: fails at run time for a negative S."""
    return onnx_bytes(
        [helper.make_node("ConstantOfShape", ["S"], ["Y"])],
        [helper.make_tensor_value_info("S", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [-1])],
    )


@dataclass
class Agent:
    client: Client
    slots: SlotManager
    tmp_path: Path
    started: bool = True

    async def install(self, model: str, version: str, data: bytes) -> LoadedVersion:
        path = self.tmp_path / f"{model}-{version}.onnx"
        path.write_bytes(data)
        return await self.slots.install(model, version, f"sha256:{model}-{version}", path)

    async def infer(
        self, model: str, body: dict[str, Any], version: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        raw = io.BytesIO(json.dumps(body).encode())  # aiohttp warns about large raw bytes
        headers = {"Content-Type": "application/json"}
        async with self.client.post(path, data=raw, headers=headers) as response:
            return response.status, await response.json()

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        async with self.client.get(path) as response:
            return response.status, await response.json()


@contextlib.asynccontextmanager
async def start_agent(tmp_path: Path, **options: Any) -> AsyncIterator[Agent]:
    slots = SlotManager()
    app = web.Application()
    agent: Agent | None = None
    setup_inference_routes(app, slots, ready=lambda: agent is not None and agent.started, **options)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        agent = Agent(client, slots, tmp_path)
        yield agent
    await slots.close()


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    async with start_agent(tmp_path) as running:
        yield running


def tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


LINEAR_REQUEST = {"inputs": [tensor("X", "FP32", [1, 3], [1, 2, 3])]}


# Server endpoints


async def test_server_metadata_and_liveness(agent: Agent) -> None:
    assert await agent.get("/v2") == (
        200,
        {"name": "skiff-edge", "version": shared.__version__, "extensions": []},
    )
    assert await agent.get("/v2/health/live") == (200, {"live": True})


async def test_readiness(agent: Agent) -> None:
    assert await agent.get("/v2/health/ready") == (200, {"ready": True})  # nothing to serve
    agent.slots.add("lin")
    assert await agent.get("/v2/health/ready") == (503, {"ready": False})
    await agent.install("lin", "1.0.0", linear_model())
    assert await agent.get("/v2/health/ready") == (200, {"ready": True})
    agent.started = False
    assert await agent.get("/v2/health/ready") == (503, {"ready": False})


# Model endpoints


async def test_model_metadata(agent: Agent) -> None:
    await agent.install("mi", "1.0.0", multi_input_model())

    status, body = await agent.get("/v2/models/mi")

    assert status == 200
    assert body == {
        "name": "mi",
        "versions": ["1.0.0"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "X", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "K", "datatype": "INT64", "shape": []},
        ],
        "outputs": [{"name": "Y", "datatype": "FP32", "shape": [-1, 4]}],
    }


async def test_versions_are_addressable(agent: Agent) -> None:
    await agent.install("lin", "1.0.0", linear_model(1.0))
    await agent.install("lin", "2.0.0", linear_model(2.0))

    status, body = await agent.get("/v2/models/lin/versions/1.0.0")
    assert (status, body["versions"]) == (200, ["2.0.0", "1.0.0"])
    assert await agent.get("/v2/models/lin/versions/1.0.0/ready") == (
        200,
        {"name": "lin", "ready": True},
    )
    for version, expected in (("1.0.0", 14.0), ("2.0.0", 28.0), (None, 28.0)):
        status, body = await agent.infer("lin", LINEAR_REQUEST, version)
        assert status == 200
        assert body["model_version"] == (version or "2.0.0")
        assert body["outputs"][0]["data"] == [expected]


async def test_model_ready(agent: Agent) -> None:
    await agent.install("lin", "1.0.0", linear_model())
    agent.slots.add("pending")

    assert await agent.get("/v2/models/lin/ready") == (200, {"name": "lin", "ready": True})
    assert await agent.get("/v2/models/pending/ready") == (
        503,
        {"error": "model pending is not ready: no version is loaded"},
    )
    assert await agent.get("/v2/models/nope/ready") == (404, {"error": "unknown model nope"})
    assert await agent.get("/v2/models/lin/versions/9.9.9/ready") == (
        404,
        {"error": "model lin has no version 9.9.9 loaded"},
    )


@pytest.mark.parametrize(
    "path",
    ["/v2/models/nope", "/v2/models/nope/ready", "/v2/models/nope/versions/1.0.0"],
)
async def test_unknown_model_is_404(agent: Agent, path: str) -> None:
    assert await agent.get(path) == (404, {"error": "unknown model nope"})


async def test_infer_unknown_model_or_version_is_404(agent: Agent) -> None:
    await agent.install("lin", "1.0.0", linear_model())

    assert await agent.infer("nope", LINEAR_REQUEST) == (404, {"error": "unknown model nope"})
    assert await agent.infer("lin", LINEAR_REQUEST, "2.0.0") == (
        404,
        {"error": "model lin has no version 2.0.0 loaded"},
    )


async def test_infer_not_ready_is_503(agent: Agent) -> None:
    agent.slots.add("pending")

    status, body = await agent.infer("pending", LINEAR_REQUEST)

    assert (status, body) == (503, {"error": "model pending is not ready: no version is loaded"})


# Inference


async def test_infer_several_inputs_with_int64_scalar(agent: Agent) -> None:
    await agent.install("mi", "1.0.0", multi_input_model())
    request = {
        "id": "req-1",
        "parameters": {"priority": 1},
        "inputs": [
            tensor("X", "FP32", [2, 4], [[1, 2, 3, 4], [5, 6, 7, 8]]),  # nested data
            tensor("K", "INT64", [], [3]),
        ],
    }

    status, body = await agent.infer("mi", request)

    assert status == 200
    assert body == {
        "model_name": "mi",
        "model_version": "1.0.0",
        "id": "req-1",
        "outputs": [
            tensor("Y", "FP32", [2, 4], [3.0, 6.0, 9.0, 12.0, 15.0, 18.0, 21.0, 24.0]),
        ],
    }


@pytest.mark.parametrize("batch", [1, 5])
async def test_infer_dynamic_dimension(agent: Agent, batch: int) -> None:
    await agent.install("lin", "1.0.0", linear_model())
    request = {"inputs": [tensor("X", "FP32", [batch, 3], [1, 2, 3] * batch)]}

    status, body = await agent.infer("lin", request)

    assert status == 200
    assert "id" not in body
    assert body["outputs"] == [tensor("Y", "FP32", [batch, 1], [14.0] * batch)]


@pytest.mark.parametrize(
    "elem_type, datatype, data",
    [
        (TensorProto.BOOL, "BOOL", [True, False, False, True]),
        (TensorProto.FLOAT16, "FP16", [1.5, -0.25, 65504.0, 0.0]),
        (TensorProto.STRING, "BYTES", ["héllo", "", "a b", "日本"]),
        (TensorProto.INT8, "INT8", [-128, 127, 0, 1]),
        (TensorProto.UINT64, "UINT64", [0, 2**64 - 1, 7, 8]),
        (TensorProto.DOUBLE, "FP64", [0.1, 1e300, -2.5, 3.0]),
    ],
)
async def test_datatype_round_trip(
    agent: Agent, elem_type: int, datatype: str, data: list[Any]
) -> None:
    await agent.install("id", "1.0.0", identity_model(elem_type))
    request = {"inputs": [tensor("X", datatype, [2, 2], data)]}

    status, body = await agent.infer("id", request)

    assert status == 200
    assert body["outputs"] == [tensor("Y", datatype, [2, 2], data)]


async def test_large_tensors_round_trip(agent: Agent) -> None:
    await agent.install("id", "1.0.0", identity_model(TensorProto.FLOAT))
    data = [float(i % 1000) for i in range(200_000)]  # a body and an output over the offload bars
    request = {"inputs": [tensor("X", "FP32", [100_000, 2], data)]}

    status, body = await agent.infer("id", request)

    assert status == 200
    assert body["outputs"] == [tensor("Y", "FP32", [100_000, 2], data)]


async def test_non_finite_values_in_and_out(agent: Agent) -> None:
    """NaN and Infinity tokens are read (a client's missing values); the answer is strict
    JSON, with null where a value is not finite."""
    await agent.install("id", "1.0.0", identity_model(TensorProto.FLOAT))
    raw = (
        b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 2],'
        b' "data": [NaN, 1.5, Infinity, -2]}]}'
    )

    async with agent.client.post("/v2/models/id/infer", data=raw) as response:
        assert response.status == 200
        text = await response.text()

    def refuse(token: str) -> None:
        raise AssertionError(f"the answer holds the non-JSON token {token}")

    body = json.loads(text, parse_constant=refuse)
    assert body["outputs"] == [tensor("Y", "FP32", [2, 2], [None, 1.5, None, -2.0])]


async def test_outputs_selection(agent: Agent) -> None:
    await agent.install("ab", "1.0.0", two_output_model())
    inputs = [tensor("A", "FP32", [2], [5, 7]), tensor("B", "FP32", [2], [1, 2])]

    status, body = await agent.infer("ab", {"inputs": inputs})
    assert status == 200
    assert [o["name"] for o in body["outputs"]] == ["Sum", "Diff"]

    status, body = await agent.infer("ab", {"inputs": inputs, "outputs": [{"name": "Diff"}]})
    assert (status, body["outputs"]) == (200, [tensor("Diff", "FP32", [2], [4.0, 5.0])])

    request = {"inputs": inputs, "outputs": [{"name": "Diff"}, {"name": "Sum"}]}
    status, body = await agent.infer("ab", request)
    assert [o["name"] for o in body["outputs"]] == ["Diff", "Sum"]

    request = {"inputs": inputs, "outputs": [{"name": "Product"}]}
    assert await agent.infer("ab", request) == (
        400,
        {"error": "output Product: the model has no such output"},
    )


MI_X = tensor("X", "FP32", [1, 4], [1, 2, 3, 4])
MI_K = tensor("K", "INT64", [], [2])


@pytest.mark.parametrize(
    "inputs, error",
    [
        ([{**MI_X, "datatype": "INT64"}, MI_K], "input X: expected FP32, got INT64"),
        ([MI_X, {**MI_K, "datatype": "INT32"}], "input K: expected INT64, got INT32"),
        ([{**MI_X, "shape": [4]}, MI_K], "input X: expected rank 2 [-1, 4], got shape [4]"),
        ([MI_X, {**MI_K, "shape": [1]}], "input K: expected rank 0 [], got shape [1]"),
        (
            [tensor("X", "FP32", [2, 2], [1, 2, 3, 4]), MI_K],
            "input X: dimension 1 must be 4 [-1, 4], got 2",
        ),
        ([{**MI_X, "data": [1, 2, 3]}, MI_K], "input X: shape [1, 4] needs 4 elements, got 3"),
        ([{**MI_X, "data": ["a", "b", "c", "d"]}, MI_K], "input X: FP32 data must be numbers"),
        ([MI_X, {**MI_K, "data": [2.5]}], "input K: INT64 data must be integers"),
        ([{**MI_X, "shape": [1, -4]}, MI_K], "input X: shape must be a list of non-negative"),
        ([MI_X], "input K: missing from the request"),
        ([MI_X, MI_K, tensor("Z", "FP32", [1], [0])], "input Z: the model has no such input"),
        ([MI_X, MI_K, MI_K], "input K: given more than once"),
        ([{"datatype": "FP32"}], "inputs: every tensor needs a string name"),
    ],
    ids=[
        "wrong-dtype",
        "wrong-scalar-dtype",
        "wrong-rank",
        "scalar-given-rank-1",
        "wrong-fixed-dim",
        "wrong-count",
        "strings-for-floats",
        "float-for-int",
        "negative-dim",
        "missing",
        "extra",
        "duplicate",
        "no-name",
    ],
)
async def test_bad_input_is_400_naming_it(
    agent: Agent, inputs: list[dict[str, Any]], error: str
) -> None:
    await agent.install("mi", "1.0.0", multi_input_model())

    status, body = await agent.infer("mi", {"inputs": inputs})

    assert status == 400
    assert body["error"].startswith(error)


@pytest.mark.parametrize(
    "raw, error",
    [
        (b"{not json", "request body is not valid JSON"),
        (b"[1, 2]", "request body must be a JSON object"),
        (b'{"inputs": {}}', "inputs: expected a list of tensors"),
        (b'{"inputs": [], "id": 5}', "id must be a string"),
        (json.dumps({**LINEAR_REQUEST, "outputs": "Y"}).encode(), "outputs must be a list"),
        (json.dumps({**LINEAR_REQUEST, "outputs": [{}]}).encode(), "outputs: every requested"),
        (json.dumps({**LINEAR_REQUEST, "parameters": []}).encode(), "parameters must be an"),
    ],
    ids=[
        "not-json",
        "not-object",
        "inputs-not-list",
        "id-not-string",
        "outputs-not-list",
        "output-without-name",
        "parameters-not-object",
    ],
)
async def test_malformed_request_is_400(agent: Agent, raw: bytes, error: str) -> None:
    await agent.install("lin", "1.0.0", linear_model())

    async with agent.client.post("/v2/models/lin/infer", data=raw) as response:
        assert response.status == 400
        assert (await response.json())["error"].startswith(error)


async def test_body_over_limit_is_413(tmp_path: Path) -> None:
    async with start_agent(tmp_path, max_body_bytes=1000) as agent:
        await agent.install("lin", "1.0.0", linear_model())
        assert (await agent.infer("lin", LINEAR_REQUEST))[0] == 200
        big = {"inputs": [tensor("X", "FP32", [100, 3], [1.5, 2.5, 3.5] * 100)]}

        assert await agent.infer("lin", big) == (
            413,
            {"error": "request body exceeds 1000 bytes"},
        )


async def test_run_time_model_failure_is_500_with_message(agent: Agent) -> None:
    await agent.install("zeros", "1.0.0", constant_of_shape_model())

    status, body = await agent.infer("zeros", {"inputs": [tensor("S", "INT64", [1], [-5])]})

    assert status == 500
    assert body["error"].startswith("model zeros version 1.0.0 failed: ")
    assert "Traceback" not in body["error"]


async def test_non_tensor_output_is_json(agent: Agent) -> None:
    await agent.slots.install("iris", "1.0.0", "sha256:i", ORT_DATASETS / "logreg_iris.onnx")
    features = [[5.1, 3.5], [6.2, 2.9], [7.7, 3.0]]
    request = {"inputs": [tensor("float_input", "FP32", [3, 2], features)]}

    status, body = await agent.infer("iris", request)

    assert status == 200
    label, probabilities = body["outputs"]
    assert (label["name"], label["datatype"], label["shape"]) == ("label", "INT64", [3])
    assert probabilities["name"] == "probabilities"
    assert (probabilities["datatype"], probabilities["shape"]) == ("JSON", [3])
    for row, predicted in zip(probabilities["data"], label["data"], strict=True):
        assert set(row) == {"0", "1", "2"}
        assert max(row, key=row.get) == str(predicted)
        assert sum(row.values()) == pytest.approx(1.0, abs=1e-5)
    status, meta = await agent.get("/v2/models/iris")
    assert meta["outputs"][1] == {
        "name": "probabilities",
        "datatype": "seq(map(int64,tensor(float)))",
        "shape": [],
    }


async def test_onnxruntime_mul_example(agent: Agent) -> None:
    await agent.slots.install("mul", "1.0.0", "sha256:m", ORT_DATASETS / "mul_1.onnx")
    x = [[1, 2], [3, 4], [5, 6]]

    status, body = await agent.infer("mul", {"inputs": [tensor("X", "FP32", [3, 2], x)]})

    assert status == 200
    assert body["outputs"] == [tensor("Y", "FP32", [3, 2], [1.0, 4.0, 9.0, 16.0, 25.0, 36.0])]


# Serving through swaps and slow models


@pytest.mark.timeout(90)
async def test_no_request_dropped_during_swaps(agent: Agent) -> None:
    answers = {"1.0.0": 14.0, "2.0.0": 28.0}
    scales = {"1.0.0": 1.0, "2.0.0": 2.0}
    paths = {}
    for version, scale in scales.items():
        paths[version] = agent.tmp_path / f"lin-{version}.onnx"
        paths[version].write_bytes(linear_model(scale))
    await agent.slots.install("lin", "1.0.0", "sha256:1", paths["1.0.0"])
    swaps: list[str] = []
    agent.slots.on_swap = lambda model, old, new: swaps.append(new)
    stop = asyncio.Event()
    results: list[tuple[int, str, float]] = []

    async def client_loop() -> None:
        while not stop.is_set():
            status, body = await agent.infer("lin", LINEAR_REQUEST)
            results.append((status, body.get("model_version", ""), body["outputs"][0]["data"][0]))

    async with asyncio.timeout(60):
        clients = [asyncio.create_task(client_loop()) for _ in range(6)]
        for i in range(20):
            version = "2.0.0" if i % 2 == 0 else "1.0.0"
            await agent.slots.install("lin", version, f"sha256:{version[0]}", paths[version])
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*clients)

    assert len(swaps) == 20
    assert all(status == 200 for status, _, _ in results), results
    assert {version for _, version, _ in results} == {"1.0.0", "2.0.0"}
    assert all(value == answers[version] for _, version, value in results)
    assert len(results) > 40


async def calibrated_trip_count(path: Path, target_seconds: float) -> int:
    """Loop iterations that make the slow model run about ``target_seconds`` here."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.ones((SLOW_SIDE, SLOW_SIDE), dtype=np.float32)

    def run(m: int) -> float:
        started = time.perf_counter()
        session.run(None, {"M": np.array(m, dtype=np.int64), "X": x})
        return time.perf_counter() - started

    per_iteration = await asyncio.to_thread(run, 20) / 20
    return max(20, min(5000, int(target_seconds / max(per_iteration, 1e-6))))


@pytest.mark.timeout(60)
async def test_health_answers_while_a_slow_model_runs(agent: Agent) -> None:
    slow = await agent.install("slow", "1.0.0", slow_model())
    await agent.install("lin", "1.0.0", linear_model())
    trips = await calibrated_trip_count(agent.tmp_path / "slow-1.0.0.onnx", 1.5)
    ones = [1.0] * SLOW_SIDE * SLOW_SIDE
    request = {
        "inputs": [
            tensor("M", "INT64", [], [trips]),
            tensor("X", "FP32", [SLOW_SIDE, SLOW_SIDE], ones),
        ],
        "outputs": [{"name": "Y"}],
    }
    assert slow.inputs[0].shape == ()

    async with asyncio.timeout(45):
        slow_call = asyncio.create_task(agent.infer("slow", request))
        answered_meanwhile: list[Callable[[], Awaitable[tuple[int, dict[str, Any]]]]] = [
            lambda: agent.get("/v2/health/live"),
            lambda: agent.get("/v2/health/ready"),
            lambda: agent.get("/v2/models/slow/ready"),
            lambda: agent.infer("lin", LINEAR_REQUEST),  # the other inference thread
        ]
        await asyncio.sleep(0.1)
        during = 0
        for call in answered_meanwhile * 3:
            status, _ = await call()
            assert status == 200
            during += not slow_call.done()
        status, body = await slow_call

    assert status == 200
    assert body["outputs"][0]["shape"] == [SLOW_SIDE, SLOW_SIDE]
    assert during >= len(answered_meanwhile)


async def test_request_resolved_before_swap_finishes_on_old_version(agent: Agent) -> None:
    await agent.install("lin", "1.0.0", linear_model(1.0))
    raw = json.dumps(LINEAR_REQUEST).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.client.port)
    try:
        head = (
            "POST /v2/models/lin/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode() + raw[:10])  # the request starts and waits for its body
        await writer.drain()
        await asyncio.sleep(0.2)
        await agent.install("lin", "2.0.0", linear_model(2.0))
        await agent.install("lin", "3.0.0", linear_model(3.0))  # 1.0.0 is evicted
        writer.write(raw[10:])
        await writer.drain()
        async with asyncio.timeout(10):
            response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()

    assert response.startswith(b"HTTP/1.1 200")
    body = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert (body["model_version"], body["outputs"][0]["data"]) == ("1.0.0", [14.0])
