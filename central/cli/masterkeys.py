"""``skiff keys gen-master|rotate-master``: the master key of encryption at rest.

Both work offline on local files, like ``skiff central init``: ``rotate-master``
opens the registry database itself, so central must be stopped while it runs
(docs/encryption.md, "Rotating the master key").
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from central.cli.command import output_for
from central.cli.errors import CliError
from central.cli.output import fields

if TYPE_CHECKING:
    from central.cli.command import Subparsers

__all__ = ["add_verbs"]


def _gen_master(args: argparse.Namespace) -> None:
    from central.stores.masterkey import generate_key_file

    key = generate_key_file(args.output)
    output_for(args).result(
        {"key_file": str(args.output), "master_key_id": key.id},
        lambda r: (
            f"wrote master key {r['master_key_id']} to {r['key_file']} (mode 0600); "
            "keep a copy offline: blobs encrypted under it are lost without it"
        ),
    )


def _rotate_master(args: argparse.Namespace) -> None:
    from central.config import CentralConfig
    from central.stores.masterkey import load_master_key, read_key_file

    data_dir: Path = args.data_dir
    config = CentralConfig.load(data_dir)
    if not config.db_path.exists():
        raise CliError(f"{data_dir} is not an initialised registry: no {config.db_path.name}")
    if args.old_key_file is not None:
        old = read_key_file(args.old_key_file)
    else:
        old = load_master_key(config.master_key_path, os.environ)
    new = read_key_file(args.new_key_file)
    count = asyncio.run(_rewrap(config.db_path, config.durability, old, new))
    result = {
        "rewrapped": count,
        "old_master_key_id": old.id,
        "new_master_key_id": new.id,
        "new_key_file": str(args.new_key_file),
    }
    output_for(args).result(result, _render_rotation)


async def _rewrap(db_path: Path, durability: str, old: Any, new: Any) -> int:
    from central.stores.encrypted import rotate_master
    from central.stores.sqlite import SqliteStore

    store = SqliteStore(db_path, durability=durability)
    try:
        await store.open()
        return await rotate_master(store, old, new)
    finally:
        await store.close()


def _render_rotation(result: dict[str, Any]) -> str:
    summary = fields(
        [
            ("rewrapped", result["rewrapped"]),
            ("old master key", result["old_master_key_id"]),
            ("new master key", result["new_master_key_id"]),
        ]
    )
    return "\n".join(
        [
            "Rewrapped every data key with the new master key.",
            summary,
            "",
            "Before starting central, point it at the new key: set",
            f'  master_key_file = "{result["new_key_file"]}"',
            "in central.toml (or SKIFF_MASTER_KEY). Central now refuses the old key; keep it",
            "only as long as you keep database backups taken before this rotation.",
        ]
    )


def add_verbs(verbs: Subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``gen-master`` and ``rotate-master`` under ``skiff keys``."""
    gen = verbs.add_parser(
        "gen-master", parents=parents, help="create a master key file for encryption at rest"
    )
    gen.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    gen.set_defaults(handler=_gen_master)
    rotate = verbs.add_parser(
        "rotate-master",
        parents=parents,
        help="rewrap every blob data key with a new master key (central stopped)",
    )
    rotate.add_argument("--data-dir", type=Path, required=True, metavar="DIR")
    rotate.add_argument(
        "--old-key-file",
        type=Path,
        metavar="FILE",
        help="current master key (default: master_key_file, else SKIFF_MASTER_KEY)",
    )
    rotate.add_argument("--new-key-file", type=Path, required=True, metavar="FILE")
    rotate.set_defaults(handler=_rotate_master)
