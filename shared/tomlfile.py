"""Writing flat TOML settings files (the stdlib reads TOML but does not write it)."""

from __future__ import annotations

import json
from collections.abc import Mapping


def render_toml(values: Mapping[str, object], *, header: str = "") -> str:
    """A flat TOML document: strings, numbers and booleans only.

    Args:
        values: Setting names and values, written in this order.
        header: A comment line to start the file with.
    """
    lines = [f"# {header}"] if header else []
    for key, value in values.items():
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, int | float):
            rendered = repr(value)
        else:
            rendered = json.dumps(str(value))  # a TOML basic string is a JSON string
        lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"
