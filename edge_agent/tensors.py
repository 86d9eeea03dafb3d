"""Open Inference Protocol JSON tensors to numpy arrays and back.

A request tensor is ``{"name", "datatype", "shape", "data"}`` with ``data`` flattened in
row-major order (nested lists are accepted too). Decoding checks a tensor against the
model's signature (:class:`TensorSpec`) and raises :class:`InvalidInputError` naming the
input; encoding never fails: outputs that are not tensors (onnxruntime sequences and maps,
e.g. a scikit-learn ZipMap) are rendered as ``"datatype": "JSON"``. Sessions and HTTP are
left to ``slots.py`` and ``inference_api.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.errors import InvalidInputError

__all__ = [
    "NUMPY_DTYPES",
    "TensorSpec",
    "decode_input",
    "decode_inputs",
    "encode_output",
    "oip_datatype",
    "synthetic_input",
]

# Open Inference Protocol datatype -> numpy dtype (BYTES: object arrays of str).
NUMPY_DTYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

_ORT_TENSOR_TYPES = {
    "bool": "BOOL",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "float16": "FP16",
    "float": "FP32",
    "double": "FP64",
    "string": "BYTES",
}

_DATATYPE_OF_KIND = {np.dtype(dt).str: name for name, dt in NUMPY_DTYPES.items() if name != "BYTES"}

# Bounds nested ``data`` lists: no real tensor has more dimensions than this.
_MAX_RANK = 64


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model's signature.

    Attributes:
        name: The tensor's name in the model.
        datatype: An Open Inference Protocol datatype (``FP32``...), or onnxruntime's type
            string for values that are not tensors (``seq(map(int64,tensor(float)))``).
        shape: Dimensions, -1 for a dynamic one; ``None`` when even the rank is unknown.
    """

    name: str
    datatype: str
    shape: tuple[int, ...] | None

    @property
    def is_tensor(self) -> bool:
        return self.datatype in NUMPY_DTYPES

    @classmethod
    def from_ort(cls, name: str, ort_type: str, ort_shape: Sequence[object] | None) -> TensorSpec:
        """Build from an onnxruntime ``NodeArg``: symbolic or missing dimensions become -1."""
        shape = None
        if ort_shape is not None:
            shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in ort_shape)
        return cls(name, oip_datatype(ort_type), shape)

    def to_dict(self) -> dict[str, Any]:
        """The Open Inference Protocol metadata form; an unknown rank is shown as ``[-1]``."""
        shape = [-1] if self.shape is None else list(self.shape)
        return {"name": self.name, "datatype": self.datatype, "shape": shape}


def oip_datatype(ort_type: str) -> str:
    """Map an onnxruntime type string (``tensor(float)``) to an OIP datatype (``FP32``).

    Types with no OIP equivalent (sequences, maps, bfloat16...) keep onnxruntime's string.
    """
    if ort_type.startswith("tensor(") and ort_type.endswith(")"):
        return _ORT_TENSOR_TYPES.get(ort_type[len("tensor(") : -1], ort_type)
    return ort_type


def decode_inputs(specs: object, expected: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Decode a request's ``inputs`` list against a model's input signature.

    Args:
        specs: The request's ``inputs`` value (untrusted JSON).
        expected: The model's inputs.

    Raises:
        InvalidInputError: A tensor is malformed, missing, unknown or given twice.

    Returns:
        numpy arrays by input name, ready for ``InferenceSession.run``.
    """
    if not isinstance(specs, list):
        raise InvalidInputError("inputs: expected a list of tensors")
    by_name = {spec.name: spec for spec in expected}
    arrays: dict[str, np.ndarray] = {}
    for item in specs:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise InvalidInputError("inputs: every tensor needs a string name")
        if name not in by_name:
            raise InvalidInputError(f"input {name}: the model has no such input")
        if name in arrays:
            raise InvalidInputError(f"input {name}: given more than once")
        arrays[name] = decode_input(item, by_name[name])
    missing = [name for name in by_name if name not in arrays]
    if missing:
        raise InvalidInputError(f"input {missing[0]}: missing from the request")
    return arrays


def decode_input(spec: dict[str, Any], expected: TensorSpec) -> np.ndarray:
    """Decode one OIP JSON tensor into a numpy array shaped and typed as the model expects.

    Args:
        spec: ``{"name", "datatype", "shape", "data"}`` from the request.
        expected: The model's input of that name.

    Raises:
        InvalidInputError: Datatype, rank, a fixed dimension or the element count do not
            match, or an element does not fit the datatype.

    Returns:
        The array; BYTES become an object array of ``str``.
    """
    name = expected.name
    datatype = spec.get("datatype")
    if datatype != expected.datatype:
        raise InvalidInputError(f"input {name}: expected {expected.datatype}, got {datatype}")
    shape = _checked_shape(name, spec.get("shape"), expected.shape)
    count = math.prod(shape)
    flat = _flatten(name, spec.get("data"))
    if len(flat) != count:
        raise InvalidInputError(
            f"input {name}: shape {list(shape)} needs {count} elements, got {len(flat)}"
        )
    return _to_array(name, flat, datatype).reshape(shape)


def _checked_shape(name: str, shape: object, expected: tuple[int, ...] | None) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInputError(f"input {name}: shape must be a list of non-negative integers")
    if expected is None:
        return tuple(shape)
    if len(shape) != len(expected):
        raise InvalidInputError(
            f"input {name}: expected rank {len(expected)} {list(expected)}, got shape {shape}"
        )
    for axis, (got, want) in enumerate(zip(shape, expected, strict=True)):
        if want != -1 and got != want:
            raise InvalidInputError(
                f"input {name}: dimension {axis} must be {want} {list(expected)}, got {got}"
            )
    return tuple(shape)


def _flatten(name: str, data: object) -> list[Any]:
    if not isinstance(data, list):
        raise InvalidInputError(f"input {name}: data must be a list")
    level: list[Any] = data
    for _ in range(_MAX_RANK):
        if not any(isinstance(x, list) for x in level):
            return level
        if not all(isinstance(x, list) for x in level):
            raise InvalidInputError(f"input {name}: nested data must be regular")
        level = [y for x in level for y in x]
    raise InvalidInputError(f"input {name}: data nested deeper than {_MAX_RANK} levels")


def _to_array(name: str, flat: list[Any], datatype: str) -> np.ndarray:
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in flat):
            raise InvalidInputError(f"input {name}: BYTES data must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array
    if not flat:
        return np.zeros(0, dtype=dtype)
    return _numeric_array(name, flat, datatype, dtype)


def _numeric_array(name: str, flat: list[Any], datatype: str, dtype: np.dtype[Any]) -> np.ndarray:
    try:
        raw = np.array(flat)
    except (ValueError, OverflowError) as e:
        raise InvalidInputError(f"input {name}: data is not a list of numbers") from e
    allowed = {"BOOL": "b", "FP16": "iuf", "FP32": "iuf", "FP64": "iuf"}.get(datatype, "iu")
    if allowed == "iu" and raw.dtype.kind in "fO" and _all_ints(flat):
        # Integers beyond int64 (UINT64) make numpy guess float64 or object: convert exactly.
        try:
            return np.array(flat, dtype=dtype)
        except OverflowError as e:
            raise InvalidInputError(f"input {name}: a value is out of range for {datatype}") from e
    if raw.dtype.kind not in allowed:
        kind = "booleans" if datatype == "BOOL" else "integers" if allowed == "iu" else "numbers"
        raise InvalidInputError(f"input {name}: {datatype} data must be {kind}")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if int(raw.min()) < info.min or int(raw.max()) > info.max:
            raise InvalidInputError(f"input {name}: a value is out of range for {datatype}")
    try:
        with np.errstate(over="raise"):
            return raw.astype(dtype)
    except FloatingPointError as e:
        raise InvalidInputError(f"input {name}: a value is out of range for {datatype}") from e


def _all_ints(values: list[Any]) -> bool:
    return all(isinstance(x, int) and not isinstance(x, bool) for x in values)


def synthetic_input(spec: TensorSpec, *, scalar: bool = True) -> Any:
    """A harmless value for a warm-up run: zeros (or "") with dynamic dimensions set to 1.

    Args:
        spec: The model input.
        scalar: For an input whose shape onnxruntime reports as ``[]`` (a scalar, or a shape
            the model does not declare), use rank 0 if true, else rank 1.
    """
    if spec.datatype.startswith("seq("):
        return []
    if spec.datatype.startswith("map("):
        return {}
    shape: tuple[int, ...] = tuple(1 if d == -1 else d for d in spec.shape or ())
    if not shape and not scalar:
        shape = (1,)
    if spec.datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    dtype = NUMPY_DTYPES.get(spec.datatype, np.dtype(np.float32))
    return np.zeros(shape, dtype=dtype)


def encode_output(name: str, value: object) -> dict[str, Any]:
    """Render one model output as an OIP JSON tensor; never raises.

    Tensors keep their datatype, shape and flattened data. Anything else (lists of dicts
    from a ZipMap, maps, sequences) becomes ``{"datatype": "JSON", "shape": [len]}`` with
    plain JSON data: string keys and Python numbers.
    """
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        datatype = _array_datatype(value)
        if datatype is not None:
            return {
                "name": name,
                "datatype": datatype,
                "shape": list(value.shape),
                # numeric tolist() is plain Python numbers already; strings and bytes are not
                "data": value.ravel().tolist()
                if value.dtype.kind in "biuf"
                else _plain(value.ravel().tolist()),
            }
        value = value.tolist()
    data = _plain(value)
    if not isinstance(data, list):
        data = [data]
    return {"name": name, "datatype": "JSON", "shape": [len(data)], "data": data}


def _array_datatype(array: np.ndarray) -> str | None:
    if array.dtype.kind in "OSU":
        flat: Iterable[Any] = array.flat
        return "BYTES" if all(isinstance(x, str | bytes | np.str_) for x in flat) else None
    return _DATATYPE_OF_KIND.get(array.dtype.str)


def _plain(value: object) -> Any:
    """Turn numpy scalars and arrays, bytes and mapping keys into plain JSON values."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, Mapping):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)
