"""Rollout rules judge a candidate's telemetry: built-in rules, drift and custom bounds."""

from __future__ import annotations

from typing import Any

import pytest

from central.services.rollouts import DEFAULT_RULES, StartRollout, judge
from shared.errors import InvalidInputError


def stats(requests: int, errors: int = 0, p95: float = 2.0, **classes: int) -> dict[str, Any]:
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "latency_ms": {"p50": 1.0, "p95": p95, "p99": p95 * 2},
        "classes": classes,
    }


def verdict(verdicts: list[dict[str, Any]], rule: str) -> str:
    return next(v["verdict"] for v in verdicts if v["rule"] == rule)


def rules(**changes: Any) -> dict[str, Any]:
    return {**DEFAULT_RULES, "min_requests": 10, **changes}


@pytest.mark.parametrize(
    ("cand", "expected"),
    [
        (stats(5), {"min_requests": "wait"}),
        (stats(100, errors=1), {"max_error_rate_increase": "pass", "max_p95_ratio": "pass"}),
        (stats(100, errors=10), {"max_error_rate_increase": "fail"}),
        (stats(100, p95=5.0), {"max_p95_ratio": "fail"}),
    ],
    ids=["too-few-requests", "healthy", "more-errors", "slower"],
)
def test_built_in_rules(cand: dict[str, Any], expected: dict[str, str]) -> None:
    got = judge(rules(), cand, stats(100))
    for rule, v in expected.items():
        assert verdict(got, rule) == v, got


def test_drift_rule_uses_the_largest_input_psi() -> None:
    drift = {"X[0]": {"psi": 0.4, "live_n": 500}, "X[1]": {"psi": 0.01, "live_n": 500}}
    got = judge(rules(max_drift_psi=0.25), stats(100), stats(100), drift)
    assert verdict(got, "max_drift_psi") == "fail"
    calm = {"X[0]": {"psi": 0.05, "live_n": 500}}
    assert (
        verdict(judge(rules(max_drift_psi=0.25), stats(100), stats(100), calm), "max_drift_psi")
        == "pass"
    )
    assert (
        verdict(judge(rules(max_drift_psi=0.25), stats(100), stats(100), None), "max_drift_psi")
        == "wait"
    )


def test_custom_bounds_on_candidate_metrics() -> None:
    bounds = {"class_share:1": {"max": 0.6}, "error_rate": {"max": 0.05}, "p99_ms": {"min": 1}}
    cand = stats(100, errors=1, **{"0": 30, "1": 70})
    got = judge(rules(bounds=bounds), cand, stats(100))
    assert verdict(got, "bounds.class_share:1") == "fail"
    assert verdict(got, "bounds.error_rate") == "pass"
    assert verdict(got, "bounds.p99_ms") == "pass"
    missing = judge(rules(bounds={"psi:X[0]": {"max": 0.2}}), cand, stats(100))
    assert verdict(missing, "bounds.psi:X[0]") == "wait"


@pytest.mark.parametrize(
    "bad",
    [
        {"bounds": {"latency": {"max": 1}}},
        {"bounds": {"error_rate": {"max": -1}}},
        {"bounds": {"error_rate": {}}},
        {"bounds": {"error_rate": {"mean": 1}}},
        {"max_drift_psi": "high"},
        {"nonsense": 1},
    ],
    ids=["unknown-metric", "negative", "empty", "unknown-key", "not-a-number", "unknown-rule"],
)
def test_bad_rules_are_refused(bad: dict[str, Any]) -> None:
    body = {"model": "m", "fleet": "f", "candidate": "1.1.0", "rules": bad}
    with pytest.raises(InvalidInputError):
        StartRollout.from_dict(body)
