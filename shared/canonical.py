"""Canonical JSON: the one encoding of every signed document.

``canonical_json`` produces the exact bytes that signatures cover: sorted keys,
no insignificant whitespace, UTF-8, and no floats unless the caller opts in
(metadata documents may carry floats; signed wire documents never do).
``loads_json`` parses untrusted bytes within a size limit and refuses what
canonical JSON cannot represent. Neither does any I/O.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from shared.errors import FormatError, LengthError

__all__ = ["canonical_json", "loads_json"]

logger = logging.getLogger(__name__)

_MAX_DEPTH = 64


def canonical_json(obj: Any, *, allow_floats: bool = False) -> bytes:
    """Encode ``obj`` as canonical JSON.

    Args:
        obj: Nested dicts (str keys), lists, tuples, str, int, bool and None.
        allow_floats: Accept finite floats (encoded with Python's repr).

    Raises:
        FormatError: ``obj`` holds a type canonical JSON cannot represent,
            a non-str key, a float (unless allowed), NaN or Infinity, a
            string that is not valid Unicode, or nesting deeper than 64.

    Returns:
        The UTF-8 bytes.
    """
    _check(obj, allow_floats, 0)
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except (ValueError, UnicodeEncodeError) as e:
        raise FormatError(f"cannot encode as canonical JSON: {e}") from e


def _check(obj: Any, allow_floats: bool, depth: int) -> None:
    """Refuse what canonical JSON cannot represent; iterative, exact types first."""
    stack = [(obj, depth)]
    pop, push = stack.pop, stack.append
    while stack:
        item, level = pop()
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if level > _MAX_DEPTH:
            raise FormatError(f"JSON nesting deeper than {_MAX_DEPTH}")
        if item and level == _MAX_DEPTH and isinstance(item, dict | list | tuple):
            raise FormatError(f"JSON nesting deeper than {_MAX_DEPTH}")  # its items would be
        if kind is dict or isinstance(item, dict):
            for key, value in item.items():
                if type(key) is not str and not isinstance(key, str):
                    raise FormatError(f"JSON object keys must be str, got {type(key).__name__}")
                push((value, level + 1))
        elif kind is list or kind is tuple or isinstance(item, list | tuple):
            for value in item:
                push((value, level + 1))
        elif isinstance(item, float):
            if not allow_floats:
                raise FormatError(f"floats are not allowed in canonical JSON, got {item!r}")
            if not math.isfinite(item):
                raise FormatError(f"NaN and Infinity are not allowed, got {item!r}")
        elif not isinstance(item, str | int):  # subclasses of the scalar types
            raise FormatError(f"type {kind.__name__} is not allowed in canonical JSON")


def loads_json(data: bytes, *, max_bytes: int) -> Any:
    """Parse untrusted JSON bytes.

    Args:
        data: UTF-8 encoded JSON.
        max_bytes: The most bytes accepted.

    Raises:
        LengthError: ``data`` is longer than ``max_bytes``.
        FormatError: ``data`` is not valid UTF-8 JSON, repeats a key in an
            object, or uses NaN, Infinity or an out-of-range number.

    Returns:
        The parsed value.
    """
    if len(data) > max_bytes:
        raise LengthError(f"expected at most {max_bytes} bytes of JSON, got {len(data)}")
    try:
        text = data.decode("utf-8")
        return json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except FormatError:
        raise
    except (ValueError, RecursionError) as e:
        raise FormatError(f"invalid JSON: {e}") from e


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise FormatError(f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise FormatError(f"JSON constant {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise FormatError(f"JSON number {text[:40]} is out of range")
    return value
