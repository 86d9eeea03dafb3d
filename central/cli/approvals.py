"""Approval verbs: ``policy check``, ``request list|show``, ``approve`` and ``reject``.

A stage move that the policy marks for approval becomes a request; approvers decide on
it here. ``policy check`` says what a version still needs to enter a stage.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from central.cli.arguments import model_ref
from central.cli.catalog import get_version
from central.cli.client import RegistryClient, api_path
from central.cli.command import with_client
from central.cli.output import Output, fields, table

if TYPE_CHECKING:
    from central.cli.command import Subparsers

__all__ = ["is_request", "register", "render_request"]

STATUSES = ("pending", "approved", "rejected", "expired", "applied")


def is_request(record: Any) -> bool:
    """Whether a stage-move answer is an approval request rather than a version."""
    return isinstance(record, dict) and "to_stage" in record and "requested_by" in record


def render_request(r: Any) -> str:
    lines = [
        fields(
            [
                ("request", r.get("id")),
                ("version", f"{r.get('model')}@{r.get('version')}"),
                ("move", f"{r.get('from_stage')} -> {r.get('to_stage')}"),
                ("status", r.get("status")),
                ("approvals", f"{r.get('approvals')} of {r.get('required')}"),
                ("requested by", r.get("requester_name")),
                ("expires", r.get("expires_at")),
                ("reason", r.get("reason")),
            ]
        )
    ]
    decisions = r.get("decisions") or []
    if decisions:
        rows = [
            (
                d.get("name"),
                d.get("decision"),
                "yes" if d.get("valid") else "no (token revoked)",
                d.get("comment"),
                d.get("at"),
            )
            for d in decisions
        ]
        lines += ["", table(("approver", "decision", "counts", "comment", "at"), rows)]
    return "\n".join(lines)


def _render_requests(items: Any) -> str:
    rows = [
        (
            r.get("id"),
            f"{r.get('model')}@{r.get('version')}",
            f"{r.get('from_stage')} -> {r.get('to_stage')}",
            r.get("status"),
            f"{r.get('approvals')}/{r.get('required')}",
            r.get("requester_name"),
            r.get("expires_at"),
        )
        for r in items
    ]
    return table(("id", "version", "move", "status", "approvals", "requested by", "expires"), rows)


def _render_report(r: Any) -> str:
    missing = r.get("missing") or []
    pending = r.get("pending_request")
    return fields(
        [
            ("version", f"{r.get('model')}@{r.get('version')}"),
            ("stage", f"{r.get('current_stage')} -> {r.get('stage')}"),
            ("transition", "allowed" if r.get("transition_allowed") else "not allowed"),
            ("missing", ", ".join(missing) if missing else "none"),
            ("approvals", r.get("approvals_required")),
            ("moves alias", r.get("move_alias") or "-"),
            ("pending", "-" if pending is None else f"request {pending.get('id')}"),
            ("ready", "yes" if r.get("ready") else "no"),
        ]
    )


async def _policy_check(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    name, ref = args.ref
    version = (await get_version(client, name, ref))["version"]
    path = api_path("models", name, "versions", version, "policy")
    out.result(await client.get_json(path, {"stage": args.stage}), _render_report)


async def _list(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    items = [r async for r in client.paginate(api_path("requests"), {"status": args.status}, 1000)]
    out.result(items, _render_requests)


async def _show(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    out.result(await client.get_json(api_path("requests", str(args.id))), render_request)


async def _approve(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    body = {} if args.comment is None else {"comment": args.comment}
    record = await client.send_json("POST", api_path("requests", str(args.id), "approve"), body)
    out.result(record, render_request)


async def _reject(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    path = api_path("requests", str(args.id), "reject")
    out.result(await client.send_json("POST", path, {"reason": args.reason}), render_request)


def register(sub: Subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``policy``, ``request``, ``approve`` and ``reject`` to the parser tree."""
    policy = sub.add_parser("policy", help="what the compliance policy asks of a version")
    policy_verbs = policy.add_subparsers(dest="verb", required=True, metavar="VERB")
    check = policy_verbs.add_parser(
        "check", parents=parents, help="missing fields and approvals for a stage"
    )
    check.add_argument("ref", type=model_ref, metavar="NAME@VERSION|NAME@ALIAS")
    check.add_argument("--stage", default="production", help="target stage (default production)")
    check.set_defaults(handler=with_client(_policy_check))

    request = sub.add_parser("request", help="list and show approval requests")
    request_verbs = request.add_subparsers(dest="verb", required=True, metavar="VERB")
    ls = request_verbs.add_parser("list", parents=parents, help="list approval requests")
    ls.add_argument("--status", choices=STATUSES, help="only requests with this status")
    ls.set_defaults(handler=with_client(_list))
    show = request_verbs.add_parser("show", parents=parents, help="show one request")
    show.add_argument("id", type=int)
    show.set_defaults(handler=with_client(_show))

    approve = sub.add_parser("approve", parents=parents, help="approve an approval request")
    approve.add_argument("id", type=int)
    approve.add_argument("--comment", help="why")
    approve.set_defaults(handler=with_client(_approve))
    reject = sub.add_parser("reject", parents=parents, help="reject an approval request")
    reject.add_argument("id", type=int)
    reject.add_argument("--reason", required=True, help="why (required)")
    reject.set_defaults(handler=with_client(_reject))
