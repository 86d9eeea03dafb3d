"""Small ONNX models built with ``onnx.helper``, and onnxruntime's example models.

Opset 17 and IR version 8, so any onnxruntime >= 1.18 loads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "IR_VERSION",
    "OPSET",
    "ORT_DATASETS",
    "SLOW_SIDE",
    "broken_model",
    "linear_model",
    "multi_input_model",
    "slow_model",
]

OPSET = 17
IR_VERSION = 8
ORT_DATASETS = Path(onnxruntime.__file__).parent / "datasets"
SLOW_SIDE = 256  # the slow model's X and Y are [SLOW_SIDE, SLOW_SIDE]


def _serialize(graph: onnx.GraphProto, *, check: bool = True) -> bytes:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="skiff-tests",
    )
    if check:
        onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def linear_model(scale: float = 1.0) -> bytes:
    """``Y = X @ W`` with X float [N, 3], W = scale * [[1], [2], [3]], Y float [N, 1]."""
    weights = (scale * np.array([[1.0], [2.0], [3.0]])).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(weights, name="W")],
    )
    return _serialize(graph)


def multi_input_model() -> bytes:
    """``Y = X * cast(K)``: X float [N, 4] and K an INT64 scalar; Y float [N, 4]."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["K"], ["Kf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["X", "Kf"], ["Y"]),
        ],
        "multi_input",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("K", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4])],
    )
    return _serialize(graph)


def broken_model() -> bytes:
    """A well-formed protobuf that onnxruntime refuses: a node reads an undefined input."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "Missing"], ["Y"])],
        "broken",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 1])],
    )
    return _serialize(graph, check=False)


def slow_model() -> bytes:
    """``Y = tanh(X @ W)`` applied ``M`` times in a Loop: its run time grows with M.

    Inputs M (INT64 scalar) and X (float [SLOW_SIDE, SLOW_SIDE]); output Y like X.
    """
    side = SLOW_SIDE
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["s_in", "W"], ["m"]),
            helper.make_node("Tanh", ["m"], ["s_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [side, side]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [side, side]),
        ],
    )
    weights = np.random.default_rng(0).normal(0, 0.05, (side, side)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "", "X"], ["Y"], body=body)],
        "slow",
        [
            helper.make_tensor_value_info("M", TensorProto.INT64, []),
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [side, side]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [side, side])],
        initializer=[numpy_helper.from_array(weights, name="W")],
    )
    return _serialize(graph)
