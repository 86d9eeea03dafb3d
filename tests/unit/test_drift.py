"""Drift statistics (PSI, KS), reference validation, and live binning on the edge."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from central.cli.errors import CliError
from central.cli.reference import build_reference, feature_names, load_reference
from central.requests import parse_metadata
from central.services.drift import EPSILON, Thresholds, compare, ks, psi
from edge_agent.drift import FeatureBinner
from shared.drift import FeatureBins, parse_reference
from shared.errors import FormatError, InvalidInputError
from shared.telemetry import VersionStats
from tests.onnx_models import linear_model


def test_identical_distributions_do_not_drift() -> None:
    counts = [100] * 10
    assert psi(counts, counts) == pytest.approx(0.0, abs=1e-12)
    assert ks(counts, counts) == pytest.approx(0.0, abs=1e-12)
    assert psi(counts, [3 * c for c in counts]) == pytest.approx(0.0, abs=1e-12)


def test_shifted_distribution_drifts_a_lot() -> None:
    reference = [100] * 10
    shifted = [0] * 7 + [100, 300, 600]
    assert psi(reference, shifted) > 1.0
    assert ks(reference, shifted) == pytest.approx(0.7)


def test_small_example_by_hand() -> None:
    # reference shares (0.5, 0.5), live shares (0.25, 0.75)
    # PSI = (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5) = 0.25 ln 2 + 0.25 ln 1.5
    assert psi([50, 50], [1, 3]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    # CDFs: (0.5, 1.0) and (0.25, 1.0)
    assert ks([50, 50], [1, 3]) == pytest.approx(0.25)


def test_empty_bins_cost_a_finite_amount() -> None:
    value = psi([10, 0], [0, 10])
    assert math.isfinite(value)
    # shares (1, eps) against (eps, 1): twice (1 - eps) * ln(1 / eps)
    expected = 2 * (1 - EPSILON) * math.log(1 / EPSILON)
    assert value == pytest.approx(expected, rel=1e-6)
    assert ks([10, 0], [0, 10]) == pytest.approx(1.0)


def test_levels_follow_the_thresholds() -> None:
    t = Thresholds(psi_warn=0.1, psi_alert=0.25, ks_alert=0.2, min_samples=10)
    assert t.level(0.05, 0.05, 100) == "ok"
    assert t.level(0.15, 0.05, 100) == "warn"
    assert t.level(0.30, 0.05, 100) == "alert"
    assert t.level(0.05, 0.25, 100) == "alert"
    assert t.level(5.0, 1.0, 9) == "insufficient"
    reference = {"a": FeatureBins((0.0,), (50, 50)), "b": FeatureBins((0.0,), (50, 50))}
    result = compare(reference, {"a": [50, 50]}, t)
    assert result["a"]["level"] == "ok" and result["a"]["live_n"] == 100
    assert result["b"] == {"psi": None, "ks": None, "live_n": 0, "level": "insufficient"}


def _reference(**feature: Any) -> dict[str, Any]:
    bins = {"edges": [0.0, 1.0], "counts": [1, 2, 3], **feature}
    return {"features": {"X[0]": bins}, "rows": 6}


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        (_reference(edges=[1.0, 0.0]), "strictly increasing"),
        (_reference(edges=[0.0, 0.0]), "strictly increasing"),
        (_reference(counts=[1, -2, 3]), "non-negative"),
        (_reference(counts=[1, 2]), "edges"),
        (_reference(edges=[], counts=[6]), "2 to 64 bins"),
        (_reference(edges=list(range(64)), counts=[1] * 65), "2 to 64 bins"),
        (_reference(counts=[1.5, 2, 3]), "non-negative integers"),
        (_reference(edges=["a", 1.0]), "numbers"),
        (
            {
                "features": {f"f{i}": _reference()["features"]["X[0]"] for i in range(257)},
                "rows": 6,
            },
            "1 to 256 features",
        ),
        ({"features": {}, "rows": 6}, "1 to 256 features"),
        (_reference(counts=[10, 20, 30]), "exceed rows"),
    ],
)
def test_bad_references_are_refused_by_name(reference: Any, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_reference(reference)
    with pytest.raises(InvalidInputError, match=r"metadata\.reference"):
        parse_metadata({"reference": reference})


def test_a_valid_reference_is_kept_in_the_metadata() -> None:
    meta = parse_metadata({"reference": _reference()})
    assert meta["reference"] == _reference()
    assert "reference" not in parse_metadata({})


def test_edge_binning_uses_the_reference_bins() -> None:
    reference = {
        "features": {
            "X[0]": {"edges": [0.0, 1.0], "counts": [1, 1, 1]},
            "X[1]": {"edges": [10.0], "counts": [1, 1]},
        },
        "rows": 3,
    }
    binner = FeatureBinner(reference)
    counts: dict[str, list[int]] = {}
    x = np.array([[-1.0, 5.0], [0.0, 10.0], [0.5, 20.0], [2.0, np.nan]], dtype=np.float32)
    binner.add(counts, {"X": x})
    assert counts == {"X[0]": [1, 2, 1], "X[1]": [1, 2]}
    binner.add(counts, {"X": x[:1]})
    assert counts["X[0]"] == [2, 2, 1]
    binner.add(counts, {"X": np.zeros((2, 3), dtype=np.float32)})  # shape mismatch: skipped
    binner.add(counts, {"Y": x})  # not a reference input
    binner.add(counts, {"X": np.zeros((0, 2), dtype=np.float32)})  # no rows
    assert counts["X[0]"] == [2, 2, 1]


def test_feature_counts_travel_in_version_stats() -> None:
    a, b = VersionStats("m", "1.0.0"), VersionStats("m", "1.0.0")
    a.features, b.features = {"X[0]": [1, 2]}, {"X[0]": [3, 4], "X[1]": [0, 1]}
    a.merge(b)
    assert a.features == {"X[0]": [4, 6], "X[1]": [0, 1]}
    assert VersionStats.from_dict(a.to_dict()).features == a.features
    old = {k: v for k, v in a.to_dict().items() if k != "features"}
    assert VersionStats.from_dict(old).features == {}
    with pytest.raises(FormatError):
        VersionStats.from_dict({**a.to_dict(), "features": {"X[0]": [1]}})
    with pytest.raises(FormatError):
        VersionStats.from_dict({**a.to_dict(), "features": {"X[0]": [1, -1]}})


def test_reference_data_is_binned_by_quantiles(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(1000, 3))
    reference = build_reference(["X[0]", "X[1]", "X[2]"], data)
    bins = parse_reference(reference)
    assert reference["rows"] == 1000
    assert all(len(b.counts) == 10 and sum(b.counts) == 1000 for b in bins.values())
    assert all(90 <= c <= 110 for b in bins.values() for c in b.counts)
    model = tmp_path / "model.onnx"
    model.write_bytes(linear_model())
    csv = tmp_path / "ref.csv"
    csv.write_text("a,b,c\n" + "\n".join(",".join(map(str, row)) for row in data) + "\n")
    assert set(load_reference(csv, model)["features"]) == {"X[0]", "X[1]", "X[2]"}
    np.save(tmp_path / "ref.npy", data)
    assert load_reference(tmp_path / "ref.npy", tmp_path)["features"] == reference["features"]


def test_reference_data_must_fit_the_model(tmp_path: Path) -> None:
    inputs = [{"name": "X", "datatype": "FP32", "shape": [-1, 3]}]
    with pytest.raises(CliError, match="3 features but the data has 2 columns"):
        feature_names(inputs, None, 2)
    singles = [
        {"name": "age", "datatype": "FP32", "shape": [-1, 1]},
        {"name": "income", "datatype": "FP32", "shape": [-1]},
    ]
    assert feature_names(singles, ["income", "age"], 2) == ["income", "age"]
    with pytest.raises(CliError, match="not inputs of the model"):
        feature_names(singles, ["height", "age"], 2)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,oops\n")
    model = tmp_path / "model.onnx"
    model.write_bytes(linear_model())
    with pytest.raises(CliError, match="every value must be a number"):
        load_reference(bad, model)
