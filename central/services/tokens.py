"""Bearer tokens: created with a role, stored as a SHA-256 hash, shown once, revocable."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from datetime import timedelta

from central.domain import ROLES, Actor, Change, Token
from central.services.permissions import MANAGE_TOKENS, require_unscoped
from central.stores.sqlite import SqliteStore, Transaction
from shared.errors import InvalidInputError, NotFoundError, UnauthenticatedError
from shared.names import validate_name
from shared.timeutil import format_time, parse_time, utcnow

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "skf_"  # noqa: S105 - a marker, not a secret
MAX_EXPIRES_IN = 100 * 366 * 24 * 3600  # a token lives at most about a century
# How long a verified token is trusted without reading the store. Revocations reach the
# cache at once through the change feed (any replica), and never past the token's expiry.
CACHE_SECONDS = 60.0


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


async def insert_token(
    tx: Transaction,
    *,
    name: str,
    role: str,
    expires_in: int | None = None,
    models: tuple[str, ...] | None = None,
) -> tuple[Token, str]:
    """Create a token inside ``tx``; returns the record and the secret (shown once)."""
    if role not in ROLES:
        raise InvalidInputError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    if expires_in is not None and not 0 < expires_in <= MAX_EXPIRES_IN:
        raise InvalidInputError(
            f"expires_in must be a number of seconds between 1 and {MAX_EXPIRES_IN}"
        )
    validate_name(name, "token name")
    now = utcnow()
    token = Token(
        id="tok_" + secrets.token_hex(8),
        name=name,
        role=role,
        models=models,
        created_at=format_time(now),
        expires_at=None if expires_in is None else format_time(now + timedelta(seconds=expires_in)),
        revoked_at=None,
    )
    secret = new_secret()
    await tx.insert_token(token, hash_token(secret))
    return token, secret


class TokenService:
    """Authenticates requests and manages tokens."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self._cache: dict[str, tuple[float, Actor]] = {}

    async def authenticate(self, secret: str | None) -> Actor:
        if not secret:
            raise UnauthenticatedError("missing bearer token: send 'Authorization: Bearer <token>'")
        token_hash = hash_token(secret)
        cached = self._cache.get(token_hash)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        found = await self._store.token_by_hash(token_hash)
        if found is None or not hmac.compare_digest(found[1], token_hash):
            raise UnauthenticatedError("unknown token")
        token = found[0]
        if token.revoked_at is not None:
            raise UnauthenticatedError(f"token '{token.name}' was revoked")
        if token.expires_at is not None and parse_time(token.expires_at) <= utcnow():
            raise UnauthenticatedError(f"token '{token.name}' expired at {token.expires_at}")
        actor = Actor(token_id=token.id, name=token.name, role=token.role, models=token.models)
        if len(self._cache) > 100_000:
            self._cache.clear()
        ttl = CACHE_SECONDS
        if token.expires_at is not None:
            ttl = min(ttl, (parse_time(token.expires_at) - utcnow()).total_seconds())
        self._cache[token_hash] = (time.monotonic() + ttl, actor)
        return actor

    def on_change(self, change: Change) -> None:
        """Forget cached tokens when any replica revokes one."""
        if change.kind == "token.revoked":
            self._cache.clear()

    async def create(
        self,
        actor: Actor,
        *,
        name: str,
        role: str,
        expires_in: int | None = None,
        models: tuple[str, ...] | None = None,
    ) -> tuple[Token, str]:
        require_unscoped(actor, MANAGE_TOKENS)
        async with self._store.transaction() as tx:
            token, secret = await insert_token(
                tx, name=name, role=role, expires_in=expires_in, models=models
            )
            await tx.append_change("token.created", data={"id": token.id, "role": role})
            await tx.append_audit(
                actor=actor.name, role=actor.role, action="token.create", target=token.id
            )
        logger.info("Token %s (%s) created with role %s", token.id, name, role)
        return token, secret

    async def list_all(self, actor: Actor) -> list[Token]:
        require_unscoped(actor, MANAGE_TOKENS)
        return await self._store.list_tokens()

    async def revoke(self, actor: Actor, token_id: str) -> None:
        require_unscoped(actor, MANAGE_TOKENS)
        async with self._store.transaction() as tx:
            if await tx.get_token(token_id) is None:
                raise NotFoundError(f"token {token_id} does not exist")
            await tx.revoke_token(token_id, format_time(utcnow()))
            await tx.append_change("token.revoked", data={"id": token_id})
            await tx.append_audit(
                actor=actor.name, role=actor.role, action="token.revoke", target=token_id
            )
        self._cache.clear()
        logger.info("Token %s revoked", token_id)
