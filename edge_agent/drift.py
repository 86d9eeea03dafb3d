"""Live histograms of input features on the bins of a version's reference distribution.

Runs on the request path: one ``searchsorted`` per feature over the request's values,
memory only. Inputs whose shape does not match the reference's view of them are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from shared.drift import feature_source, parse_reference
from shared.errors import FormatError

logger = logging.getLogger(__name__)


class FeatureBinner:
    """Counts a version's live input values per reference feature."""

    def __init__(self, reference: Mapping[str, Any]) -> None:
        """Raises FormatError if ``reference`` is not a valid reference document."""
        features = parse_reference(reference)
        # input name -> [(feature, column or None, edges)]
        self._plan: dict[str, list[tuple[str, int | None, np.ndarray]]] = {}
        self._width: dict[str, int] = {}  # columns of each 2-D input the reference names
        for name, bins in features.items():
            source, column = feature_source(name)
            edges = np.asarray(bins.edges, dtype=np.float64)
            self._plan.setdefault(source, []).append((name, column, edges))
            if column is not None:
                self._width[source] = max(self._width.get(source, 0), column + 1)
        self.sizes = {name: len(bins.counts) for name, bins in features.items()}

    def add(self, into: dict[str, list[int]], inputs: Mapping[str, Any]) -> None:
        """Add the values of one request's ``inputs`` to the counts in ``into``."""
        for source, features in self._plan.items():
            array = inputs.get(source)
            if (
                not isinstance(array, np.ndarray)
                or array.dtype.kind not in "fiub"
                or not array.size
            ):
                continue
            width = self._width.get(source)
            if width is not None:
                if array.ndim != 2 or array.shape[1] != width:
                    continue
            elif not (array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1)):
                continue
            values = array.astype(np.float64, copy=False).reshape(array.shape[0], -1)
            for name, column, edges in features:
                self._count(into, name, values[:, column or 0], edges)

    def _count(
        self, into: dict[str, list[int]], name: str, column: np.ndarray, edges: np.ndarray
    ) -> None:
        column = column[np.isfinite(column)]  # NaN and infinities have no bin
        if not column.size:
            return
        bins = np.searchsorted(edges, column, side="right")
        counts = np.bincount(bins, minlength=self.sizes[name])
        known = into.get(name)
        if known is None:
            into[name] = counts.tolist()
        else:
            into[name] = (np.asarray(known) + counts).tolist()


def binner_for(metadata: Mapping[str, Any] | None) -> FeatureBinner | None:
    """The binner of a version's metadata document, or None if it has no valid reference."""
    reference = (metadata or {}).get("reference")
    if reference is None:
        return None
    try:
        return FeatureBinner(reference)
    except FormatError as e:
        logger.warning("Ignoring the reference distribution: %s", e)
        return None
