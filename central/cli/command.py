"""The shape of a command: an argparse handler, and the wrapper that gives it a client.

Every subcommand stores a ``Handler`` under ``handler`` in its parser defaults.
Commands that talk to central are written as ``ClientAction`` coroutines and
wrapped by ``with_client``, which opens one ``RegistryClient`` for them.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeAlias

from central.cli.client import RegistryClient
from central.cli.output import Output

if TYPE_CHECKING:
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["ClientAction", "Handler", "output_for", "with_client"]

Handler = Callable[[argparse.Namespace], None]
ClientAction = Callable[[RegistryClient, Output, argparse.Namespace], Awaitable[None]]


def output_for(args: argparse.Namespace) -> Output:
    """The ``Output`` the global ``--json`` flag asks for."""
    return Output(json_mode=bool(args.json))


def with_client(action: ClientAction) -> Handler:
    """Make a handler that runs ``action`` with a client for ``--url``/``--token``."""

    def handler(args: argparse.Namespace) -> None:
        asyncio.run(_run(action, args))

    return handler


async def _run(action: ClientAction, args: argparse.Namespace) -> None:
    async with RegistryClient(
        args.url, args.token, ca_file=getattr(args, "cacert", None)
    ) as client:
        await action(client, output_for(args), args)
