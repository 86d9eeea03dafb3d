"""Device sync: long-polled metadata deltas, device reports, and what a device may download.

An unchanged device costs a constant amount of work: the change feed keeps, per fleet,
the sequence number of its latest state, so a sync compares two integers and waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

from central.domain import Actor, Change, Version
from central.services.feed import ChangeFeed
from central.stores.sqlite import SqliteStore
from central.stores.sqlite_fleets import DeviceRow
from shared.aio import wait_set
from shared.errors import ForbiddenError, InvalidInputError, NotFoundError
from shared.timeutil import format_time, utcnow

logger = logging.getLogger(__name__)

MAX_WAIT = 60.0
MANIFEST_CACHE = 4096


def state_versions(signed: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Every manifest a fleet state names (each model's target and each rollout
    candidate), by digest: the model and version it is the manifest of."""
    named = {t["manifest_digest"]: (m, t["version"]) for m, t in signed["models"].items()}
    for model, r in signed.get("rollouts", {}).items():
        named.setdefault(r["candidate"]["manifest_digest"], (model, r["candidate"]["version"]))
    return named


async def named_version(store: SqliteStore, digest: str, model: str, version: str) -> Version:
    """The version a fleet state names, found by model and version, checked by digest."""
    found = await store.get_version(model, version)
    if found is None or found.manifest_digest != digest:
        raise NotFoundError(f"no version {model}@{version} has manifest {digest}")
    return found


class SyncService:
    """Answers device syncs and reports."""

    def __init__(self, store: SqliteStore, feed: ChangeFeed) -> None:
        self._store = store
        self._feed = feed
        self._fleet_seq: dict[str, int] = {}
        self._root_seq = 0
        self._wakeups: dict[str, asyncio.Event] = {}
        self._devices: dict[str, DeviceRow] = {}
        self._documents: OrderedDict[str, tuple[dict[str, Any], dict[str, Any]]] = OrderedDict()
        self._allowed: dict[str, set[str]] = {}
        self._closing = False
        # Per fleet: the latest signed state with the manifests and metadata it names,
        # built once per new serial (single flight) and shared by every device's answer.
        self._bundles: dict[str, tuple[int, dict[str, Any]]] = {}
        self._building: dict[str, asyncio.Lock] = {}
        self._roots: list[dict[str, Any]] = []

    async def start(self) -> None:
        self._fleet_seq = await self._store.state_change_seqs()
        self._root_seq = await self._store.last_root_seq()
        self._roots = await self._store.roots_after(0)
        self._feed.subscribe(self._on_change)

    def close(self) -> None:
        """Release every waiting long-poll (shutdown)."""
        self._closing = True
        for event in self._wakeups.values():
            event.set()

    def _on_change(self, change: Change) -> None:
        if change.kind == "fleet_state.updated":
            fleet = str(change.data.get("fleet"))
            self._fleet_seq[fleet] = change.seq
            self._allowed.pop(fleet, None)
            self._bundles.pop(fleet, None)
            self._wake(fleet)
        elif change.kind == "root.rotated":
            self._root_seq = change.seq
            self._roots = []  # reloaded by the next answer
            self._documents.clear()  # a targets rotation re-signs every manifest
            self._bundles.clear()
            for fleet in list(self._wakeups):
                self._wake(fleet)
        elif change.kind == "token.revoked":
            self._devices.clear()

    def _wake(self, fleet: str) -> None:
        event = self._wakeups.pop(fleet, None)
        if event is not None:
            event.set()

    async def device(self, actor: Actor) -> DeviceRow:
        """The enrolled device behind a device token."""
        if actor.role != "device":
            raise ForbiddenError(
                f"role '{actor.role}' lacks the 'device' permission: only a device token "
                "may sync, report and download what its fleet state names"
            )
        found = self._devices.get(actor.token_id)
        if found is None:
            found = await self._store.device_by_token(actor.token_id)
            if found is None:
                raise ForbiddenError(f"token '{actor.name}' belongs to no enrolled device")
            self._devices[actor.token_id] = found
        return found

    def _news(self, fleet: str, since: int) -> bool:
        return self._fleet_seq.get(fleet, 0) > since or self._root_seq > since

    async def sync(
        self, actor: Actor, since: int, wait: float, root_version: int
    ) -> dict[str, Any]:
        """What changed for the device's fleet after ``since``; waits up to ``wait`` seconds."""
        device = await self.device(actor)
        if since < 0 or root_version < 0:
            raise InvalidInputError("since and root must be >= 0")
        wait = min(max(wait, 0.0), MAX_WAIT)
        fleet = device.fleet
        if since > self._feed.last_seq:
            since = 0  # a cursor from the future (restored database): send everything
        if not self._news(fleet, since) and wait > 0 and not self._closing:
            event = self._wakeups.setdefault(fleet, asyncio.Event())
            await wait_set(event, wait)
        cursor = self._feed.last_seq
        answer: dict[str, Any] = {
            "cursor": cursor,
            "roots": await self._roots_after(root_version),
            "fleet_state": None,
            "manifests": {},
            "metadata": {},
        }
        if self._fleet_seq.get(fleet, 0) > since:
            answer.update(await self._state_of(fleet))
        return answer

    async def _roots_after(self, version: int) -> list[dict[str, Any]]:
        if not self._roots:
            self._roots = await self._store.roots_after(0)
        return [r for r in self._roots if int(r["signed"]["version"]) > version]

    async def _state_of(self, fleet: str) -> dict[str, Any]:
        """The fleet's latest state and the documents it names (cached per change)."""
        seq = self._fleet_seq.get(fleet, 0)
        cached = self._bundles.get(fleet)
        if cached is not None and cached[0] == seq:
            return cached[1]
        async with self._building.setdefault(fleet, asyncio.Lock()):
            cached = self._bundles.get(fleet)
            if cached is not None and cached[0] == seq:
                return cached[1]
            built = await self._build_state(fleet)
            self._bundles[fleet] = (seq, built)
            return built

    async def _build_state(self, fleet: str) -> dict[str, Any]:
        built: dict[str, Any] = {"fleet_state": None, "manifests": {}, "metadata": {}}
        fleet_row = await self._store.get_fleet(fleet)
        state = None if fleet_row is None else await self._store.latest_state(fleet_row.id)
        if state is None:
            return built
        built["fleet_state"] = state.envelope
        for digest, (model, version) in state_versions(state.envelope["signed"]).items():
            manifest, metadata = await self._documents_of(digest, model, version)
            built["manifests"][digest] = manifest
            built["metadata"][digest] = metadata
        return built

    async def _documents_of(
        self, manifest_digest: str, model: str, version: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A version's manifest and metadata document (immutable, so cached)."""
        found = self._documents.get(manifest_digest)
        if found is not None:
            self._documents.move_to_end(manifest_digest)
            return found
        named = await named_version(self._store, manifest_digest, model, version)
        metadata = named.signed_document()  # sensitive fields masked, as the manifest signs
        self._documents[manifest_digest] = (named.manifest, metadata)
        if len(self._documents) > MANIFEST_CACHE:
            self._documents.popitem(last=False)
        return named.manifest, metadata

    async def may_download(self, actor: Actor, digest: str) -> None:
        """Raise unless the device's current fleet state names a version holding ``digest``."""
        device = await self.device(actor)
        allowed = self._allowed.get(device.fleet)
        if allowed is None:
            fleet = await self._store.get_fleet(device.fleet)
            state = None if fleet is None else await self._store.latest_state(fleet.id)
            named = {} if state is None else state_versions(state.envelope["signed"])
            allowed = await self._store.blobs_of_versions(list(named.values()))
            self._allowed[device.fleet] = allowed
        if digest not in allowed:
            raise ForbiddenError(f"blob {digest} is not named by fleet {device.fleet}'s state")

    async def report(self, actor: Actor, device_id: str, report: dict[str, Any]) -> None:
        device = await self.device(actor)
        if device.id != device_id:
            raise ForbiddenError(f"device {device.id} may not report for {device_id}")
        async with self._store.transaction() as tx:
            await tx.save_report(device_id, report, format_time(utcnow()))
        logger.debug("Device %s reported", device_id)
