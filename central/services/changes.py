"""The change log read side: what changed since a sequence number, and the root chain."""

from __future__ import annotations

from typing import Any

from central.domain import Actor, Change
from central.services.permissions import READ, require, require_unscoped
from central.stores.sqlite import SqliteStore
from shared.errors import InvalidInputError, NotFoundError


class ChangeService:
    """Read access to the change log and the signed root documents."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def since(self, actor: Actor, since: int, limit: int) -> tuple[list[Change], int]:
        """Changes after ``since`` in order, and the cursor to ask with next."""
        require_unscoped(actor, READ)
        if since < 0:
            raise InvalidInputError("since must be >= 0")
        changes = await self._store.list_changes(since, limit)
        return changes, changes[-1].seq if changes else since

    async def root(self, actor: Actor, version: int | None = None) -> dict[str, Any]:
        require(actor, READ)
        envelope = await self._store.get_root(version)
        if envelope is None:
            raise NotFoundError(f"root version {version} does not exist")
        return envelope
