"""The permission matrix: which roles hold which permission. Kept in one place."""

from __future__ import annotations

from fnmatch import fnmatchcase

from central.domain import Actor
from shared.errors import ForbiddenError

READ = "read"  # models, versions, aliases, manifests, blobs, search, change log
WRITE = "write"  # register versions, upload blobs, edit models, move aliases and stages
MANAGE_TOKENS = "manage_tokens"  # tokens and device enrollment
MANAGE_FLEETS = "manage_fleets"  # fleets and the models they follow
MANAGE_KEYS = "manage_keys"  # key rotation

MATRIX: dict[str, frozenset[str]] = {
    READ: frozenset({"viewer", "developer", "approver", "admin"}),
    WRITE: frozenset({"developer", "admin"}),
    MANAGE_TOKENS: frozenset({"admin"}),
    MANAGE_FLEETS: frozenset({"developer", "admin"}),
    MANAGE_KEYS: frozenset({"admin"}),
}


def require(actor: Actor, permission: str, model: str | None = None) -> None:
    """Raise :class:`ForbiddenError` unless ``actor`` holds ``permission`` (on ``model``)."""
    if actor.role not in MATRIX[permission]:
        raise ForbiddenError(f"role '{actor.role}' lacks the '{permission}' permission")
    scoped = model is not None and actor.models is not None
    if scoped and not any(fnmatchcase(str(model), p) for p in actor.models or ()):
        raise ForbiddenError(f"token '{actor.name}' is not scoped to model '{model}'")
