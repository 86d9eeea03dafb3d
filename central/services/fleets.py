"""Fleets: groups of devices, the models (and alias) each follows, enrollment, bundles."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from central.domain import Actor
from central.services.fleetstate import FleetStates
from central.services.permissions import MANAGE_FLEETS, MANAGE_TOKENS, READ, require_unscoped
from central.services.sync import named_version, state_versions
from central.services.tokens import insert_token
from central.stores.blobs import LocalBlobStore
from central.stores.sqlite import SqliteStore
from central.stores.sqlite_fleets import FleetRow
from shared.errors import ConflictError, NotFoundError
from shared.names import validate_name
from shared.timeutil import format_time, utcnow

logger = logging.getLogger(__name__)


class FleetService:
    """Creates fleets, assigns models, enrolls devices and exports bundles."""

    def __init__(self, store: SqliteStore, blobs: LocalBlobStore, states: FleetStates) -> None:
        self._store = store
        self._blobs = blobs
        self._states = states

    async def _fleet(self, name: str) -> FleetRow:
        fleet = await self._store.get_fleet(validate_name(name, "fleet name"))
        if fleet is None:
            raise NotFoundError(f"fleet {name} does not exist")
        return fleet

    async def create(self, actor: Actor, name: str, description: str) -> dict[str, Any]:
        require_unscoped(actor, MANAGE_FLEETS)
        validate_name(name, "fleet name")
        async with self._store.transaction() as tx:
            if await tx.get_fleet(name) is not None:
                raise ConflictError(f"fleet {name} already exists")
            fleet_id = await tx.insert_fleet(name, description, format_time(utcnow()))
            await self._states.refresh(tx, fleet_id)
            await tx.append_audit(
                actor=actor.name, role=actor.role, action="fleet.create", target=name
            )
        return await self.show(actor, name)

    async def list_all(self, actor: Actor) -> list[dict[str, Any]]:
        require_unscoped(actor, READ)
        return [
            {"name": f.name, "description": f.description, "created_at": f.created_at}
            for f in await self._store.list_fleets()
        ]

    async def show(self, actor: Actor, name: str) -> dict[str, Any]:
        require_unscoped(actor, READ)
        fleet = await self._fleet(name)
        state = await self._store.latest_state(fleet.id)
        signed = None if state is None else state.envelope["signed"]
        return {
            "name": fleet.name,
            "description": fleet.description,
            "created_at": fleet.created_at,
            "assignments": [
                {
                    "model": a.model,
                    "alias": a.alias,
                    "version": a.version,
                    "manifest_digest": a.manifest_digest,
                }
                for a in await self._store.assignments(fleet.id)
            ],
            "state": None
            if signed is None
            else {
                "serial": signed["serial"],
                "expires": signed["expires"],
                "models": signed["models"],
                "rollouts": signed.get("rollouts", {}),
            },
            "devices": [d.to_dict() for d in await self._store.devices_of(fleet.id)],
        }

    async def assign(self, actor: Actor, name: str, model: str, alias: str) -> dict[str, Any]:
        require_unscoped(actor, MANAGE_FLEETS)
        validate_name(alias, "alias name")
        async with self._store.transaction() as tx:
            fleet = await tx.get_fleet(validate_name(name, "fleet name"))
            if fleet is None:
                raise NotFoundError(f"fleet {name} does not exist")
            model_id = await tx.model_id(validate_name(model))
            if model_id is None:
                raise NotFoundError(f"model {model} does not exist")
            await tx.assign(fleet.id, model_id, alias)
            await self._states.refresh(tx, fleet.id)
            await tx.append_audit(
                actor=actor.name,
                role=actor.role,
                action="fleet.assign",
                target=name,
                detail={"model": model, "alias": alias},
            )
        return await self.show(actor, name)

    async def unassign(self, actor: Actor, name: str, model: str) -> dict[str, Any]:
        require_unscoped(actor, MANAGE_FLEETS)
        async with self._store.transaction() as tx:
            fleet = await tx.get_fleet(validate_name(name, "fleet name"))
            model_id = await tx.model_id(validate_name(model))
            if fleet is None or model_id is None:
                raise NotFoundError(f"fleet {name} or model {model} does not exist")
            await tx.unassign(fleet.id, model_id)
            await self._states.refresh(tx, fleet.id)
            await tx.append_audit(
                actor=actor.name,
                role=actor.role,
                action="fleet.unassign",
                target=name,
                detail={"model": model},
            )
        return await self.show(actor, name)

    async def enroll(self, actor: Actor, name: str, device: str) -> dict[str, Any]:
        """Create a device and its token (role ``device``); the secret is shown once."""
        require_unscoped(actor, MANAGE_TOKENS)
        validate_name(device, "device id")
        async with self._store.transaction() as tx:
            fleet = await tx.get_fleet(validate_name(name, "fleet name"))
            if fleet is None:
                raise NotFoundError(f"fleet {name} does not exist")
            if await tx.get_device(device) is not None:
                raise ConflictError(f"device {device} is already enrolled")
            token, secret = await insert_token(tx, name=device, role="device")
            await tx.insert_device(device, fleet.id, token.id, format_time(utcnow()))
            await tx.append_change("device.enrolled", data={"device": device, "fleet": name})
            await tx.append_audit(
                actor=actor.name,
                role=actor.role,
                action="device.enroll",
                target=device,
                detail={"fleet": name},
            )
            root = await tx.get_root()
        logger.info("Device %s enrolled in fleet %s", device, name)
        return {
            "device": device,
            "fleet": name,
            "token": secret,
            "token_id": token.id,
            "root": root,
        }

    async def export_bundle(self, actor: Actor, name: str) -> Path:
        """Write the fleet's bundle to a temp file (the caller streams and deletes it)."""
        from shared.bundle import write_bundle

        require_unscoped(actor, READ)
        fleet = await self._fleet(name)
        state = await self._store.latest_state(fleet.id)
        if state is None:
            raise NotFoundError(f"fleet {name} has no signed state yet")
        manifests: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        blobs: dict[str, BinaryIO] = {}
        digests: set[str] = set()
        for digest, (model, name) in state_versions(state.envelope["signed"]).items():
            version = await named_version(self._store, digest, model, name)
            manifests[version.manifest_digest] = version.manifest
            metadata[version.manifest_digest] = version.signed_document()
            for f in version.files:
                digests.add(f["digest"])
        roots = await self._store.roots_after(0)
        fd, tmp = tempfile.mkstemp(prefix="skiff-bundle-", suffix=".skiff")
        path = Path(tmp)

        def write() -> None:
            with open(fd, "wb") as out:
                write_bundle(
                    out,
                    fleet=name,
                    created_at=format_time(utcnow()),
                    roots=roots,
                    fleet_state=state.envelope,
                    manifests=manifests,
                    metadata=metadata,
                    blobs=sorted(blobs.items()),
                )

        try:
            for digest in sorted(digests):
                blobs[digest] = await self._blobs.open_plain(digest)
            await asyncio.to_thread(write)
        except BaseException:
            await asyncio.to_thread(path.unlink, True)
            raise
        finally:
            for src in blobs.values():
                await asyncio.to_thread(src.close)
        return path
