"""Names of models, branches, aliases and fleets.

A name is safe to use as a URL path segment and as a file name on every
platform we run on: lowercase letters, digits, '.', '_' and '-', starting
with a letter or digit, at most 128 characters, never containing '..'.
"""

from __future__ import annotations

import logging
import re

from shared.errors import InvalidInputError

__all__ = ["NAME_RE", "is_valid_name", "validate_name"]

logger = logging.getLogger(__name__)

NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,127}$"
_NAME = re.compile(NAME_RE)


def is_valid_name(value: object) -> bool:
    """Tell whether ``value`` is a valid name."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None and ".." not in value


def validate_name(value: str, what: str = "model name") -> str:
    """Check a name and return it unchanged.

    Args:
        value: The name to check.
        what: What the name names, for the error message.

    Raises:
        InvalidInputError: ``value`` is not a valid name.

    Returns:
        ``value``.
    """
    if not is_valid_name(value):
        shown = repr(value)[:140]
        raise InvalidInputError(
            f"invalid {what} {shown}: use lowercase letters, digits, '.', '_', '-', "
            "at most 128 characters"
        )
    return value
