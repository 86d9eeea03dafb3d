"""JSON for the registry's own documents and answers: orjson, with the standard library
for the few values orjson refuses (integers beyond 64 bits, non-string keys).

Untrusted input is never parsed here: requests go through ``shared.canonical.loads_json``
(duplicate keys refused), and signed bytes through ``canonical_json``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "loads"]


def loads(text: str | bytes) -> Any:
    """Parse JSON the registry wrote itself (a stored column)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON (non-ASCII kept as is), for an HTTP answer."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
