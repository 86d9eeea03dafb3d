"""The ``skiff`` command line for the central registry and its admin verbs.

``main`` builds the argparse tree from the verb modules (each adds its own
subcommands), resolves the global options (``--url``, ``--token``, ``--json``,
also accepted after the verb) and runs the chosen handler. Expected failures
become one ``skiff: error: ...`` line on stderr and exit code 1 (2 for usage).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from central.cli import (
    aliases,
    approvals,
    audit,
    catalog,
    drift,
    fleets,
    pull,
    push,
    quickstart,
    rollouts,
    server,
    tokens,
    webhooks,
)
from central.cli.errors import EXIT_FAILURE, EXIT_USAGE, CliError
from shared import __version__
from shared.errors import SkiffError

__all__ = ["DEFAULT_URL", "build_parser", "main"]

DEFAULT_URL = "http://127.0.0.1:8080"
PROG = "skiff"
EXIT_INTERRUPTED = 130


def _global_options(suppress: bool) -> argparse.ArgumentParser:
    """``--url``, ``--token`` and ``--json``; ``suppress`` for the copies under each verb."""
    suppressed = argparse.SUPPRESS if suppress else None
    parser = argparse.ArgumentParser(add_help=False, argument_default=suppressed)
    parser.add_argument("--url", help=f"central URL (env SKIFF_URL, default {DEFAULT_URL})")
    parser.add_argument("--token", help="API token (env SKIFF_TOKEN)")
    parser.add_argument(
        "--cacert", type=Path, help="CA file to verify central's certificate (env SKIFF_CA_FILE)"
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The whole ``skiff`` argument tree."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Skiff: a model registry for fleets of edge devices.",
        parents=[_global_options(suppress=False)],
        epilog="'skiff edge ...' runs the edge agent, when it is installed.",
    )
    parser.add_argument("--version", action="version", version=f"skiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = [_global_options(suppress=True)]
    modules = (
        server,
        push,
        pull,
        catalog,
        aliases,
        approvals,
        tokens,
        fleets,
        rollouts,
        audit,
        webhooks,
        drift,
        quickstart,
    )
    for module in modules:
        module.register(sub, parents)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``skiff`` with ``argv`` (default: the process arguments); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # argparse has printed usage or help
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    args.url = (args.url or os.environ.get("SKIFF_URL") or DEFAULT_URL).rstrip("/")
    args.token = args.token or os.environ.get("SKIFF_TOKEN") or None
    ca_file = args.cacert or os.environ.get("SKIFF_CA_FILE") or None
    args.cacert = None if ca_file is None else Path(ca_file)
    try:
        args.handler(args)
    except CliError as e:
        return _fail(e.message, e.exit_code)
    except SkiffError as e:
        return _fail(str(e) or type(e).__name__, EXIT_FAILURE)
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        return _fail(f"{e.strerror or e}{where}", EXIT_FAILURE)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    return 0


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return code
