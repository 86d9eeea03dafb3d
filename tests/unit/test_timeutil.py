"""Tests for shared.timeutil."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.errors import FormatError
from shared.timeutil import format_time, parse_time, utcnow


def test_round_trip() -> None:
    dt = datetime(2027, 11, 26, 10, 0, 0, tzinfo=UTC)
    assert format_time(dt) == "2027-11-26T10:00:00Z"
    assert parse_time("2027-11-26T10:00:00Z") == dt


def test_format_converts_to_utc_and_drops_microseconds() -> None:
    dt = datetime(2027, 1, 1, 12, 0, 0, 999, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(dt) == "2027-01-01T10:00:00Z"


def test_format_rejects_naive() -> None:
    with pytest.raises(ValueError):
        format_time(datetime(2027, 1, 1))


def test_utcnow_is_aware() -> None:
    assert utcnow().utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "2027-11-26",
        "2027-11-26T10:00:00",
        "2027-11-26T10:00:00+00:00",
        "2027-11-26T10:00:00.5Z",
        "2027-13-01T00:00:00Z",
        "2027-02-30T00:00:00Z",
        " 2027-11-26T10:00:00Z",
        "2027-11-26T10:00:00Z\n",
        None,
        1234,
    ],
)
def test_parse_rejects(value: object) -> None:
    with pytest.raises(FormatError):
        parse_time(value)  # type: ignore[arg-type]
