"""Tests for shared.semver, following the examples of semver.org 2.0.0."""

import itertools
import random

import pytest

from shared.errors import InvalidInputError
from shared.semver import SemVer

VALID = [
    "0.0.4",
    "1.2.3",
    "10.20.30",
    "1.1.2-prerelease+meta",
    "1.1.2+meta",
    "1.1.2+meta-valid",
    "1.0.0-alpha",
    "1.0.0-beta",
    "1.0.0-alpha.beta",
    "1.0.0-alpha.beta.1",
    "1.0.0-alpha.1",
    "1.0.0-alpha0.valid",
    "1.0.0-alpha.0valid",
    "1.0.0-alpha-a.b-c-somethinglong+build.1-aef.1-its-okay",
    "1.0.0-rc.1+build.1",
    "2.0.0-rc.1+build.123",
    "1.2.3-beta",
    "10.2.3-DEV-SNAPSHOT",
    "1.2.3-SNAPSHOT-123",
    "2.0.0+build.1848",
    "2.0.1-alpha.1227",
    "1.0.0-0A.is.legal",
    "1.0.0+0.build.1-rc.10000aaa-kk-0.1",
    "1.0.0+001",
    "99999999999999999999.0.0",
]

INVALID = [
    "",
    "1",
    "1.2",
    "1.2.3-0123",
    "1.2.3-0123.0123",
    "1.1.2+.123",
    "+invalid",
    "-invalid",
    "-invalid+invalid",
    "alpha",
    "1.0.0-alpha_beta",
    "1.0.0-alpha..",
    "1.0.0-alpha..1",
    "01.1.1",
    "1.01.1",
    "1.1.01",
    "1.2.3.DEV",
    "1.2-SNAPSHOT",
    "1.2.31.2.3----RC-SNAPSHOT.12.09.1--..12+788",
    "+justmeta",
    "9.8.7+meta+meta",
    "9.8.7-whatever+meta+meta",
    "v1.2.3",
    " 1.2.3",
    "1.2.3\n",
    "1.2.3-",
    "1.2.3+",
    "100000000000000000000.0.0",
    "1.0.0-é",
]

CHAIN = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
]


@pytest.mark.parametrize("text", VALID)
def test_parse_valid_round_trips(text: str) -> None:
    assert str(SemVer.parse(text)) == text


@pytest.mark.parametrize("text", INVALID)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid version"):
        SemVer.parse(text)


def test_parse_fields() -> None:
    v = SemVer.parse("1.2.3-rc.1+build.5")
    assert v == SemVer(1, 2, 3, ("rc", "1"), ("build", "5"))


def test_spec_precedence_chain() -> None:
    versions = [SemVer.parse(t) for t in CHAIN]
    for low, high in itertools.pairwise(versions):
        assert low < high
        assert high > low
        assert low <= high
        assert not high <= low
        assert low.sort_key() < high.sort_key()


def test_numeric_comparison() -> None:
    assert SemVer.parse("1.10.0") > SemVer.parse("1.9.0")
    assert SemVer.parse("1.10.0").sort_key() > SemVer.parse("1.9.0").sort_key()
    assert SemVer.parse("2.0.0") > SemVer.parse("1.99.99")


def test_build_ignored_for_precedence() -> None:
    a, b = SemVer.parse("1.0.0+a"), SemVer.parse("1.0.0+b")
    assert not a < b
    assert not b < a
    assert a <= b
    assert b >= a
    assert a.sort_key() == b.sort_key()


def test_sorted_matches_spec_chain() -> None:
    shuffled = CHAIN[:]
    random.Random(7).shuffle(shuffled)
    assert [str(v) for v in sorted(SemVer.parse(t) for t in shuffled)] == CHAIN


def _random_version(rng: random.Random) -> SemVer:
    def number() -> int:
        return rng.choice([0, 1, 2, 9, 10, 11, 99, 100, rng.randrange(10**19)])

    def ident() -> str:
        kind = rng.randrange(4)
        if kind == 0:
            return str(number())
        alphabet = "ab-Z09" if kind == 1 else "abcxyzABC-0123456789"
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
        return text if not text.isdigit() else text + "x"

    pre = tuple(ident() for _ in range(rng.choice([0, 0, 1, 2, 3])))
    return SemVer(rng.choice([0, 1]), rng.choice([0, 1, 10]), rng.choice([0, 2]), pre)


def test_sort_key_order_matches_precedence() -> None:
    rng = random.Random(20271126)
    versions = [_random_version(rng) for _ in range(250)]
    for a in versions:
        for b in versions:
            assert (a < b) == (a.sort_key() < b.sort_key()), (a, b)
            assert (a > b) == (a.sort_key() > b.sort_key()), (a, b)
    by_key = sorted(versions, key=SemVer.sort_key)
    for low, high in itertools.pairwise(by_key):
        assert low <= high
    assert all(v.sort_key().isascii() for v in versions)


@pytest.mark.parametrize(
    ("text", "bumped"),
    [("1.2.3", "1.2.4"), ("1.2.3-rc.1", "1.2.3"), ("0.0.0+b", "0.0.1"), ("1.9.9", "1.9.10")],
)
def test_bump_patch(text: str, bumped: str) -> None:
    assert str(SemVer.parse(text).bump_patch()) == bumped


@pytest.mark.parametrize(
    "args",
    [(-1, 0, 0), (True, 0, 0), (1, 0, 0, ("01",)), (1, 0, 0, ("",)), (1, 0, 0, (), ("a b",))],
)
def test_constructor_validates(args: tuple[object, ...]) -> None:
    with pytest.raises(InvalidInputError):
        SemVer(*args)  # type: ignore[arg-type]


def test_compare_with_other_types() -> None:
    other: object = "1.0.0"
    assert SemVer(1, 0, 0) != other
    with pytest.raises(TypeError):
        _ = SemVer(1, 0, 0) < other
