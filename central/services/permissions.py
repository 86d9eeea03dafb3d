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
MANAGE_WEBHOOKS = "manage_webhooks"  # webhooks and their deliveries
READ_AUDIT = "read_audit"  # the audit log: list, verify, export
APPROVE = "approve"  # approve or reject lifecycle approval requests
READ_SENSITIVE = "read_sensitive"  # metadata fields the policy declares sensitive, unmasked
PUBLIC = "public"  # routes that need no token (a route's permission, not in MATRIX)
DEVICE = "device"  # routes only a device token may call, for its own fleet

MATRIX: dict[str, frozenset[str]] = {
    READ: frozenset({"viewer", "developer", "approver", "admin"}),
    WRITE: frozenset({"developer", "admin"}),
    MANAGE_TOKENS: frozenset({"admin"}),
    MANAGE_FLEETS: frozenset({"developer", "admin"}),
    MANAGE_KEYS: frozenset({"admin"}),
    MANAGE_WEBHOOKS: frozenset({"admin"}),
    READ_AUDIT: frozenset({"approver", "admin"}),
    APPROVE: frozenset({"approver", "admin"}),
    READ_SENSITIVE: frozenset({"approver", "admin"}),
}


def require(actor: Actor, permission: str, model: str | None = None) -> None:
    """Raise :class:`ForbiddenError` unless ``actor`` holds ``permission`` (on ``model``)."""
    if actor.role not in MATRIX[permission]:
        raise ForbiddenError(f"role '{actor.role}' lacks the '{permission}' permission")
    scoped = model is not None and actor.models is not None
    if scoped and not any(fnmatchcase(str(model), p) for p in actor.models or ()):
        raise ForbiddenError(f"token '{actor.name}' is not scoped to model '{model}'")


def require_unscoped(actor: Actor, permission: str) -> None:
    """Like :func:`require`, for routes that span every model (tokens, fleets, change log).

    A token scoped to some models could otherwise see or change what concerns the
    others, or mint itself an unscoped token.
    """
    require(actor, permission)
    if actor.models is not None:
        raise ForbiddenError(
            f"token '{actor.name}' is scoped to models {', '.join(actor.models)}; "
            f"this needs the '{permission}' permission on all models"
        )
