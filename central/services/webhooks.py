"""Webhooks: who is called back on which registry events. Adding, listing, removing.

Sending is :mod:`central.services.webhook_delivery`'s job. A webhook subscribes to change
kinds of the change log (``version.registered``, ``stage.changed``, ``alias.moved``,
``alias.deleted``, ``fleet_state.updated``, ...) by fnmatch patterns such as ``rollout.*``.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

from central.domain import Actor
from central.services.permissions import MANAGE_WEBHOOKS, require_unscoped
from central.stores.sqlite import SqliteStore
from central.stores.sqlite_webhooks import DELIVERY_STATUSES, Delivery, Webhook
from shared.errors import ConflictError, InvalidInputError, NotFoundError
from shared.timeutil import format_time, utcnow

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 - a marker, not a secret
MIN_SECRET = 16  # characters of a secret given by the caller
MAX_SECRET = 256
MAX_URL = 2048
MAX_PATTERNS = 50
_PATTERN = re.compile(r"^[a-z0-9_.*?\[\]-]{1,100}$")


@dataclass(frozen=True, slots=True)
class NewWebhook:
    """The body of ``POST /api/v1/webhooks``, checked."""

    url: str
    events: tuple[str, ...]
    secret: str | None

    @classmethod
    def from_dict(cls, body: Any) -> NewWebhook:
        if not isinstance(body, dict):
            raise InvalidInputError("expected a JSON object {url, events, secret}")
        unknown = set(body) - {"url", "events", "secret"}
        if unknown:
            raise InvalidInputError(
                f"unknown fields {sorted(unknown)}; expected url, events, secret"
            )
        secret = body.get("secret")
        if secret is not None:
            check_secret(secret)
        return cls(check_url(body.get("url")), check_events(body.get("events")), secret)


def check_url(url: Any) -> str:
    """An absolute http(s) URL without credentials in it.

    Raises:
        InvalidInputError: anything else.
    """
    if not isinstance(url, str) or not url:
        raise InvalidInputError("url must be a non-empty string")
    if len(url) > MAX_URL:
        raise InvalidInputError(f"url is longer than {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as e:
        raise InvalidInputError(f"url {url!r} is not a valid URL: {e}") from e
    if parts.scheme not in ("http", "https"):
        raise InvalidInputError(f"url must be http:// or https://, got {url!r}")
    if not parts.hostname:
        raise InvalidInputError(f"url {url!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidInputError("url must not hold credentials; receivers check the signature")
    if parts.fragment or any(c.isspace() for c in url):
        raise InvalidInputError(f"url {url!r} must have no fragment and no whitespace")
    return url


def check_events(events: Any) -> tuple[str, ...]:
    """A non-empty list of event patterns (change kinds, ``*`` and ``?`` wildcards)."""
    if not isinstance(events, list) or not events:
        raise InvalidInputError(
            "events must be a non-empty list of patterns, e.g. ['version.registered', 'rollout.*']"
        )
    if len(events) > MAX_PATTERNS:
        raise InvalidInputError(f"events holds more than {MAX_PATTERNS} patterns")
    for pattern in events:
        if not isinstance(pattern, str) or not _PATTERN.match(pattern):
            raise InvalidInputError(
                f"event pattern {pattern!r} must be 1-100 characters of a-z, 0-9, '.', '_', "
                "'-' and the wildcards '*', '?', '[...]'"
            )
    return tuple(dict.fromkeys(events))


def check_secret(secret: Any) -> None:
    if not isinstance(secret, str) or not MIN_SECRET <= len(secret) <= MAX_SECRET:
        raise InvalidInputError(
            f"secret must be a string of {MIN_SECRET} to {MAX_SECRET} characters "
            "(leave it out to have one generated)"
        )
    if not secret.isprintable():
        raise InvalidInputError("secret must hold printable characters only")


def matches(patterns: tuple[str, ...], event: str) -> bool:
    return any(fnmatchcase(event, p) for p in patterns)


class WebhookService:
    """Adds, lists and removes webhooks; lists their deliveries. Admin only."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def create(self, actor: Actor, body: Any) -> tuple[Webhook, str | None]:
        """Add a webhook from a request body ``{url, events, secret?}``.

        Returns:
            The webhook and the generated secret (None if the body gave one).

        Raises:
            InvalidInputError: the URL is not http(s), the events are not patterns, or the
                secret is too short.
        """
        require_unscoped(actor, MANAGE_WEBHOOKS)
        new = NewWebhook.from_dict(body)
        generated = None if new.secret is not None else SECRET_PREFIX + secrets.token_urlsafe(32)
        secret = new.secret or generated
        assert secret is not None
        async with self._store.transaction() as tx:
            hook = Webhook(
                id="wh_" + secrets.token_hex(8),
                url=new.url,
                events=new.events,
                created_at=format_time(utcnow()),
                created_by=actor.name,
                after_seq=await tx.last_seq(),  # events from now on, never the past
                active=True,
            )
            await tx.insert_webhook(hook, secret)
            await tx.append_audit(
                actor=actor.name,
                role=actor.role,
                action="webhook.create",
                target=hook.id,
                detail={"url": hook.url, "events": list(hook.events)},
            )
        logger.info("Webhook %s added for %s", hook.id, ", ".join(hook.events))
        return hook, generated

    async def list_all(self, actor: Actor) -> list[Webhook]:
        require_unscoped(actor, MANAGE_WEBHOOKS)
        return await self._store.list_webhooks()

    async def remove(self, actor: Actor, webhook_id: str) -> None:
        """Deactivate a webhook: it is sent nothing more, its secret is forgotten."""
        require_unscoped(actor, MANAGE_WEBHOOKS)
        async with self._store.transaction() as tx:
            hook = await tx.get_webhook(webhook_id)
            if hook is None or not hook.active:
                raise NotFoundError(f"webhook {webhook_id} does not exist")
            dropped = await tx.deactivate_webhook(webhook_id, format_time(utcnow()))
            await tx.append_audit(
                actor=actor.name, role=actor.role, action="webhook.delete", target=webhook_id
            )
        logger.info("Webhook %s removed (%d pending deliveries dropped)", webhook_id, dropped)

    async def redeliver(self, actor: Actor, webhook_id: str, delivery_id: int) -> Delivery:
        """Send a delivered or failed delivery again, with a fresh count of attempts.

        Raises:
            NotFoundError: no such active webhook, or no such delivery of it.
            ConflictError: the delivery is still pending.
        """
        require_unscoped(actor, MANAGE_WEBHOOKS)
        async with self._store.transaction() as tx:
            hook = await tx.get_webhook(webhook_id)
            if hook is None or not hook.active:
                raise NotFoundError(f"webhook {webhook_id} does not exist")
            found = await tx.get_delivery(delivery_id)
            if found is None or found.webhook_id != webhook_id:
                raise NotFoundError(f"webhook {webhook_id} has no delivery {delivery_id}")
            if found.status == "pending":
                raise ConflictError(f"delivery {delivery_id} is still pending")
            await tx.requeue_delivery(webhook_id, delivery_id, time.time())
            await tx.append_audit(
                actor=actor.name,
                role=actor.role,
                action="webhook.redeliver",
                target=webhook_id,
                detail={"delivery": delivery_id},
            )
            again = await tx.get_delivery(delivery_id)
        assert again is not None
        logger.info("Webhook %s: delivery %d queued again", webhook_id, delivery_id)
        return again

    async def deliveries(
        self,
        actor: Actor,
        webhook_id: str | None,
        *,
        status: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[Delivery], str | None]:
        """Deliveries newest first, and the cursor of the next page (None at the end)."""
        require_unscoped(actor, MANAGE_WEBHOOKS)
        if status is not None and status not in DELIVERY_STATUSES:
            raise InvalidInputError(
                f"status must be one of {', '.join(DELIVERY_STATUSES)}, got {status!r}"
            )
        before = None
        if cursor is not None:
            if not cursor.isdigit():
                raise InvalidInputError(f"invalid cursor {cursor!r}")
            before = int(cursor)
        if webhook_id is not None and await self._store.get_webhook(webhook_id) is None:
            raise NotFoundError(f"webhook {webhook_id} does not exist")
        items = await self._store.list_deliveries(webhook_id, status, before, limit)
        return items, str(items[-1].id) if len(items) == limit else None
