"""Tests for shared.names."""

import pytest

from shared.errors import InvalidInputError
from shared.names import is_valid_name, validate_name


@pytest.mark.parametrize("name", ["a", "resnet50", "bert-base.v2_int8", "0", "a" * 128, "a.b"])
def test_valid(name: str) -> None:
    assert validate_name(name) == name
    assert is_valid_name(name)


@pytest.mark.parametrize(
    "name",
    ["../x", "A", "", "a" * 129, "a b", ".hidden", "-x", "a..b", "a/b", "é", "a\n", None, 5],
)
def test_invalid(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(InvalidInputError):
        validate_name(name)


def test_message_names_value_and_rule() -> None:
    with pytest.raises(InvalidInputError) as info:
        validate_name("../x")
    assert str(info.value) == (
        "invalid model name '../x': use lowercase letters, digits, '.', '_', '-', "
        "at most 128 characters"
    )


def test_message_uses_what() -> None:
    with pytest.raises(InvalidInputError, match=r"^invalid alias 'A'"):
        validate_name("A", "alias")
