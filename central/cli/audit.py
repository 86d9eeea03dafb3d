"""Audit verbs: ``audit list|verify|export``.

``verify`` exits non-zero and names the first bad row when the log was tampered with;
``export`` writes JSON Lines, one row per line, to stdout or a file.
"""

from __future__ import annotations

import argparse
import codecs
import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from central.cli.arguments import duration, positive_int
from central.cli.client import RegistryClient, api_path
from central.cli.command import with_client
from central.cli.errors import CliError
from central.cli.output import Output, fields, table
from shared.errors import FormatError
from shared.timeutil import format_time, parse_time, utcnow

if TYPE_CHECKING:
    from central.cli.command import Subparsers

__all__ = ["register"]

DEFAULT_LIMIT = 50
CHUNK_SIZE = 1 << 16


def since_time(text: str) -> str:
    """A time (``2026-11-26T10:00:00Z``) or a duration back from now (``1h``, ``7d``)."""
    try:
        return format_time(parse_time(text))
    except FormatError:
        pass
    try:
        seconds = duration(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a time such as 2026-11-26T10:00:00Z or a duration such as 1h, got {text!r}"
        ) from None
    return format_time(utcnow() - timedelta(seconds=seconds))


async def _list(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    params = {
        "actor": args.actor,
        "model": args.model,
        "action": args.action,
        "since": args.since,
    }
    items = [r async for r in client.paginate(api_path("audit"), params, args.limit)]
    out.result(items, _render_rows)


async def _verify(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    report = await client.get_json(api_path("audit", "verify"))
    out.result(report, _render_report)
    bad = report.get("first_bad") if isinstance(report, dict) else None
    if not isinstance(report, dict) or not report.get("ok"):
        where = bad.get("id") if isinstance(bad, dict) else "?"
        why = bad.get("reason") if isinstance(bad, dict) else "no reason given"
        raise CliError(f"the audit log does not verify: first bad entry {where}: {why}")


async def _export(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    path = api_path("audit", "export")
    if args.output is None:
        decoder = codecs.getincrementaldecoder("utf-8")()
        async with client.request("GET", path) as resp:
            async for chunk in resp.content.iter_chunked(CHUNK_SIZE):
                out.stdout.write(decoder.decode(chunk))
        out.stdout.write(decoder.decode(b"", final=True))
        out.stdout.flush()
        return
    target = Path(args.output)
    partial = target.with_name(target.name + ".part")
    lines = 0
    try:
        with partial.open("wb") as f:
            async with client.request("GET", path) as resp:
                async for chunk in resp.content.iter_chunked(CHUNK_SIZE):
                    f.write(chunk)
                    lines += chunk.count(b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    out.result({"path": str(target), "rows": lines}, lambda r: f"wrote {lines} rows to {target}")


def _render_rows(items: list[Any]) -> str:
    rows = [
        (
            r.get("id"),
            r.get("at"),
            r.get("actor"),
            r.get("role"),
            r.get("action"),
            r.get("target"),
            r.get("outcome"),
        )
        for r in items
    ]
    return table(("id", "at", "actor", "role", "action", "target", "outcome"), rows)


def _render_report(report: Any) -> str:
    bad = report.get("first_bad") or {}
    last = report.get("last_checkpoint") or {}
    return fields(
        [
            ("ok", "yes" if report.get("ok") else "NO"),
            ("rows checked", report.get("checked")),
            ("checkpoints", report.get("checkpoints")),
            ("last checkpoint", f"row {last['audit_id']} at {last['signed_at']}" if last else None),
            ("first bad entry", bad.get("id")),
            ("reason", bad.get("reason")),
        ]
    )


def register(sub: Subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``audit`` to the parser tree."""
    audit = sub.add_parser("audit", help="read, verify and export the audit log")
    verbs = audit.add_subparsers(dest="verb", required=True, metavar="VERB")
    ls = verbs.add_parser("list", parents=parents, help="audit rows, newest first")
    ls.add_argument("--actor", help="token name (anonymous: calls without a valid token)")
    ls.add_argument("--model", help="rows about this model")
    ls.add_argument("--action", help="an action, or a family such as 'alias.*'")
    ls.add_argument("--since", type=since_time, help="a time, or a duration back such as 1h")
    ls.add_argument("--limit", type=positive_int, default=DEFAULT_LIMIT)
    ls.set_defaults(handler=with_client(_list))
    verify = verbs.add_parser(
        "verify", parents=parents, help="check the hash chain and the signed checkpoints"
    )
    verify.set_defaults(handler=with_client(_verify))
    export = verbs.add_parser("export", parents=parents, help="every row as JSON Lines")
    export.add_argument("-o", "--output", help="write to this file instead of stdout")
    export.set_defaults(handler=with_client(_export))
