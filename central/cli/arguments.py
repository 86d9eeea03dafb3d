"""Argument types of the command line: ``NAME@REF``, ``key=value``, durations.

Each function is an argparse ``type=``: it returns the parsed value or raises
``argparse.ArgumentTypeError``, which argparse reports as a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import math
import re

__all__ = ["duration", "key_value", "metric", "model_ref", "positive_int"]

_DURATION_RE = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def model_ref(text: str) -> tuple[str, str]:
    """``NAME@VERSION`` or ``NAME@ALIAS`` → ``(name, ref)``."""
    name, sep, ref = text.partition("@")
    if not sep or not name or not ref:
        raise argparse.ArgumentTypeError(f"expected NAME@VERSION or NAME@ALIAS, got {text!r}")
    return name, ref


def key_value(text: str) -> tuple[str, str]:
    """``key=value`` → ``(key, value)``; the value may be empty."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def metric(text: str) -> tuple[str, float]:
    """``auc=0.92`` → ``("auc", 0.92)``; the value must be a finite number."""
    key, value = key_value(text)
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"metric {key!r} needs a finite number, got {value!r}")
    return key, number


def duration(text: str) -> int:
    """``90s``, ``15m``, ``12h``, ``30d`` → seconds (a positive whole number)."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90s, 15m, 12h or 30d, got {text!r}"
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value
