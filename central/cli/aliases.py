"""Governance verbs on versions: ``alias set|list|history``, ``rollback`` and ``stage set``.

An alias (``production``, ``staging``, any name) points at one version and
keeps its history, so ``rollback`` points it back at its previous target.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from central.cli import render
from central.cli.approvals import is_request, render_request
from central.cli.arguments import model_ref
from central.cli.catalog import get_version
from central.cli.client import RegistryClient, api_path
from central.cli.command import with_client
from central.cli.output import Output

if TYPE_CHECKING:
    from central.cli.command import Subparsers

__all__ = ["alias_history", "register", "rollback", "set_alias"]

STAGES = ("development", "training", "validation", "staging", "production", "retired")


async def set_alias(client: RegistryClient, name: str, alias: str, version: str) -> Any:
    """Point ``alias`` of ``name`` at ``version``; return the alias record."""
    path = api_path("models", name, "aliases", alias)
    return await client.send_json("PUT", path, {"version": version})


async def rollback(client: RegistryClient, name: str, alias: str) -> Any:
    """Point ``alias`` back at its previous target; return the alias record."""
    path = api_path("models", name, "aliases", alias, "rollback")
    return await client.send_json("POST", path)


async def alias_history(client: RegistryClient, name: str, alias: str) -> list[Any]:
    """The moves of ``alias``, newest first."""
    page = await client.get_json(api_path("models", name, "aliases", alias, "history"))
    return list(page.get("items", []))


async def _alias_set(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    out.result(await set_alias(client, args.name, args.alias, args.version), render.render_alias)


async def _alias_list(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    page = await client.get_json(api_path("models", args.name, "aliases"))
    out.result(list(page.get("items", [])), render.render_aliases)


async def _alias_history(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    items = await alias_history(client, args.name, args.alias)
    out.result(items, render.render_history)


async def _rollback(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    out.result(await rollback(client, args.name, args.alias), render.render_alias)


async def _stage_set(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    name, ref = args.ref
    # the stage route takes a version, so an alias is resolved first
    version = (await get_version(client, name, ref))["version"]
    path = api_path("models", name, "versions", version, "stage")
    record = await client.send_json("PUT", path, {"stage": args.stage})
    if is_request(record):  # the policy asks for approval: the move waits for approvers
        out.result(record, render_request)
        if not out.json_mode:
            out.note(f"approval needed: 'skiff approve {record['id']}' by an approver")
        return
    out.result(record, render.render_version)


def register(sub: Subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``alias``, ``rollback`` and ``stage`` to the parser tree."""
    alias = sub.add_parser("alias", help="point names such as 'production' at versions")
    verbs = alias.add_subparsers(dest="verb", required=True, metavar="VERB")
    set_ = verbs.add_parser("set", parents=parents, help="point an alias at a version")
    set_.add_argument("name")
    set_.add_argument("alias")
    set_.add_argument("version")
    set_.set_defaults(handler=with_client(_alias_set))
    ls = verbs.add_parser("list", parents=parents, help="list a model's aliases")
    ls.add_argument("name")
    ls.set_defaults(handler=with_client(_alias_list))
    history = verbs.add_parser("history", parents=parents, help="show where an alias pointed")
    history.add_argument("name")
    history.add_argument("alias")
    history.set_defaults(handler=with_client(_alias_history))

    back = sub.add_parser(
        "rollback", parents=parents, help="point an alias back at its previous version"
    )
    back.add_argument("name")
    back.add_argument("alias")
    back.set_defaults(handler=with_client(_rollback))

    stage = sub.add_parser("stage", help="move versions through lifecycle stages")
    stage_verbs = stage.add_subparsers(dest="verb", required=True, metavar="VERB")
    stage_set = stage_verbs.add_parser("set", parents=parents, help="set a version's stage")
    stage_set.add_argument("ref", type=model_ref, metavar="NAME@VERSION|NAME@ALIAS")
    stage_set.add_argument("stage", help=" → ".join(STAGES))
    stage_set.set_defaults(handler=with_client(_stage_set))
