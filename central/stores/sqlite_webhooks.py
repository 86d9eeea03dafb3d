"""SQL of webhooks and their deliveries (part of the SQLite metadata store)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from central.stores._sqlbase import SqlBase, dumps
from shared.timeutil import format_time

DELIVERY_STATUSES = ("pending", "delivered", "failed")


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    url: str
    events: tuple[str, ...]  # fnmatch patterns of change kinds
    created_at: str
    created_by: str
    after_seq: int
    active: bool

    def to_dict(self) -> dict[str, Any]:
        """The public record: never the secret."""
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "created_at": self.created_at,
            "created_by": self.created_by,
            "active": self.active,
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    webhook_id: str
    event: str
    event_id: int
    status: str
    attempts: int
    next_attempt_at: float | None  # unix time
    last_status: int | None
    last_error: str | None
    created_at: str
    delivered_at: str | None

    def to_dict(self) -> dict[str, Any]:
        due = self.next_attempt_at
        return {
            "id": self.id,
            "webhook_id": self.webhook_id,
            "event": self.event,
            "event_id": self.event_id,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": None
            if due is None or self.status != "pending"
            else format_time(datetime.fromtimestamp(due, UTC)),
            "last_status": self.last_status,
            "last_error": self.last_error,
            "created_at": self.created_at,
            "delivered_at": self.delivered_at,
        }


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A delivery claimed for one attempt, with what is needed to send it."""

    id: int
    webhook_id: str
    url: str
    secret: str
    event: str
    body: bytes
    attempts: int  # attempts made before this one


@dataclass(frozen=True, slots=True)
class NewDelivery:
    webhook_id: str
    event: str
    event_id: int
    body: str
    created_at: str


class WebhookReads(SqlBase):
    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        row = await self._one("SELECT * FROM webhooks WHERE id = ?", (webhook_id,))
        return None if row is None else _webhook(row)

    async def list_webhooks(self, active_only: bool = True) -> list[Webhook]:
        sql = "SELECT * FROM webhooks"
        if active_only:
            sql += " WHERE active = 1"
        return [_webhook(r) for r in await self._all(sql + " ORDER BY created_at, id")]

    async def webhook_cursor(self) -> int:
        row = await self._one("SELECT seq FROM webhook_cursor WHERE id = 1")
        return 0 if row is None else int(row[0])

    async def next_delivery_due(self) -> float | None:
        """When the earliest pending delivery of an active webhook is due (unix time)."""
        row = await self._one(
            "SELECT min(d.next_attempt_at) FROM webhook_deliveries d "
            "JOIN webhooks w ON w.id = d.webhook_id WHERE d.status = 'pending' AND w.active = 1"
        )
        return None if row is None or row[0] is None else float(row[0])

    async def get_delivery(self, delivery_id: int) -> Delivery | None:
        row = await self._one("SELECT * FROM webhook_deliveries WHERE id = ?", (delivery_id,))
        return None if row is None else _delivery(row)

    async def list_deliveries(
        self, webhook_id: str | None, status: str | None, before: int | None, limit: int
    ) -> list[Delivery]:
        """Deliveries, newest first, keyset-paginated on ``id``."""
        sql = "SELECT * FROM webhook_deliveries WHERE 1 = 1"
        params: list[Any] = []
        if webhook_id is not None:
            sql += " AND webhook_id = ?"
            params.append(webhook_id)
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        if before is not None:
            sql += " AND id < ?"
            params.append(before)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [_delivery(r) for r in await self._all(sql, params)]


class WebhookWrites(SqlBase):
    async def insert_webhook(self, hook: Webhook, secret: str) -> None:
        await self._run(
            "INSERT INTO webhooks (id, url, events, secret, created_at, created_by, after_seq,"
            " active) VALUES (?, ?, ?, ?, ?, ?, ?, 1)",
            (
                hook.id,
                hook.url,
                dumps(list(hook.events)),
                secret,
                hook.created_at,
                hook.created_by,
                hook.after_seq,
            ),
        )

    async def deactivate_webhook(self, webhook_id: str, at: str) -> int:
        """Deactivate, forget the secret and fail what is still pending; returns how many."""
        await self._run("UPDATE webhooks SET active = 0, secret = '' WHERE id = ?", (webhook_id,))
        return await self._change(
            "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL,"
            " last_error = 'webhook removed' WHERE webhook_id = ? AND status = 'pending'",
            (webhook_id,),
        )

    async def requeue_delivery(self, webhook_id: str, delivery_id: int, due: float) -> int:
        """Make a finished delivery pending again, with a fresh count; 1 if it was found."""
        return await self._change(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?,"
            " delivered_at = NULL WHERE id = ? AND webhook_id = ? AND status != 'pending'",
            (due, delivery_id, webhook_id),
        )

    async def set_webhook_cursor(self, seq: int) -> None:
        await self._run("UPDATE webhook_cursor SET seq = ? WHERE id = 1", (seq,))

    async def insert_deliveries(self, rows: Sequence[NewDelivery], due: float) -> None:
        """Enqueue deliveries; one already enqueued for the same webhook and event is kept."""
        await self._many(
            "INSERT OR IGNORE INTO webhook_deliveries (webhook_id, event, event_id, body,"
            " status, attempts, next_attempt_at, created_at) VALUES (?, ?, ?, ?, 'pending', 0,"
            " ?, ?)",
            [(r.webhook_id, r.event, r.event_id, r.body, due, r.created_at) for r in rows],
        )

    async def claim_deliveries(
        self, now: float, lease_until: float, limit: int
    ) -> list[DueDelivery]:
        """Take up to ``limit`` due deliveries for an attempt.

        Their next attempt moves to ``lease_until``, so no other worker (or replica) takes
        them meanwhile, and a process that dies mid-attempt leaves them to be retried.
        """
        rows = await self._all(
            "SELECT d.id, d.webhook_id, w.url, w.secret, d.event, d.body, d.attempts"
            " FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id"
            " WHERE d.status = 'pending' AND w.active = 1 AND d.next_attempt_at <= ?"
            " ORDER BY d.next_attempt_at, d.id LIMIT ?",
            (now, limit),
        )
        await self._many(
            "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id = ?",
            [(lease_until, r["id"]) for r in rows],
        )
        return [
            DueDelivery(
                id=r["id"],
                webhook_id=r["webhook_id"],
                url=r["url"],
                secret=r["secret"],
                event=r["event"],
                body=r["body"].encode("utf-8"),
                attempts=r["attempts"],
            )
            for r in rows
        ]

    async def record_attempt(
        self,
        delivery_id: int,
        *,
        status: str,
        http_status: int | None,
        error: str | None,
        next_attempt_at: float | None,
        delivered_at: str | None,
    ) -> None:
        await self._run(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, status = ?,"
            " last_status = ?, last_error = ?, next_attempt_at = ?, delivered_at = ?"
            " WHERE id = ? AND status = 'pending'",
            (status, http_status, error, next_attempt_at, delivered_at, delivery_id),
        )


def _webhook(row: sqlite3.Row) -> Webhook:
    return Webhook(
        id=row["id"],
        url=row["url"],
        events=tuple(json.loads(row["events"])),
        created_at=row["created_at"],
        created_by=row["created_by"],
        after_seq=row["after_seq"],
        active=bool(row["active"]),
    )


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        id=row["id"],
        webhook_id=row["webhook_id"],
        event=row["event"],
        event_id=row["event_id"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_status=row["last_status"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        delivered_at=row["delivered_at"],
    )
