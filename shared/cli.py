"""The ``skiff`` console script: send each command to the side that implements it.

``skiff edge ...`` goes to the edge agent (``edge_agent.cli``), everything
else to the central registry's command line (``central.cli``). Both are
imported only when needed, so a device with only the edge agent installed,
or an admin machine without it, still gets a clear message.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import cast

__all__ = ["main"]

EXIT_USAGE = 2


def _load_main(module: str, missing: str) -> Callable[[list[str]], int] | None:
    """Import ``module`` and return its ``main``; None (after a message) if not installed."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        package = module.partition(".")[0]
        if e.name not in (package, module):
            raise  # a dependency of an installed module is missing: a real bug
        print(f"skiff: error: {missing}", file=sys.stderr)
        return None
    return cast(Callable[[list[str]], int], mod.main)


def main(argv: list[str] | None = None) -> int:
    """Run the ``skiff`` command line; return the process exit code.

    Args:
        argv: The arguments after the program name (default: ``sys.argv[1:]``).
            For ``skiff edge``, the edge agent receives the arguments after ``edge``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["edge"]:
        edge_main = _load_main("edge_agent.cli", "the edge agent is not installed")
        return EXIT_USAGE if edge_main is None else edge_main(args[1:])
    central_main = _load_main("central.cli", "the central registry is not installed")
    return EXIT_USAGE if central_main is None else central_main(args)


if __name__ == "__main__":
    sys.exit(main())
