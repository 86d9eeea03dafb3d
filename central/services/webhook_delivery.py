"""Webhook delivery: turns the change log into signed HTTP callbacks, retried until done.

Two steps, both durable. First the change log is read from a cursor kept in the database,
and one delivery row is written for every change that an active webhook subscribes to,
in the same transaction that moves the cursor: a change committed just before a crash is
still delivered after the restart, and never enqueued twice. Then due deliveries are
claimed (their next attempt moves past the attempt's timeout, a lease) and POSTed with a
``Skiff-Signature`` header; a 2xx answer marks them delivered, anything else schedules a
retry with exponential backoff and jitter, up to ``max_attempts``. Delivery is
at-least-once: the body's ``id`` is the same in every retry, for receivers to drop
duplicates.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time

import aiohttp

from central.domain import Change
from central.services.webhooks import matches
from central.stores.sqlite import SqliteStore
from central.stores.sqlite_webhooks import DueDelivery, NewDelivery
from shared import __version__
from shared.aio import wait_set
from shared.metrics import Registry as MetricsRegistry
from shared.timeutil import format_time, utcnow

logger = logging.getLogger(__name__)

BATCH = 500  # changes turned into deliveries per transaction
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 3600.0
LEASE_MARGIN_SECONDS = 5.0  # beyond the timeout, before a claimed attempt may be retried
COALESCE_SECONDS = 0.05  # how long a poke waits for the commits that follow it
IDLE_SECONDS = 1.0  # longest sleep between looks at the change log and the queue
MAX_ERROR_CHARS = 500


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Skiff-Signature`` value: ``t=<unix ts>,v1=<hex HMAC-SHA256(secret, "ts.body")>``."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def backoff(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed ones: 1, 2, 4 ... 3600, ±20 %."""
    delay = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** min(attempts - 1, 32))
    return float(delay * random.uniform(0.8, 1.2))


def event_body(change: Change) -> str:
    """The JSON document sent for ``change``; its ``id`` names the event in every retry."""
    doc = {
        "id": f"evt_{change.seq}",
        "event": change.kind,
        "at": change.at,
        "data": change.to_dict(),
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


class WebhookDispatcher:
    """Enqueues deliveries from the change log and sends them, ``concurrency`` at a time."""

    def __init__(
        self,
        store: SqliteStore,
        *,
        max_attempts: int,
        timeout: float,
        concurrency: int,
        metrics: MetricsRegistry | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._timeout = timeout
        self._concurrency = concurrency
        self._poked = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        # No webhook at the last look: a change concerns nobody, and the loop's idle
        # look (every IDLE_SECONDS) finds a hook another replica adds.
        self._no_hooks = False

    def on_change(self, change: Change) -> None:
        """A change-feed listener: something was committed, look at the log now."""
        if not self._no_hooks:
            self._poked.set()

    def poke(self) -> None:
        """A webhook was added or a delivery queued here: look at once."""
        self._no_hooks = False
        self._poked.set()

    async def run(self) -> None:
        """Enqueue and deliver until cancelled; in-flight attempts are cancelled with it."""
        connector = aiohttp.TCPConnector(limit=self._concurrency)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": f"skiff-webhooks/{__version__}"},
        ) as session:
            try:
                while True:
                    wait = IDLE_SECONDS
                    try:
                        await self.enqueue()
                        wait = await self._dispatch(session)
                    except Exception:
                        logger.exception("Webhook delivery loop failed; retrying")
                    await wait_set(self._poked, wait)
                    if self._poked.is_set():  # one pass for a burst of commits, not one each
                        await asyncio.sleep(COALESCE_SECONDS)
                    self._poked.clear()
            finally:
                for task in list(self._inflight):
                    task.cancel()
                await asyncio.gather(*self._inflight, return_exceptions=True)

    async def enqueue(self) -> int:
        """Write the deliveries of the changes after the cursor; returns how many changes."""
        hooks = await self._store.list_webhooks()
        self._no_hooks = not hooks
        if not hooks or await self._store.last_seq() <= await self._store.webhook_cursor():
            return 0
        async with self._store.transaction() as tx:
            hooks = await tx.list_webhooks()
            cursor = start = await tx.webhook_cursor()
            if hooks:  # nothing before the oldest webhook concerns anyone
                start = max(start, min(h.after_seq for h in hooks))
            changes = await tx.list_changes(start, BATCH)
            now = format_time(utcnow())
            rows = [
                NewDelivery(h.id, c.kind, c.seq, event_body(c), now)
                for c in changes
                for h in hooks
                if c.seq > h.after_seq and matches(h.events, c.kind)
            ]
            await tx.insert_deliveries(rows, due=time.time())
            moved = changes[-1].seq if changes else start
            if moved != cursor:
                await tx.set_webhook_cursor(moved)
        if rows:
            logger.debug("Enqueued %d webhook deliveries", len(rows))
        if len(changes) == BATCH:
            self._poked.set()
        return len(changes)

    async def _dispatch(self, session: aiohttp.ClientSession) -> float:
        """Start attempts for due deliveries; returns how long to sleep at most."""
        free = self._concurrency - len(self._inflight)
        if free <= 0:
            return IDLE_SECONDS  # an attempt that ends pokes the loop
        due_at = await self._store.next_delivery_due()
        now = time.time()
        if due_at is None or due_at > now:
            return IDLE_SECONDS if due_at is None else max(0.0, min(IDLE_SECONDS, due_at - now))
        async with self._store.transaction() as tx:
            claimed = await tx.claim_deliveries(
                now, now + self._timeout + LEASE_MARGIN_SECONDS, free
            )
        for due in claimed:
            task = asyncio.create_task(self._attempt(session, due), name=f"webhook-{due.id}")
            self._inflight.add(task)
            task.add_done_callback(self._finished)
        return 0.0 if len(claimed) == free else IDLE_SECONDS

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # the attempt's lease runs out and it is tried again
            logger.error("Recording a webhook attempt failed", exc_info=task.exception())
        self._poked.set()

    async def _attempt(self, session: aiohttp.ClientSession, due: DueDelivery) -> None:
        status, error = await self._post(session, due)
        attempts = due.attempts + 1
        if status is not None and 200 <= status < 300:
            state, next_at, done = "delivered", None, format_time(utcnow())
            logger.info("Webhook %s: delivery %d (%s) delivered", due.webhook_id, due.id, due.event)
        elif attempts >= self._max_attempts:
            state, next_at, done = "failed", None, None
            logger.warning(
                "Webhook %s: delivery %d failed for good after %d attempts: %s",
                due.webhook_id,
                due.id,
                attempts,
                error,
            )
        else:
            state, next_at, done = "pending", time.time() + backoff(attempts), None
            logger.info(
                "Webhook %s: delivery %d attempt %d failed (%s); retrying",
                due.webhook_id,
                due.id,
                attempts,
                error,
            )
        if self._metrics is not None:
            outcome = "retry" if state == "pending" else state
            self._metrics.counter(
                "skiff_webhook_attempts_total", "Webhook delivery attempts by outcome"
            ).inc(outcome=outcome)
        async with self._store.transaction() as tx:
            await tx.record_attempt(
                due.id,
                status=state,
                http_status=status,
                error=error,
                next_attempt_at=next_at,
                delivered_at=done,
            )

    async def _post(
        self, session: aiohttp.ClientSession, due: DueDelivery
    ) -> tuple[int | None, str | None]:
        """One POST; returns the HTTP status (None if none came) and what went wrong."""
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Skiff-Event": due.event,
            "Skiff-Delivery": str(due.id),
            "Skiff-Timestamp": str(timestamp),
            "Skiff-Signature": signature(due.secret, timestamp, due.body),
        }
        try:
            async with session.post(
                due.url, data=due.body, headers=headers, allow_redirects=False
            ) as resp:
                if 200 <= resp.status < 300:
                    return resp.status, None
                if 300 <= resp.status < 400:
                    where = resp.headers.get("Location", "?")
                    return resp.status, f"HTTP {resp.status}: redirect to {where} not followed"
                return resp.status, f"HTTP {resp.status} {resp.reason or ''}".strip()
        except TimeoutError:
            return None, f"no answer within {self._timeout:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as e:
            return None, (f"{type(e).__name__}: {e}")[:MAX_ERROR_CHARS]
