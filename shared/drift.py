"""Reference distributions of a model's input features, as carried in signed metadata.

A reference is the training data's distribution of each numeric input feature, binned:
``{"features": {name: {"edges": [...], "counts": [...]}}, "rows": n}``. ``edges`` are the
strictly increasing *inner* bin edges; the first bin is open below (-inf) and the last one
open above (+inf), so ``len(counts) == len(edges) + 1``. A value ``x`` falls in bin ``i``
when ``edges[i-1] <= x < edges[i]``. JSON has no infinity, hence the implicit ends.

Feature names say which input they come from: ``X[2]`` is column 2 of the 2-D input ``X``
([N, F]); a bare name is a one-column input ([N] or [N, 1]).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import FormatError

__all__ = [
    "MAX_BINS",
    "MAX_FEATURES",
    "MIN_BINS",
    "FeatureBins",
    "feature_source",
    "parse_reference",
]

MAX_FEATURES = 256
MIN_BINS = 2
MAX_BINS = 64
MAX_NAME = 256
_COLUMN = re.compile(r"^(.+)\[(\d{1,6})\]$")


@dataclass(frozen=True, slots=True)
class FeatureBins:
    """The reference histogram of one feature."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if not MIN_BINS <= len(self.counts) <= MAX_BINS:
            raise FormatError(f"{MIN_BINS} to {MAX_BINS} bins, got {len(self.counts)}")
        if len(self.edges) != len(self.counts) - 1:
            raise FormatError(f"{len(self.counts)} counts need {len(self.counts) - 1} edges")
        if not all(math.isfinite(e) for e in self.edges):
            raise FormatError("edges must be finite numbers")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise FormatError("edges must be strictly increasing")
        if sum(self.counts) == 0:
            raise FormatError("counts must not all be zero")

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "counts": list(self.counts)}


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FormatError(f"edges must be numbers, got {value!r}")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise FormatError(f"counts must be non-negative integers, got {value!r}")
    return value


def parse_reference(value: Any) -> dict[str, FeatureBins]:
    """The features of a reference document, checked.

    Raises:
        FormatError: naming the feature and what is wrong with it.
    """
    if not isinstance(value, Mapping):
        raise FormatError("reference must be an object")
    unknown = set(value) - {"features", "rows"}
    if unknown:
        raise FormatError(f"unknown field(s) in reference: {', '.join(sorted(unknown))}")
    rows = value.get("rows")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise FormatError("reference.rows must be a positive integer")
    features = value.get("features")
    if not isinstance(features, Mapping) or not 1 <= len(features) <= MAX_FEATURES:
        raise FormatError(f"reference.features must be an object of 1 to {MAX_FEATURES} features")
    out = {}
    for name, bins in features.items():
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
            raise FormatError(f"feature names must be 1 to {MAX_NAME} characters")
        try:
            if not isinstance(bins, Mapping) or set(bins) != {"edges", "counts"}:
                raise FormatError('expected {"edges": [...], "counts": [...]}')
            edges, counts = bins["edges"], bins["counts"]
            if not isinstance(edges, list) or not isinstance(counts, list):
                raise FormatError("edges and counts must be lists")
            parsed = FeatureBins(tuple(map(_number, edges)), tuple(map(_count, counts)))
        except FormatError as e:
            raise FormatError(f"reference feature {name[:64]!r}: {e}") from e
        if sum(parsed.counts) > rows:
            raise FormatError(f"reference feature {name[:64]!r}: counts exceed rows")
        out[name] = parsed
    return out


def feature_source(name: str) -> tuple[str, int | None]:
    """The input a feature reads and its column: ``X[2]`` → ("X", 2), ``age`` → ("age", None)."""
    m = _COLUMN.match(name)
    return (m.group(1), int(m.group(2))) if m else (name, None)
