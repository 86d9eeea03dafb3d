"""``skiff central init|serve``: create a data directory, and run the registry in it.

Both call into the central package (``central.bootstrap``, ``central.config``,
``central.app``), imported only when the verb runs so that the other verbs
start fast and need nothing but the HTTP client.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from central.cli.command import output_for
from central.cli.errors import CliError
from central.cli.output import fields
from shared.errors import ConflictError

if TYPE_CHECKING:
    from central.cli.command import Subparsers

__all__ = ["init_data_dir", "register"]


def init_data_dir(data_dir: Path, key_dir: Path | None = None) -> dict[str, Any]:
    """Initialise ``data_dir``; return the ``InitResult`` as a dict.

    Raises:
        CliError: ``data_dir`` is already initialised.
    """
    from central.bootstrap import init_data_dir as bootstrap

    try:
        return dict(bootstrap(data_dir, key_dir=key_dir).to_dict())
    except ConflictError as e:
        raise CliError(str(e)) from e


def export_lines(url: str, token: str) -> str:
    """The shell lines that point later ``skiff`` commands at a central."""
    return f"  export SKIFF_URL={shlex.quote(url)}\n  export SKIFF_TOKEN={shlex.quote(token)}"


def _init(args: argparse.Namespace) -> None:
    out = output_for(args)
    result = init_data_dir(args.data_dir, args.key_dir)
    out.result(result, lambda r: _render_init(r, args.url))


def _render_init(result: dict[str, Any], url: str) -> str:
    summary = fields(
        [
            ("data dir", result.get("data_dir")),
            ("config", result.get("config_path")),
            ("root key", result.get("root_keyid")),
            ("targets key", result.get("targets_keyid")),
        ]
    )
    return "\n".join(
        [
            "Initialised a Skiff central.",
            summary,
            "",
            "Admin token (shown once, it is not stored and cannot be shown again):",
            f"  {result['admin_token']}",
            "",
            "Start the server, then point the CLI at it:",
            f"  skiff central serve --data-dir {shlex.quote(str(result.get('data_dir')))}",
            export_lines(url, str(result["admin_token"])),
        ]
    )


def _serve(args: argparse.Namespace) -> None:
    from central.app import run
    from central.config import CentralConfig

    if not args.data_dir.is_dir():
        raise CliError(f"no data dir at {args.data_dir}: run 'skiff central init' first")
    run(CentralConfig.load(args.data_dir, listen=args.listen))


def register(sub: Subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``central init|serve`` to the parser tree."""
    central = sub.add_parser("central", help="set up and run the central registry")
    verbs = central.add_subparsers(dest="verb", required=True, metavar="VERB")
    init = verbs.add_parser("init", parents=parents, help="create a new data directory")
    init.add_argument("--data-dir", type=Path, required=True, metavar="DIR")
    init.add_argument(
        "--key-dir",
        type=Path,
        metavar="DIR",
        help="keep the private signing keys here instead of DIR/keys (e.g. another volume)",
    )
    init.set_defaults(handler=_init)
    serve = verbs.add_parser("serve", parents=parents, help="run the registry (blocking)")
    serve.add_argument("--data-dir", type=Path, required=True, metavar="DIR")
    serve.add_argument("--listen", metavar="HOST:PORT", help="overrides the config file")
    serve.set_defaults(handler=_serve)
