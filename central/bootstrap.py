"""``skiff central init``: a new data dir with its schema, keys, root document and admin token."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from central.config import CONFIG_FILE, CentralConfig, default_toml
from central.domain import SYSTEM
from central.services.signing import ROOT_KEY_FILE, TARGETS_KEY_FILE, first_root
from central.services.tokens import insert_token
from central.stores.sqlite import SqliteStore
from shared.canonical import canonical_json
from shared.errors import ConflictError
from shared.keys import SigningKey, save_signing_key
from shared.timeutil import format_time, utcnow

ROOT_FILE = "root.json"


@dataclass(frozen=True, slots=True)
class InitResult:
    data_dir: Path
    admin_token: str
    root_keyid: str
    targets_keyid: str
    config_path: Path

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "admin_token": self.admin_token,
            "root_keyid": self.root_keyid,
            "targets_keyid": self.targets_keyid,
            "config_path": str(self.config_path),
            "root_path": str(self.data_dir / ROOT_FILE),
        }


def init_data_dir(data_dir: Path, *, key_dir: Path | None = None) -> InitResult:
    """Create a registry in ``data_dir``; refuses to touch an initialised one.

    Args:
        data_dir: The registry's data directory.
        key_dir: Where to keep the private signing keys (default ``<data_dir>/keys``),
            e.g. a separate, more tightly guarded volume.

    Raises:
        ConflictError: ``data_dir`` already holds a registry, or ``key_dir`` holds keys.
    """
    data_dir = data_dir.absolute()
    keys = data_dir / "keys" if key_dir is None else key_dir.absolute()
    for marker in (data_dir / "registry.db", keys / ROOT_KEY_FILE, data_dir / CONFIG_FILE):
        if marker.exists():
            raise ConflictError(f"{data_dir} is already initialised ({marker} exists)")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = default_toml()
    if key_dir is not None:
        text = text.replace(
            "# signing_key_dir = (not set)", f"signing_key_dir = {json.dumps(str(keys))}"
        )
    (data_dir / CONFIG_FILE).write_text(text, encoding="utf-8")
    config = CentralConfig.load(data_dir)
    config.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    root_key, targets_key = SigningKey.generate(), SigningKey.generate()
    save_signing_key(config.key_dir / ROOT_KEY_FILE, root_key)
    save_signing_key(config.key_dir / TARGETS_KEY_FILE, targets_key)
    root = first_root(root_key, targets_key, config.root_expiry_days)
    (data_dir / ROOT_FILE).write_bytes(canonical_json(root))
    token = asyncio.run(_init_store(config, root))
    os.chmod(config.db_path, 0o600)
    return InitResult(
        data_dir=data_dir,
        admin_token=token,
        root_keyid=root_key.keyid,
        targets_keyid=targets_key.keyid,
        config_path=data_dir / CONFIG_FILE,
    )


async def _init_store(config: CentralConfig, root: dict[str, Any]) -> str:
    store = SqliteStore(config.db_path, durability=config.durability)
    await store.open()
    try:
        async with store.transaction() as tx:
            await tx.insert_root(1, root, format_time(utcnow()))
            token, secret = await insert_token(tx, name="admin", role="admin")
            await tx.append_change("root.rotated", data={"version": 1})
            await tx.append_change("token.created", data={"id": token.id, "role": "admin"})
            await tx.append_audit(
                actor=SYSTEM.name, role=SYSTEM.role, action="registry.init", target=token.id
            )
        return secret
    finally:
        await store.close()
