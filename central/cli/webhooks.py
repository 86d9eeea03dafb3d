"""Webhook verbs: ``webhook add|list|remove|deliveries|redeliver``.

A webhook is called back, signed with its secret, on the registry events it names;
``docs/webhooks.md`` shows how a receiver checks the signature.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from central.cli.client import RegistryClient, api_path
from central.cli.command import with_client
from central.cli.output import Output, fields, table

if TYPE_CHECKING:
    from central.cli.command import Subparsers

__all__ = ["register"]

STATUSES = ("pending", "delivered", "failed")
LIST_LIMIT = 100  # deliveries shown per webhook


async def _add(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        "url": args.target,
        "events": [e.strip() for e in args.events.split(",") if e.strip()],
    }
    if args.secret is not None:
        body["secret"] = args.secret
    record = await client.send_json("POST", api_path("webhooks"), body)
    out.result(record, _render_added)
    if record.get("secret") and not out.json_mode:
        out.note("warning: the generated secret is shown only once; store it now")


async def _list(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    page = await client.get_json(api_path("webhooks"))
    out.result(list(page.get("items", [])), _render_webhooks)


async def _remove(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    await client.send_json("DELETE", api_path("webhooks", args.id))
    out.result({"id": args.id, "removed": True}, lambda _: f"removed webhook {args.id}")


async def _deliveries(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    if args.id is not None:
        ids = [args.id]
    else:
        ids = [h["id"] for h in (await client.get_json(api_path("webhooks"))).get("items", [])]
    items: list[Any] = []
    for webhook_id in ids:
        page = await client.get_json(
            api_path("webhooks", webhook_id, "deliveries"),
            params={"status": args.status, "limit": args.limit},
        )
        items.extend(page.get("items", []))
    items.sort(key=lambda d: d.get("id", 0), reverse=True)
    out.result(items, _render_deliveries)


async def _redeliver(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    path = api_path("webhooks", args.id, "deliveries", str(args.delivery), "redeliver")
    record = await client.send_json("POST", path)
    out.result(record, lambda d: f"delivery {d.get('id')} of {args.id} queued again")


def _render_added(w: Any) -> str:
    rows = [
        ("id", w.get("id")),
        ("url", w.get("url")),
        ("events", ", ".join(w.get("events") or [])),
    ]
    if w.get("secret"):
        rows.append(("secret", w.get("secret")))
    return fields(rows)


def _render_webhooks(items: list[Any]) -> str:
    rows = [
        (w.get("id"), w.get("url"), ",".join(w.get("events") or []), w.get("created_at"))
        for w in items
    ]
    return table(("id", "url", "events", "created"), rows)


def _render_deliveries(items: list[Any]) -> str:
    rows = [
        (
            d.get("id"),
            d.get("webhook_id"),
            d.get("event"),
            d.get("status"),
            d.get("attempts"),
            d.get("last_status") if d.get("last_status") is not None else "-",
            d.get("delivered_at") or d.get("next_attempt_at") or "-",
            d.get("last_error") or "",
        )
        for d in items
    ]
    return table(("id", "webhook", "event", "status", "attempts", "http", "at/next", "error"), rows)


def register(sub: Subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``webhook`` to the parser tree."""
    webhook = sub.add_parser("webhook", help="signed HTTP callbacks on registry events")
    verbs = webhook.add_subparsers(dest="verb", required=True, metavar="VERB")
    add = verbs.add_parser("add", parents=parents, help="add a webhook")
    add.add_argument("target", metavar="URL", help="http(s) URL that receives the POSTs")
    add.add_argument(
        "--events",
        required=True,
        help="comma-separated event patterns, e.g. "
        "'version.registered,stage.changed,alias.moved,rollout.*,drift.alert'",
    )
    add.add_argument(
        "--secret", help="signing secret, 16+ characters (default: generated and shown once)"
    )
    add.set_defaults(handler=with_client(_add))
    ls = verbs.add_parser("list", parents=parents, help="list webhooks (never their secrets)")
    ls.set_defaults(handler=with_client(_list))
    remove = verbs.add_parser("remove", parents=parents, help="remove a webhook")
    remove.add_argument("id")
    remove.set_defaults(handler=with_client(_remove))
    deliveries = verbs.add_parser(
        "deliveries", parents=parents, help="deliveries, newest first, with attempts and errors"
    )
    deliveries.add_argument("id", nargs="?", help="one webhook (default: every webhook)")
    deliveries.add_argument("--status", choices=STATUSES)
    deliveries.add_argument("--limit", type=int, default=LIST_LIMIT, help="per webhook")
    deliveries.set_defaults(handler=with_client(_deliveries))
    redeliver = verbs.add_parser(
        "redeliver", parents=parents, help="send a delivered or failed delivery again"
    )
    redeliver.add_argument("id", help="the webhook")
    redeliver.add_argument("delivery", type=int, help="the delivery's id")
    redeliver.set_defaults(handler=with_client(_redeliver))
