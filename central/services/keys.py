"""Key rotation: a new root document signed by the old root keys and the new ones.

Rotating the ``targets`` key re-signs every manifest and every fleet state with the new
key in the same transaction as the new root, so a device that follows the rotation
finds everything verifiable. New private keys are written beside the current ones
(``*.key.new``) before the transaction and renamed into place after it commits; a
crash in between is completed at the next start by :func:`finish_rotation`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from central.domain import Actor
from central.services.fleetstate import FleetStates
from central.services.permissions import MANAGE_KEYS, require_unscoped
from central.services.signing import ROOT_KEY_FILE, TARGETS_KEY_FILE, Signer
from central.stores.sqlite import SqliteStore
from shared.envelope import sign_envelope
from shared.errors import InvalidInputError
from shared.keys import SigningKey, load_signing_key, save_signing_key
from shared.timeutil import format_time, utcnow
from shared.trust import Root, new_root

logger = logging.getLogger(__name__)

ROLES = {"root": ROOT_KEY_FILE, "targets": TARGETS_KEY_FILE}


def finish_rotation(key_dir: Path, root_envelope: dict[str, Any]) -> None:
    """Move ``*.key.new`` into place if the stored root already names its key."""
    root = Root.from_dict(root_envelope["signed"])
    for role, name in ROLES.items():
        pending = key_dir / (name + ".new")
        if not pending.exists():
            continue
        key = load_signing_key(pending)
        if key.keyid in root.roles[role].keyids:
            _retire(key_dir, name)
            os.replace(pending, key_dir / name)
            logger.info("Completed the rotation of the %s key", role)
        else:
            pending.unlink()  # the rotation never committed


def _retire(key_dir: Path, name: str) -> None:
    current = key_dir / name
    if current.exists():
        retired = key_dir / "retired"
        retired.mkdir(mode=0o700, exist_ok=True)
        os.replace(current, retired / f"{load_signing_key(current).keyid[:16]}-{name}")


class KeyService:
    """Rotates the registry's root or targets key."""

    def __init__(
        self,
        store: SqliteStore,
        key_dir: Path,
        signer: Signer,
        states: FleetStates,
        *,
        root_expiry_days: int,
    ) -> None:
        self._store = store
        self._key_dir = key_dir
        self._signer = signer
        self._states = states
        self._expiry_days = root_expiry_days
        self._lock = asyncio.Lock()
        self.root_file = key_dir.parent / "root.json"  # the app points it at the data dir

    async def rotate(self, actor: Actor, role: str) -> dict[str, Any]:
        """Make a new root version with a fresh key for ``role``; returns its envelope."""
        require_unscoped(actor, MANAGE_KEYS)
        if role not in ROLES:
            raise InvalidInputError(f"role must be 'root' or 'targets', got {role!r}")
        async with self._lock:
            return await self._rotate(actor, role)

    async def _rotate(self, actor: Actor, role: str) -> dict[str, Any]:
        current_env = await self._store.get_root()
        assert current_env is not None
        current = Root.from_dict(current_env["signed"])
        old_root_key = await asyncio.to_thread(load_signing_key, self._key_dir / ROOT_KEY_FILE)
        old_targets = await asyncio.to_thread(load_signing_key, self._key_dir / TARGETS_KEY_FILE)
        fresh = SigningKey.generate()
        pending = self._key_dir / (ROLES[role] + ".new")
        await asyncio.to_thread(pending.unlink, True)
        await asyncio.to_thread(save_signing_key, pending, fresh)
        root_key = fresh if role == "root" else old_root_key
        targets_key = fresh if role == "targets" else old_targets
        signed = new_root(
            version=current.version + 1,
            expires=utcnow() + timedelta(days=self._expiry_days),
            root_keys=[root_key.public_key],
            targets_keys=[targets_key.public_key],
        ).to_dict()
        # Signed by the old root threshold and by the new root's own.
        signers = [old_root_key] if role == "targets" else [old_root_key, fresh]
        envelope = sign_envelope(signed, signers)
        resigner = Signer(targets_key)
        async with self._store.transaction(offload=True) as tx:  # rewrites many rows
            await tx.insert_root(current.version + 1, envelope, format_time(utcnow()))
            await tx.append_change(
                "root.rotated", data={"version": current.version + 1, "role": role}
            )
            if role == "targets":
                count = await tx.resign_manifests(resigner.sign)
                for state in await tx.latest_states():
                    await self._states.refresh(tx, state.fleet_id, force=True, signer=resigner)
                logger.info("Re-signed %d manifest(s) with the new targets key", count)
            await tx.append_audit(
                actor=actor.name,
                role=actor.role,
                action="keys.rotate",
                target=role,
                detail={"root_version": current.version + 1, "keyid": fresh.keyid},
            )
        await asyncio.to_thread(finish_rotation, self._key_dir, envelope)
        if role == "targets":
            self._signer.replace(targets_key)
            self._states.use(self._signer)
        await asyncio.to_thread(self.root_file.write_text, json.dumps(envelope))
        logger.info("Rotated the %s key: root version %d", role, current.version + 1)
        return envelope
