"""Model format detection and ONNX validation.

The format is read from the file names (and, for a lone file, its first bytes). An ONNX
version must load in onnxruntime; its input/output signature is what the API shows and
what edge devices check requests against.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any

from shared.errors import InvalidInputError

logger = logging.getLogger(__name__)

ONNX, TF_SAVEDMODEL, TORCHSCRIPT, PMML, OTHER = (
    "onnx",
    "tf_savedmodel",
    "torchscript",
    "pmml",
    "other",
)

# onnxruntime type strings -> Open Inference Protocol datatypes
_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def detect_format(paths: list[str], head: bytes = b"") -> str:
    """Guess a version's format from its file paths (and the first bytes of a lone file)."""
    names = {PurePosixPath(p).name for p in paths}
    suffixes = {PurePosixPath(p).suffix.lower() for p in paths}
    if ".onnx" in suffixes:
        return ONNX
    if "saved_model.pb" in names or "saved_model.pbtxt" in names:
        return TF_SAVEDMODEL
    if suffixes & {".pt", ".pth", ".torchscript", ".ptl"}:
        return TORCHSCRIPT
    if ".pmml" in suffixes or b"<PMML" in head[:512]:
        return PMML
    return OTHER


def onnx_main_file(paths: list[str]) -> str:
    """The model file of an ONNX version: ``model.onnx`` if present, else the only .onnx."""
    candidates = sorted(p for p in paths if p.lower().endswith(".onnx"))
    for p in candidates:
        if PurePosixPath(p).name == "model.onnx":
            return p
    if len(candidates) != 1:
        raise InvalidInputError(
            f"an ONNX version needs one .onnx file or one named model.onnx; got {candidates}"
        )
    return candidates[0]


def _value_info(arg: Any) -> dict[str, Any]:
    shape = arg.shape if isinstance(arg.shape, list) else []
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
    return {"name": arg.name, "datatype": _DATATYPES.get(arg.type, arg.type), "shape": dims}


def onnx_signature(model_path: Path) -> dict[str, Any]:
    """Load a model in onnxruntime (blocking; run it in a thread) and describe its I/O.

    Raises:
        InvalidInputError: onnxruntime cannot load the model.
    """
    import onnxruntime as ort  # heavy import, only where it is needed

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime raises several unrelated classes
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInputError(
            f"{model_path.name} does not load in onnxruntime: {first_line[:300]}"
        ) from e
    return {
        "inputs": [_value_info(a) for a in session.get_inputs()],
        "outputs": [_value_info(a) for a in session.get_outputs()],
    }
