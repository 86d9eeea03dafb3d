"""Aliases (``production``, ``staging``, any name) with full history and rollback.

Alias resolution is served from an in-process cache. Writes made here evict at once;
writes made by other central replicas reach it through the change log, which
the change feed hands to :meth:`AliasService.on_change`.
"""

from __future__ import annotations

import logging

from central.domain import Actor, Alias, AliasEvent, Change, Version
from central.services.fleetstate import FleetStates
from central.services.permissions import READ, WRITE, require
from central.stores.sqlite import SqliteStore, Transaction
from shared.errors import ConflictError, InvalidInputError, NotFoundError
from shared.names import validate_name
from shared.semver import SemVer
from shared.timeutil import format_time, utcnow

logger = logging.getLogger(__name__)

_ALIAS_KINDS = frozenset({"alias.moved", "alias.deleted"})


def validate_alias(alias: str) -> str:
    validate_name(alias, "alias name")
    try:
        SemVer.parse(alias)
    except InvalidInputError:
        return alias
    raise InvalidInputError(f"alias name {alias!r} looks like a version; pick another name")


def is_version(ref: str) -> bool:
    try:
        SemVer.parse(ref)
    except InvalidInputError:
        return False
    return True


class AliasService:
    """Sets, moves, rolls back and resolves aliases."""

    def __init__(self, store: SqliteStore, fleets: FleetStates) -> None:
        self._store = store
        self._fleets = fleets
        self._cache: dict[tuple[str, str], Alias | None] = {}

    async def get(self, actor: Actor, model: str, alias: str) -> Alias:
        require(actor, READ, model)
        key = (model, alias)
        if key in self._cache:
            found = self._cache[key]
        else:
            found = await self._store.get_alias(validate_name(model), validate_alias(alias))
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = found
        if found is None:
            if await self._store.model_id(model) is None:
                raise NotFoundError(f"model {model} does not exist")
            raise NotFoundError(f"alias {alias} of model {model} does not exist")
        return found

    async def resolve(self, actor: Actor, model: str, ref: str) -> Version:
        """The version ``ref`` names: a semver string or an alias."""
        require(actor, READ, model)
        if is_version(ref):
            found = await self._store.get_version(validate_name(model), ref)
            if found is None:
                if await self._store.model_id(model) is None:
                    raise NotFoundError(f"model {model} does not exist")
                raise NotFoundError(f"version {model}@{ref} does not exist")
            return found
        alias = await self.get(actor, model, ref)
        version = await self._store.get_version_by_id(alias.version_id)
        if version is None:  # pragma: no cover - foreign keys forbid it
            raise NotFoundError(f"alias {ref} of model {model} points at a missing version")
        return version

    async def list_all(self, actor: Actor, model: str) -> list[Alias]:
        require(actor, READ, model)
        model_id = await self._model_id(self._store, model)
        return await self._store.list_aliases(model_id)

    async def history(self, actor: Actor, model: str, alias: str, limit: int) -> list[AliasEvent]:
        require(actor, READ, model)
        model_id = await self._model_id(self._store, model)
        events = await self._store.alias_history(model_id, validate_alias(alias), limit)
        if not events:
            raise NotFoundError(f"alias {alias} of model {model} has no history")
        return events

    async def set(self, actor: Actor, model: str, alias: str, version: str) -> Alias:
        require(actor, WRITE, model)
        validate_alias(alias)
        async with self._store.transaction() as tx:
            model_id = await self._model_id(tx, model)
            target = await tx.get_version(model, version)
            if target is None:
                raise NotFoundError(f"version {model}@{version} does not exist")
            await self._move(tx, actor, model_id, model, alias, target.id, "set")
        return await self._after_write(actor, model, alias)

    async def rollback(self, actor: Actor, model: str, alias: str) -> Alias:
        """Point the alias back at the version it pointed at before its current one."""
        require(actor, WRITE, model)
        validate_alias(alias)
        async with self._store.transaction() as tx:
            model_id = await self._model_id(tx, model)
            if await tx.get_alias(model, alias) is None:
                raise NotFoundError(f"alias {alias} of model {model} does not exist")
            previous = await tx.previous_alias_target(model_id, alias)
            if previous is None:
                raise ConflictError(f"alias {alias} of model {model} has no previous target")
            await self._move(tx, actor, model_id, model, alias, previous, "rollback")
        return await self._after_write(actor, model, alias)

    async def delete(self, actor: Actor, model: str, alias: str) -> None:
        require(actor, WRITE, model)
        validate_alias(alias)
        async with self._store.transaction() as tx:
            model_id = await self._model_id(tx, model)
            current = await tx.get_alias(model, alias)
            if current is None:
                raise NotFoundError(f"alias {alias} of model {model} does not exist")
            at = format_time(utcnow())
            await tx.delete_alias(model_id, alias)
            await tx.add_alias_event(
                model_id, alias, "delete", None, current.version_id, actor.name, at
            )
            await tx.append_change(
                "alias.deleted", model=model, alias=alias, data={"previous": current.version}
            )
            await tx.append_audit(
                actor=actor.name,
                role=actor.role,
                action="alias.delete",
                target=f"{model}:{alias}",
            )
            await self._fleets.refresh_model(tx, model_id)
        self._cache.pop((model, alias), None)

    async def move_in(
        self, tx: Transaction, actor: Actor, model: str, alias: str, version_id: int, action: str
    ) -> None:
        """Point ``alias`` at a version inside the caller's transaction (a policy's alias
        move): history, change log, audit and fleet-state refresh as for :meth:`set`."""
        validate_alias(alias)
        model_id = await self._model_id(tx, model)
        await self._move(tx, actor, model_id, model, alias, version_id, action)
        self._cache.pop((model, alias), None)

    def forget(self, model: str, alias: str) -> None:
        """Drop a cached resolution (after the caller's transaction commits)."""
        self._cache.pop((model, alias), None)

    async def _move(
        self,
        tx: Transaction,
        actor: Actor,
        model_id: int,
        model: str,
        alias: str,
        version_id: int,
        action: str,
    ) -> None:
        current = await tx.get_alias(model, alias)
        if current is not None and current.version_id == version_id:
            return  # already there: nothing changes, nothing recorded
        target = await tx.get_version_by_id(version_id)
        assert target is not None
        at = format_time(utcnow())
        await tx.set_alias(model_id, alias, version_id, at)
        previous_id = None if current is None else current.version_id
        await tx.add_alias_event(model_id, alias, action, version_id, previous_id, actor.name, at)
        await tx.append_change(
            "alias.moved",
            model=model,
            version=target.version,
            alias=alias,
            data={
                "previous": None if current is None else current.version,
                "manifest_digest": target.manifest_digest,
                "action": action,
            },
        )
        await tx.append_audit(
            actor=actor.name,
            role=actor.role,
            action=f"alias.{action}",
            target=f"{model}:{alias}",
            detail={"version": target.version},
        )
        await self._fleets.refresh_model(tx, model_id)
        logger.info("Alias %s:%s now points at %s (%s)", model, alias, target.version, action)

    async def _after_write(self, actor: Actor, model: str, alias: str) -> Alias:
        self._cache.pop((model, alias), None)
        return await self.get(actor, model, alias)

    @staticmethod
    async def _model_id(reads: SqliteStore | Transaction, model: str) -> int:
        model_id = await reads.model_id(validate_name(model))
        if model_id is None:
            raise NotFoundError(f"model {model} does not exist")
        return model_id

    def on_change(self, change: Change) -> None:
        """Evict what a committed alias change (from any replica) made stale."""
        if change.kind in _ALIAS_KINDS and change.model and change.alias:
            self._cache.pop((change.model, change.alias), None)
