"""The sync client: long-polls central for deltas and hands them to the agent core.

Like python-tuf's ``Updater``: this module does the I/O (bounded downloads, retries)
and calls the pure verification core through :meth:`Agent.accept`; the cache is
written only after verification. Transport errors back off exponentially with jitter
and never stop serving; verification errors are reported and the device keeps what
it serves.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from edge_agent.agent import Agent, Update
from edge_agent.config import EdgeConfig
from edge_agent.downloads import fetch_blob
from edge_agent.fetcher import Fetcher
from shared.aio import wait_set
from shared.errors import DownloadError, RepositoryError, SkiffError
from shared.manifest import FileEntry
from shared.timeutil import format_time, utcnow

logger = logging.getLogger(__name__)


def parse_answer(answer: Any) -> Update:
    """Shape-check a sync answer; its contents are verified later by the agent core."""
    if not isinstance(answer, dict):
        raise RepositoryError("sync answer is not a JSON object")
    roots = answer.get("roots", [])
    state = answer.get("fleet_state")
    manifests = answer.get("manifests", {})
    metadata = answer.get("metadata", {})
    if not isinstance(roots, list) or not all(isinstance(r, dict) for r in roots):
        raise RepositoryError("sync answer: roots must be a list of envelopes")
    if state is not None and not isinstance(state, dict):
        raise RepositoryError("sync answer: fleet_state must be an envelope or null")
    if not isinstance(manifests, dict) or not isinstance(metadata, dict):
        raise RepositoryError("sync answer: manifests and metadata must be objects")
    roots.sort(key=lambda r: r.get("signed", {}).get("version", 0) if isinstance(r, dict) else 0)
    return Update(roots, state, manifests, metadata)


class Backoff:
    """Exponential backoff with full jitter, capped."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial, self.cap = initial, cap
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return random.uniform(0, min(self.cap, self.initial * 2 ** (self.failures - 1)))

    def reset(self) -> None:
        self.failures = 0


class SyncClient:
    """Keeps the agent in step with central for as long as it runs."""

    def __init__(self, config: EdgeConfig, fetcher: Fetcher, agent: Agent) -> None:
        self._config = config
        self._fetcher = fetcher
        self._agent = agent
        self._backoff = Backoff(
            config.sync_backoff_initial_seconds, config.sync_backoff_max_seconds
        )
        self.connected = False
        self.sync_errors = 0
        self.report_now = asyncio.Event()

    async def fetch(self, entry: FileEntry) -> None:
        await fetch_blob(self._fetcher, self._agent.cache, entry)

    async def sync_once(self, wait: float) -> None:
        """One long-poll round: ask, verify, store, install."""
        cursor = await self._agent.cache.cursor()
        answer = await self._fetcher.get_json(
            "/api/v1/sync",
            params={"since": cursor, "wait": f"{wait:g}", "root": self._agent.trusted.root.version},
            max_length=self._config.max_metadata_bytes,
            timeout=wait + self._config.request_timeout_seconds,
        )
        self.connected = True
        await self._agent.cache.set_last_contact(format_time(utcnow()))
        update = parse_answer(answer)
        if update.roots or update.fleet_state is not None:
            await self._agent.accept(update, self.fetch)
        elif self._agent.pending():
            await self._agent.install_pending(self.fetch)
        new_cursor = answer.get("cursor")
        if isinstance(new_cursor, int) and new_cursor >= 0:
            await self._agent.cache.set_cursor(new_cursor)

    async def run(self) -> None:
        """Sync until cancelled; never raises for network or verification failures."""
        wait = 0.0  # the first round answers at once
        while True:
            try:
                await self.sync_once(wait)
            except DownloadError as e:
                self._failed("sync", e, retry=True)
                await asyncio.sleep(self._backoff.next_delay())
                continue
            except RepositoryError as e:
                self._failed("verify", e, retry=False)
                self.report_now.set()
                await asyncio.sleep(self._backoff.next_delay())
                continue
            except SkiffError as e:
                self._failed("sync", e, retry=True)
                await asyncio.sleep(self._backoff.next_delay())
                continue
            self._backoff.reset()
            wait = self._config.sync_wait_seconds
            if self._agent.pending():
                # something could not be installed yet (e.g. a download failed): retry soon
                await asyncio.sleep(min(self._backoff.next_delay() + 0.5, 10.0))

    def _failed(self, where: str, error: SkiffError, *, retry: bool) -> None:
        self.sync_errors += 1
        if isinstance(error, DownloadError):
            self.connected = False
            logger.warning("Sync failed (%s); serving from cache and retrying", error)
        else:
            self._agent.record_error(where, error)

    async def report_loop(self) -> None:
        """Report the device's state to central periodically and after every change."""
        while True:
            try:
                body = await self._agent.report()
                body["agent_version"] = _version()
                await self._fetcher.post_json(
                    f"/api/v1/devices/{self._config.device_id}/report", body
                )
            except SkiffError as e:
                logger.debug("Report not sent: %s", e)
            self.report_now.clear()
            await wait_set(self.report_now, self._config.report_interval_seconds)


def _version() -> str:
    import shared

    return shared.__version__
