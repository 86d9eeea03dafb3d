"""Tests for shared.canonical: the bytes that signatures cover."""

import math

import pytest

from shared.canonical import canonical_json, loads_json
from shared.errors import FormatError, LengthError


def test_sorted_compact_utf8() -> None:
    obj = {"b": [1, True, None], "a": {"z": "é", "y": "\u2603"}}
    assert canonical_json(obj) == '{"a":{"y":"☃","z":"é"},"b":[1,true,null]}'.encode()


def test_deterministic_regardless_of_insertion_order() -> None:
    one = {"x": 1, "y": {"b": 2, "a": 1}}
    two = {"y": {"a": 1, "b": 2}, "x": 1}
    assert canonical_json(one) == canonical_json(two)


def test_tuples_encode_as_lists() -> None:
    assert canonical_json({"a": (1, 2)}) == b'{"a":[1,2]}'


def test_big_ints_are_exact() -> None:
    assert canonical_json(2**70) == str(2**70).encode()


@pytest.mark.parametrize("value", [1.5, {"a": [0.0]}, [1, 2.25]])
def test_floats_rejected_by_default(value: object) -> None:
    with pytest.raises(FormatError):
        canonical_json(value)


def test_floats_allowed_on_request() -> None:
    assert canonical_json({"loss": 0.25}, allow_floats=True) == b'{"loss":0.25}'


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_never_allowed(value: float) -> None:
    with pytest.raises(FormatError):
        canonical_json({"x": value}, allow_floats=True)


@pytest.mark.parametrize(
    "value", [{1: "a"}, {"a": {1, 2}}, b"bytes", object(), {"s": "\ud800"}, {(1,): 2}]
)
def test_unrepresentable_values_rejected(value: object) -> None:
    with pytest.raises(FormatError):
        canonical_json(value)


def test_deep_nesting_rejected() -> None:
    obj: list[object] = []
    for _ in range(100):
        obj = [obj]
    with pytest.raises(FormatError):
        canonical_json(obj)


def test_loads_round_trip() -> None:
    data = canonical_json({"a": [1, "x", None, False], "b": {}})
    assert canonical_json(loads_json(data, max_bytes=len(data))) == data


def test_loads_too_long() -> None:
    with pytest.raises(LengthError):
        loads_json(b"[1,2,3]", max_bytes=6)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b'{"a":1}x',
        b'{"a":1,"a":2}',
        b'{"a":{"b":1,"b":1}}',
        b"NaN",
        b"[Infinity]",
        b"[-Infinity]",
        b"[1e999]",
        b'"\xff"',
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_loads_rejects(data: bytes) -> None:
    with pytest.raises(FormatError):
        loads_json(data, max_bytes=1_000_000)
