"""UTC timestamps in the one wire format, ``YYYY-MM-DDTHH:MM:SSZ``.

Only ``utcnow`` reads the clock; verification code takes ``reference_time``
from its caller instead.
"""

from __future__ import annotations

import logging
import math
import re
from datetime import UTC, datetime

from shared.errors import FormatError

__all__ = ["TIME_FORMAT", "format_time", "parse_time", "utcnow"]

logger = logging.getLogger(__name__)

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def utcnow() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


# The last second formatted and its text: a busy server formats the same second many
# times (a registration stamps its version, change and audit rows), and strftime is slow.
_last_formatted: tuple[int, str] = (-(2**63), "")


def format_time(dt: datetime) -> str:
    """Format an aware datetime as ``YYYY-MM-DDTHH:MM:SSZ`` (seconds precision).

    Raises:
        ValueError: ``dt`` is naive.
    """
    global _last_formatted
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got {dt!r}")
    second = math.floor(dt.timestamp())
    last = _last_formatted  # one read: another thread may replace it meanwhile
    if last[0] == second:
        return last[1]
    text = dt.astimezone(UTC).strftime(TIME_FORMAT)
    _last_formatted = (second, text)
    return text


def parse_time(s: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH:MM:SSZ`` into an aware UTC datetime.

    Raises:
        FormatError: ``s`` is not a string in exactly that format.
    """
    if not isinstance(s, str) or _TIME_RE.fullmatch(s) is None:
        raise FormatError(f"expected a time like 2027-01-31T12:00:00Z, got {s!r:.64}")
    try:
        return datetime.fromisoformat(s)  # the pattern above admits only Z (UTC) times
    except ValueError as e:
        raise FormatError(f"invalid time {s!r}: {e}") from e
