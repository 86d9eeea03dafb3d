"""``skiff push --reference-data``: bin a model's training inputs into a reference distribution.

The file is a CSV with a header row or a ``.npy`` 2-D array of numbers, one column per
numeric input feature. Which input a column belongs to comes from the model's signature:
a model with one 2-D input ``X`` [N, F] has features ``X[0]`` .. ``X[F-1]`` (the columns in
order); a model whose inputs each hold one value per row ([N] or [N, 1]) has one feature
per input, named after it (CSV columns by header name, ``.npy`` columns in input order).
Each feature gets up to ten quantile bins (docs/drift.md).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from central.cli.errors import CliError
from central.cli.output import format_bytes
from central.services.formats import onnx_main_file, onnx_signature
from shared.drift import MAX_FEATURES, parse_reference
from shared.errors import FormatError, InvalidInputError

__all__ = ["BINS", "build_reference", "feature_names", "load_reference"]

BINS = 10
MAX_BYTES = 512 * 1024**2
_NUMERIC = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "BOOL"}


def _read(path: Path) -> tuple[list[str] | None, np.ndarray]:
    """The header (CSV only) and the data as a 2-D float array."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise CliError(f"reference data {path}: larger than {format_bytes(MAX_BYTES)}")
        raw = path.read_bytes()
    except OSError as e:
        raise CliError(f"cannot read reference data {path}: {e.strerror}") from e
    if path.suffix.lower() == ".npy":
        try:
            data = np.load(io.BytesIO(raw), allow_pickle=False)
            array = np.asarray(data, dtype=np.float64)
        except (ValueError, TypeError, OSError) as e:
            raise CliError(f"reference data {path}: not a numeric .npy array ({e})") from e
        if array.ndim != 2:
            raise CliError(f"reference data {path}: expected a 2-D array, got shape {array.shape}")
        return None, array
    try:
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as e:
        raise CliError(f"reference data {path}: not a UTF-8 CSV file ({e})") from e
    rows = [r for r in rows if r]
    if len(rows) < 2:
        raise CliError(f"reference data {path}: needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    try:
        array = np.array([[float(v) for v in r] for r in rows[1:]], dtype=np.float64)
    except ValueError as e:
        raise CliError(f"reference data {path}: every value must be a number ({e})") from e
    if array.ndim != 2 or array.shape[1] != len(header):
        raise CliError(f"reference data {path}: every row must have {len(header)} values")
    return header, array


def feature_names(inputs: list[dict[str, Any]], header: list[str] | None, width: int) -> list[str]:
    """The feature name of each data column, from the model's inputs.

    Raises:
        CliError: the columns do not match the model's numeric inputs.
    """
    numeric = [i for i in inputs if i["datatype"] in _NUMERIC]
    if len(numeric) == 1 and len(numeric[0]["shape"]) == 2 and numeric[0]["shape"][1] != 1:
        name, features = numeric[0]["name"], numeric[0]["shape"][1]
        if features not in (-1, width):
            raise CliError(f"input {name} has {features} features but the data has {width} columns")
        return [f"{name}[{j}]" for j in range(width)]
    single = [i["name"] for i in numeric if i["shape"] in ([-1], [-1, 1]) or len(i["shape"]) == 1]
    if not single or len(single) != len(numeric):
        raise CliError(
            "reference data needs a model with one 2-D numeric input [N, F] or "
            "numeric inputs of one value per row"
        )
    if header is None:
        if width != len(single):
            raise CliError(f"the model has {len(single)} inputs but the data has {width} columns")
        return single
    unknown = [h for h in header if h not in single]
    if unknown:
        raise CliError(f"reference data columns {unknown} are not inputs of the model {single}")
    return header


def build_reference(names: list[str], data: np.ndarray) -> dict[str, Any]:
    """Quantile bins of each column and the reference counts on them."""
    if not 1 <= len(names) <= MAX_FEATURES:
        raise CliError(f"reference data: 1 to {MAX_FEATURES} feature columns, got {len(names)}")
    features: dict[str, Any] = {}
    for j, name in enumerate(names):
        column = data[:, j][np.isfinite(data[:, j])]
        if column.size == 0:
            raise CliError(f"reference data: column {name} has no finite value")
        inner = np.quantile(column, np.linspace(0, 1, BINS + 1)[1:-1])
        edges = np.unique(inner)
        if edges.size == 0:
            edges = np.unique(column)[:1]
        counts = np.bincount(np.searchsorted(edges, column, side="right"), minlength=edges.size + 1)
        features[name] = {"edges": [float(e) for e in edges], "counts": counts.tolist()}
    reference = {"features": features, "rows": int(data.shape[0])}
    try:
        parse_reference(reference)
    except FormatError as e:
        raise CliError(f"reference data: {e}") from e
    return reference


def load_reference(data_path: Path, model_path: Path) -> dict[str, Any]:
    """The ``reference`` metadata section for the model at ``model_path`` (file or folder).

    Raises:
        CliError: the data cannot be read or does not match the model's inputs.
    """
    header, data = _read(data_path)
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise CliError(f"reference data {data_path}: no rows or no columns")
    if model_path.is_dir():
        paths = [p.relative_to(model_path).as_posix() for p in model_path.rglob("*.onnx")]
        try:
            model_file = model_path / onnx_main_file(paths)
        except InvalidInputError as e:
            raise CliError(f"--reference-data: {e}") from e
    else:
        model_file = model_path
    try:
        signature = onnx_signature(model_file)
    except InvalidInputError as e:
        raise CliError(f"--reference-data needs an ONNX model: {e}") from e
    names = feature_names(signature["inputs"], header, data.shape[1])
    return build_reference(names, data)
