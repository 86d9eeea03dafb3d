"""Fleet verbs: ``fleet create|list|show|assign|unassign``, ``device enroll``,
``bundle export`` and ``keys rotate``.

``device enroll`` writes a complete ``edge.toml`` (mode 0600: it holds the device
token) with the central URL this command used and the root the device will trust.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from central.cli import masterkeys
from central.cli.client import RegistryClient, api_path
from central.cli.command import with_client
from central.cli.errors import CliError
from central.cli.output import Output, fields, format_bytes, table
from shared.tomlfile import render_toml

if TYPE_CHECKING:
    from central.cli.command import Subparsers

__all__ = ["register"]


def render_fleet(f: Any) -> str:
    state = f.get("state") or {}
    head = fields(
        [
            ("fleet", f.get("name")),
            ("state serial", state.get("serial")),
            ("expires", state.get("expires")),
        ]
    )
    assignments = table(
        ["MODEL", "ALIAS", "VERSION"],
        [(a["model"], a["alias"], a["version"] or "-") for a in f.get("assignments", [])],
    )
    devices = table(
        ["DEVICE", "LAST SEEN", "SERVING", "BAD", "ERRORS"],
        [
            (
                d["id"],
                d.get("last_seen") or "never",
                ", ".join(f"{m}@{v}" for m, v in (d.get("report") or {}).get("serving", {}).items())
                or "-",
                ", ".join(
                    f"{m}@{v}"
                    for m, versions in (d.get("report") or {}).get("bad_versions", {}).items()
                    for v in versions
                )
                or "-",
                len((d.get("report") or {}).get("errors", [])),
            )
            for d in f.get("devices", [])
        ],
    )
    return f"{head}\n\n{assignments}\n\n{devices}"


async def _create(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    body = {"name": args.name, "description": args.description or ""}
    out.result(await client.send_json("POST", api_path("fleets"), body), render_fleet)


async def _list(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    page = await client.get_json(api_path("fleets"))
    out.result(
        page["items"],
        lambda items: table(
            ["FLEET", "CREATED", "DESCRIPTION"],
            [(f["name"], f["created_at"], f["description"]) for f in items],
        ),
    )


async def _show(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    out.result(await client.get_json(api_path("fleets", args.fleet)), render_fleet)


async def _assign(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    path = api_path("fleets", args.fleet, "models", args.model)
    out.result(await client.send_json("PUT", path, {"alias": args.alias}), render_fleet)


async def _unassign(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    path = api_path("fleets", args.fleet, "models", args.model)
    out.result(await client.send_json("DELETE", path), render_fleet)


def _write_private(path: Path, text: str) -> None:
    if path.exists():
        raise CliError(f"{path} exists; remove it first (it would hold a new device token)")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


async def _enroll(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    path = api_path("fleets", args.fleet, "devices")
    enrolled = await client.send_json("POST", path, {"device": args.device})
    settings: dict[str, Any] = {
        "central_url": args.central_url or client.url,
        "device_id": enrolled["device"],
        "token": enrolled["token"],
        "fleet": enrolled["fleet"],
        "trusted_root": json.dumps(enrolled["root"], sort_keys=True, separators=(",", ":")),
        "data_dir": str(args.data_dir),
        "listen": args.listen,
        "cache_budget_bytes": args.cache_budget,
    }
    if args.sideload_dir:
        settings["sideload_dir"] = str(args.sideload_dir)
    if args.cacert is not None:  # the device pins the CA this command trusted
        settings["ca_file"] = str(args.cacert.resolve())
    _write_private(
        args.output, render_toml(settings, header="Skiff edge agent; see docs/configuration.md")
    )
    summary = {
        "device": enrolled["device"],
        "fleet": enrolled["fleet"],
        "config": str(args.output),
        "token_id": enrolled["token_id"],
    }
    out.result(summary, lambda s: fields(list(s.items())))
    if not out.json_mode:
        out.note(f"start the agent with: skiff edge run --config {args.output}")


async def _export(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    target: Path = args.output
    tmp = target.with_name(target.name + ".part")
    size = 0
    async with client.request("GET", api_path("fleets", args.fleet, "bundle")) as resp:
        with tmp.open("wb") as f:
            async for chunk in resp.content.iter_chunked(1 << 20):
                f.write(chunk)
                size += len(chunk)
    tmp.replace(target)  # complete files only: a sideload folder never sees a partial one
    out.result(
        {"bundle": str(target), "bytes": size},
        lambda r: f"wrote {r['bundle']} ({format_bytes(r['bytes'])})",
    )


async def _rotate(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    envelope = await client.send_json("POST", api_path("keys", "rotate"), {"role": args.role})
    signed = envelope["signed"]
    out.result(envelope, lambda _: f"root version {signed['version']}: {args.role} key rotated")


def register(sub: Subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``fleet``, ``device``, ``bundle`` and ``keys`` to the parser tree."""
    fleet = sub.add_parser("fleet", help="fleets of devices and the models they follow")
    verbs = fleet.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = verbs.add_parser("create", parents=parents, help="create a fleet")
    create.add_argument("name")
    create.add_argument("--description")
    create.set_defaults(handler=with_client(_create))
    verbs.add_parser("list", parents=parents, help="list fleets").set_defaults(
        handler=with_client(_list)
    )
    show = verbs.add_parser(
        "show", parents=parents, help="assignments, signed state, devices and what they report"
    )
    show.add_argument("fleet")
    show.set_defaults(handler=with_client(_show))
    assign = verbs.add_parser("assign", parents=parents, help="make a fleet follow a model")
    assign.add_argument("fleet")
    assign.add_argument("model")
    assign.add_argument("--alias", default="production", help="alias to follow")
    assign.set_defaults(handler=with_client(_assign))
    unassign = verbs.add_parser("unassign", parents=parents, help="stop following a model")
    unassign.add_argument("fleet")
    unassign.add_argument("model")
    unassign.set_defaults(handler=with_client(_unassign))

    device = sub.add_parser("device", help="enroll edge devices")
    dverbs = device.add_subparsers(dest="verb", required=True, metavar="VERB")
    enroll = dverbs.add_parser(
        "enroll", parents=parents, help="enroll a device and write its edge.toml"
    )
    enroll.add_argument("device")
    enroll.add_argument("--fleet", required=True)
    enroll.add_argument("-o", "--output", type=Path, required=True, help="edge.toml to write")
    enroll.add_argument("--central-url", help="URL the device uses (default: --url)")
    enroll.add_argument("--data-dir", type=Path, default=Path("/var/lib/skiff-edge"))
    enroll.add_argument("--listen", default="127.0.0.1:8500")
    enroll.add_argument("--sideload-dir", type=Path)
    enroll.add_argument("--cache-budget", type=int, default=10 * 1024**3, help="bytes")
    enroll.set_defaults(handler=with_client(_enroll))

    bundle = sub.add_parser("bundle", help="offline bundles for air-gapped sites")
    bverbs = bundle.add_subparsers(dest="verb", required=True, metavar="VERB")
    export = bverbs.add_parser("export", parents=parents, help="export a fleet's bundle")
    export.add_argument("--fleet", required=True)
    export.add_argument("-o", "--output", type=Path, required=True)
    export.set_defaults(handler=with_client(_export))

    keys = sub.add_parser("keys", help="signing keys and the master key of blobs")
    kverbs = keys.add_subparsers(dest="verb", required=True, metavar="VERB")
    rotate = kverbs.add_parser(
        "rotate", parents=parents, help="rotate the root or targets key (new root version)"
    )
    rotate.add_argument("--role", required=True, choices=("root", "targets"))
    rotate.set_defaults(handler=with_client(_rotate))
    masterkeys.add_verbs(kverbs, parents)
