"""Token verbs: ``token create|list|revoke``.

A token's secret is shown once, when it is created; central keeps only its hash.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from central.cli import render
from central.cli.arguments import duration
from central.cli.client import RegistryClient, api_path
from central.cli.command import with_client
from central.cli.output import Output, fields

if TYPE_CHECKING:
    from central.cli.command import Subparsers

__all__ = ["register"]

ROLES = ("viewer", "developer", "approver", "admin", "device")


async def _create(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name, "role": args.role}
    if args.expires is not None:
        body["expires_in"] = args.expires
    if args.models is not None:
        body["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    record = await client.send_json("POST", api_path("tokens"), body)
    out.result(record, _render_created)
    if not out.json_mode:
        out.note("warning: the token is shown only once; store it now")


async def _list(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    page = await client.get_json(api_path("tokens"))
    out.result(list(page.get("items", [])), render.render_tokens)


async def _revoke(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    await client.send_json("DELETE", api_path("tokens", args.id))
    out.result({"id": args.id, "revoked": True}, lambda _: f"revoked token {args.id}")


def _render_created(t: Any) -> str:
    return fields(
        [
            ("id", t.get("id")),
            ("name", t.get("name")),
            ("role", t.get("role")),
            ("models", ", ".join(t.get("models") or []) or "all"),
            ("expires", t.get("expires_at") or "never"),
            ("token", t.get("token")),
        ]
    )


def register(sub: Subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``token`` to the parser tree."""
    token = sub.add_parser("token", help="create, list and revoke API tokens")
    verbs = token.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = verbs.add_parser("create", parents=parents, help="create a token")
    create.add_argument("--name", required=True, help="what the token is for")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--expires", type=duration, help="lifetime, e.g. 12h or 30d")
    create.add_argument(
        "--models",
        metavar="PATTERNS",
        help="comma-separated model-name patterns the token is limited to, e.g. 'fraud-*,ranker'",
    )
    create.set_defaults(handler=with_client(_create))
    ls = verbs.add_parser("list", parents=parents, help="list tokens (never their secrets)")
    ls.set_defaults(handler=with_client(_list))
    revoke = verbs.add_parser("revoke", parents=parents, help="revoke a token")
    revoke.add_argument("id")
    revoke.set_defaults(handler=with_client(_revoke))
