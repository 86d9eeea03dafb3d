"""Drift verb: ``drift show MODEL@VERSION [--fleet F] [--since T]``.

Shows, per input feature of the version's reference distribution, how far the inputs
devices saw have moved (PSI, KS), how many live values that rests on, and the level.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from central.cli.arguments import model_ref
from central.cli.client import RegistryClient, api_path
from central.cli.command import with_client
from central.cli.output import Output, table

if TYPE_CHECKING:
    from central.cli.command import Subparsers

__all__ = ["register", "render_drift"]


async def _show(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    model, version = args.ref
    report = await client.get_json(
        api_path("models", model, "versions", version, "drift"),
        {"fleet": args.fleet, "since": args.since},
    )
    out.result(report, render_drift)


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _rows(features: dict[str, Any]) -> list[list[Any]]:
    return [
        [name, _number(f["psi"]), _number(f["ks"]), f["live_n"], f["level"]]
        for name, f in features.items()
    ]


def render_drift(report: Any) -> str:
    scope = f"fleet {report['fleet']}" if report.get("fleet") else "all fleets"
    since = f" since {report['since']}" if report.get("since") else ""
    limits = report["thresholds"]
    lines = [
        f"{report['model']}@{report['version']} ({scope}{since}): {report['level']}",
        f"thresholds: PSI warn {limits['psi_warn']}, alert {limits['psi_alert']}; "
        f"KS alert {limits['ks_alert']}; at least {limits['min_samples']} values",
        "",
        table(["FEATURE", "PSI", "KS", "LIVE N", "LEVEL"], _rows(report["features"])),
    ]
    devices = report.get("devices") or {}
    if devices:
        rows = [
            [device, name, _number(f["psi"]), _number(f["ks"]), f["live_n"], f["level"]]
            for device, d in devices.items()
            for name, f in d["features"].items()
        ]
        lines += ["", table(["DEVICE", "FEATURE", "PSI", "KS", "LIVE N", "LEVEL"], rows)]
    return "\n".join(lines)


def register(sub: Subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``drift`` to the parser tree."""
    drift = sub.add_parser("drift", help="input data drift of a version against its reference")
    verbs = drift.add_subparsers(dest="verb", required=True, metavar="VERB")
    show = verbs.add_parser("show", parents=parents, help="PSI and KS per feature and device")
    show.add_argument("ref", type=model_ref, metavar="MODEL@VERSION")
    show.add_argument("--fleet", help="only the devices of this fleet")
    show.add_argument("--since", metavar="TIME", help="only telemetry windows ending after it")
    show.set_defaults(handler=with_client(_show))
