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


def test_formatting_one_second_after_another_never_repeats_the_last_text() -> None:
    """Times a microsecond apart, across second boundaries, zones and 1970, in turn."""
    india = timezone(timedelta(hours=5, minutes=30))
    start = datetime(1969, 12, 31, 23, 59, 58, 999_998, tzinfo=UTC)
    for step in range(6):
        for zone in (UTC, india):
            moment = (start + timedelta(microseconds=step)).astimezone(zone)
            expected = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            assert format_time(moment) == expected
            assert format_time(moment + timedelta(seconds=1)) != expected
            assert format_time(moment) == expected
    later = datetime(2026, 11, 27, 2, 0, 0, 999_999, tzinfo=UTC)
    assert format_time(later) == "2026-11-27T02:00:00Z"
    assert format_time(later + timedelta(microseconds=1)) == "2026-11-27T02:00:01Z"
