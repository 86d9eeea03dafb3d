"""Read verbs over the catalogue: ``models``, ``versions``, ``search`` and ``changes``.

Each verb is a coroutine taking a client, an output and its parsed arguments;
the fetch functions are separate so that ``quickstart`` can reuse them.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from central.cli import render
from central.cli.arguments import model_ref, positive_int
from central.cli.client import RegistryClient, api_path
from central.cli.command import with_client
from central.cli.output import Output

if TYPE_CHECKING:
    from central.cli.command import Subparsers

__all__ = ["get_version", "list_models", "list_versions", "register"]

DEFAULT_LIMIT = 50


async def list_models(
    client: RegistryClient, prefix: str | None = None, limit: int = DEFAULT_LIMIT
) -> list[Any]:
    """Model records, by name."""
    params = {"prefix": prefix}
    return [m async for m in client.paginate(api_path("models"), params, limit)]


async def list_versions(
    client: RegistryClient, name: str, branch: str | None = None, limit: int = DEFAULT_LIMIT
) -> list[Any]:
    """Version records of ``name``, newest semver first."""
    path = api_path("models", name, "versions")
    return [v async for v in client.paginate(path, {"branch": branch}, limit)]


async def get_version(client: RegistryClient, name: str, ref: str) -> Any:
    """The version record for a version or an alias of ``name``."""
    return await client.get_json(api_path("models", name, "versions", ref))


async def _models_list(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    out.result(await list_models(client, args.prefix, args.limit), render.render_models)


async def _models_show(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    out.result(await client.get_json(api_path("models", args.name)), render.render_model)


async def _versions_list(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    items = await list_versions(client, args.name, args.branch, args.limit)
    out.result(items, render.render_versions)


async def _versions_show(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    name, ref = args.ref
    out.result(await get_version(client, name, ref), render.render_version)


async def _search(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    params = {"filter": args.filter, "order_by": args.order_by}
    items = [v async for v in client.paginate(api_path("search"), params, args.limit)]
    out.result(items, render.render_search)


async def _changes(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    page = await client.get_json(api_path("changes"), {"since": args.since, "limit": args.limit})
    if out.json_mode:
        out.json(page)
        return
    out.text(render.render_changes(page.get("items", [])))
    if page.get("next") is not None:
        out.note(f"next: skiff changes --since {page['next']}")


def register(sub: Subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``models``, ``versions``, ``search`` and ``changes`` to the parser tree."""
    _register_models(sub, parents)
    _register_versions(sub, parents)
    search = sub.add_parser("search", parents=parents, help="find versions by a filter expression")
    search.add_argument("filter", help="e.g. \"name = 'fraud' and metrics.auc > 0.9\"")
    search.add_argument("--order-by", help="created_at (default), version or metrics.<key>")
    search.add_argument("--limit", type=positive_int, default=DEFAULT_LIMIT)
    search.set_defaults(handler=with_client(_search))
    changes = sub.add_parser("changes", parents=parents, help="show the change log")
    changes.add_argument("--since", type=int, default=0, help="sequence number to start after")
    changes.add_argument("--limit", type=positive_int, default=100)
    changes.set_defaults(handler=with_client(_changes))


def _register_models(sub: Subparsers, parents: list[argparse.ArgumentParser]) -> None:
    models = sub.add_parser("models", help="list and show registered models")
    verbs = models.add_subparsers(dest="verb", required=True, metavar="VERB")
    ls = verbs.add_parser("list", parents=parents, help="list models by name")
    ls.add_argument("--prefix", help="only names starting with this")
    ls.add_argument("--limit", type=positive_int, default=DEFAULT_LIMIT)
    ls.set_defaults(handler=with_client(_models_list))
    show = verbs.add_parser("show", parents=parents, help="show one model")
    show.add_argument("name")
    show.set_defaults(handler=with_client(_models_show))


def _register_versions(sub: Subparsers, parents: list[argparse.ArgumentParser]) -> None:
    versions = sub.add_parser("versions", help="list and show model versions")
    verbs = versions.add_subparsers(dest="verb", required=True, metavar="VERB")
    ls = verbs.add_parser("list", parents=parents, help="list a model's versions")
    ls.add_argument("name")
    ls.add_argument("--branch", help="only this branch")
    ls.add_argument("--limit", type=positive_int, default=DEFAULT_LIMIT)
    ls.set_defaults(handler=with_client(_versions_list))
    show = verbs.add_parser("show", parents=parents, help="show one version")
    show.add_argument("ref", type=model_ref, metavar="NAME@VERSION|NAME@ALIAS")
    show.set_defaults(handler=with_client(_versions_show))
