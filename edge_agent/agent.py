"""The agent's core: what it trusts, what it has installed, and how an update lands.

Network syncs and sideloaded bundles feed the same :meth:`Agent.accept` — verification
through :class:`shared.fleet.TrustedState` first, then the cache, then the slots — so a
bundle carried on a USB stick is held to exactly the same checks as a sync.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.cache import Cache
from edge_agent.rollouts import AbRouter, Split
from edge_agent.slots import LoadError, ModelSource, SlotManager
from shared.errors import EqualVersionError, NotFoundError, RepositoryError, SkiffError
from shared.fleet import FleetState, TrustedState
from shared.manifest import FileEntry, Manifest
from shared.rollout import AB, CANARY, RolloutPlan, in_canary
from shared.timeutil import format_time, utcnow
from shared.trust import MAX_ROOT_ROTATIONS

logger = logging.getLogger(__name__)

BlobSource = Callable[[FileEntry], Awaitable[None]]
MAX_ERRORS = 20


@dataclass(slots=True)
class Update:
    """Untrusted documents from one sync answer or one bundle."""

    roots: list[dict[str, Any]] = field(default_factory=list)
    fleet_state: dict[str, Any] | None = None
    manifests: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)


def _main_file(manifest: Manifest) -> str:
    paths = [f.path for f in manifest.files]
    onnx = sorted(p for p in paths if p.lower().endswith(".onnx"))
    for p in onnx:
        if p.rsplit("/", 1)[-1] == "model.onnx":
            return p
    if len(onnx) != 1:
        raise LoadError(f"{manifest.model}@{manifest.version} has no single ONNX model file")
    return onnx[0]


class Agent:
    """Holds the device's trust, cache and slots, and applies verified updates."""

    def __init__(
        self,
        *,
        fleet: str,
        root_envelope: Mapping[str, Any],
        cache: Cache,
        slots: SlotManager,
        device_id: str = "",
    ) -> None:
        self.cache = cache
        self.slots = slots
        self.device_id = device_id
        self.router = AbRouter()
        slots.router = self.router
        slots.key_header = self.router.key_header
        self.trusted = TrustedState(root_envelope, fleet=fleet, reference_time=utcnow())
        self.errors: deque[dict[str, str]] = deque(maxlen=MAX_ERRORS)
        self.started = False
        self._lock = asyncio.Lock()
        self.on_change: Callable[[], None] | None = None  # e.g. send a report soon
        # a version was loaded into its slot: (model, version, its metadata document)
        self.on_loaded: Callable[[str, str, dict[str, Any]], None] | None = None

    def record_error(self, where: str, error: BaseException | str) -> None:
        message = str(error)
        self.errors.append({"at": format_time(utcnow()), "where": where, "error": message})
        logger.warning("%s: %s", where, message)

    # start from the cache

    async def restore(self) -> None:
        """Trust what the cache holds (re-verified), and serve it, with no network."""
        report = await self.cache.reconcile()
        if report.missing_or_corrupt:
            logger.warning(
                "Cache lost %d blob(s); they will be fetched again", len(report.missing_or_corrupt)
            )
        provisioned = self.trusted.root.version
        for envelope in (await self.cache.roots())[:MAX_ROOT_ROTATIONS]:
            if int(envelope["signed"]["version"]) > self.trusted.root.version:
                self.trusted.update_root(envelope)
        if self.trusted.root.version != provisioned:
            logger.info("Trusting cached root version %d", self.trusted.root.version)
        cached = await self.cache.fleet_state()
        if cached is not None:
            try:
                self.trusted.load_cached_fleet_state(cached)
            except RepositoryError as e:
                self.record_error("cache", f"cached fleet state rejected: {e}")
        await self._restore_slots()

    async def _restore_slots(self) -> None:
        for model, (serving, _previous) in (await self.cache.slots()).items():
            if serving is None:
                continue
            self.slots.add(model)
            try:
                await self._load(model, serving)
            except (SkiffError, OSError) as e:
                self.record_error(f"restore {model}", e)
        state = self.trusted.fleet_state
        if state is not None:
            for model, target in state.models.items():
                if model in state.rollouts:  # keep following the last verified plan, offline
                    await self._follow_split(model, target.version, self._cached_only)

    async def _cached_only(self, entry: FileEntry) -> None:
        if not await self.cache.has_blob(entry.digest):
            raise RepositoryError(f"blob {entry.digest} is not cached")

    async def _load(self, model: str, manifest_digest: str) -> None:
        found = await self.cache.manifest(manifest_digest)
        if found is None:
            raise LoadError(f"manifest {manifest_digest} is not cached")
        manifest = Manifest.from_dict(found[0]["signed"])
        for entry in manifest.files:
            if not await self.cache.has_blob(entry.digest):
                raise LoadError(f"blob {entry.digest} of {model} is not cached")
        source = await self._model_source(manifest_digest, manifest)
        await self.slots.install(model, manifest.version, manifest_digest, source)
        if self.on_loaded is not None:
            self.on_loaded(model, manifest.version, found[1])

    # apply an update

    async def accept(self, update: Update, fetch: BlobSource) -> FleetState | None:
        """Verify an update, store what verified, then install what the state names.

        Returns the newly trusted fleet state, or None if it brought nothing new.
        Verification failures are recorded and re-raised; nothing served changes.
        """
        async with self._lock:
            self.trusted.reference_time = utcnow()
            for envelope in update.roots[:MAX_ROOT_ROTATIONS]:
                if int(envelope["signed"]["version"]) <= self.trusted.root.version:
                    continue
                self.trusted.update_root(envelope)
                await self.cache.add_root(int(envelope["signed"]["version"]), envelope)
                logger.info("Root rotated to version %d", self.trusted.root.version)
            new_state = None
            if update.fleet_state is not None:
                try:
                    new_state = self.trusted.update_fleet_state(update.fleet_state)
                except EqualVersionError:
                    # Nothing new, but a manifest that failed verification last time may
                    # come right now (e.g. after a mix-and-match attack ends).
                    new_state = None
                    await self._store_manifests(update)
                else:
                    await self._store_manifests(update)
                    await self.cache.set_fleet_state(update.fleet_state)
                    logger.info("Fleet state serial %d accepted", new_state.serial)
            await self._install_all(fetch)
        if self.on_change is not None:
            self.on_change()
        return new_state

    async def _store_manifests(self, update: Update) -> None:
        state = self.trusted.fleet_state
        assert state is not None
        wanted = [(m, t.version, t.manifest_digest, False) for m, t in state.models.items()]
        for model in state.rollouts:
            plan = self._plan(model)
            if plan is not None:
                wanted.append((model, plan.candidate_version, plan.candidate_digest, True))
        for model, version, digest, candidate in wanted:
            if await self.cache.manifest(digest) is not None:
                continue  # verified and stored before
            envelope = update.manifests.get(digest)
            if envelope is None:
                self.record_error(f"sync {model}@{version}", "manifest missing from the update")
                continue
            try:
                verify = (
                    self.trusted.verify_candidate_manifest
                    if candidate
                    else self.trusted.verify_manifest
                )
                manifest = verify(model, envelope)
                document = update.metadata.get(digest)
                if not isinstance(document, Mapping):
                    raise RepositoryError(f"metadata of {model}@{version} is missing")
                self.trusted.verify_metadata(manifest, document)
            except RepositoryError as e:
                self.record_error(f"verify {model}@{version}", e)
                continue
            await self.cache.put_manifest(digest, model, version, dict(envelope), dict(document))

    def _plan(self, model: str) -> RolloutPlan | None:
        """The trusted rollout plan of ``model``, if any."""
        state = self.trusted.fleet_state
        raw = None if state is None else state.rollouts.get(model)
        if raw is None:
            return None
        try:
            return RolloutPlan.from_dict(raw)
        except RepositoryError as e:
            self.record_error(f"rollout {model}", e)
            return None

    def _desired(self, model: str, version: str, digest: str) -> tuple[str, str]:
        """What this device should serve for ``model``: a canary member serves the candidate."""
        plan = self._plan(model)
        member = plan is not None and plan.strategy == CANARY
        if plan is not None and member and in_canary(plan.id, self.device_id, plan.percent):
            return plan.candidate_version, plan.candidate_digest
        return version, digest

    async def install_pending(self, fetch: BlobSource) -> None:
        """Retry installing whatever the trusted state names and is not served yet."""
        async with self._lock:
            await self._install_all(fetch)

    def pending(self) -> bool:
        """Whether the trusted state names a version that no slot serves yet (and not bad)."""
        state = self.trusted.fleet_state
        if state is None:
            return False
        for model, target in state.models.items():
            version, digest = self._desired(model, target.version, target.manifest_digest)
            slot = self.slots.slots.get(model)
            serving = None if slot is None else slot.serving
            installed = serving is not None and serving.manifest_digest == digest
            known_bad = slot is not None and version in slot.bad_versions
            if not installed and not known_bad:
                return True
        return False

    async def _install_all(self, fetch: BlobSource) -> None:
        state = self.trusted.fleet_state
        if state is None:
            return
        for model, target in state.models.items():
            version, digest = self._desired(model, target.version, target.manifest_digest)
            if await self.cache.is_bad(digest):  # a canary candidate that failed: baseline
                version, digest = target.version, target.manifest_digest
            slot = self.slots.slots.get(model)
            serving = None if slot is None else slot.serving
            if (serving is None or serving.manifest_digest != digest) and not (
                await self.cache.is_bad(digest)
            ):
                await self._install(model, version, digest, fetch)
            await self._follow_split(model, target.version, fetch)
        for model in [m for m in self.slots.slots if m not in state.models]:
            self.router.splits.pop(model, None)
            self.slots.remove(model)
            await self.cache.set_slot(model, None, None)
            logger.info("Model %s is no longer assigned; slot removed", model)
        await self._evict()

    async def _follow_split(self, model: str, baseline: str, fetch: BlobSource) -> None:
        """Load an A/B plan's candidate beside the baseline and route to it; or undo that."""
        plan = self._plan(model)
        if plan is None or plan.strategy != AB or await self.cache.is_bad(plan.candidate_digest):
            if self.router.splits.pop(model, None) is not None:
                logger.info("A/B split of %s ended", model)
            self.slots.drop_variants(model)
            return
        slot = self.slots.slots.get(model)
        loaded = None if slot is None else slot.variants.get(plan.candidate_version)
        if loaded is None or loaded.manifest_digest != plan.candidate_digest:
            source = await self._fetch_files(
                model, plan.candidate_version, plan.candidate_digest, fetch
            )
            if source is None:
                return
            try:
                await self.slots.load_variant(
                    model, plan.candidate_version, plan.candidate_digest, source
                )
            except LoadError as e:
                await self.cache.mark_bad(
                    model, plan.candidate_version, plan.candidate_digest, str(e)
                )
                self.record_error(f"load {model}@{plan.candidate_version}", e)
                return
            await self._loaded(model, plan.candidate_version, plan.candidate_digest)
        self.router.splits[model] = Split(plan, baseline)
        self.slots.drop_variants(model, keep=frozenset({plan.candidate_version}))
        logger.info("A/B split of %s: %d%% to %s", model, plan.percent, plan.candidate_version)

    async def _fetch_files(
        self, model: str, version: str, digest: str, fetch: BlobSource
    ) -> ModelSource | None:
        """Fetch and verify a version's blobs; its model to load (None on failure)."""
        found = await self.cache.manifest(digest)
        if found is None:
            return None  # its manifest failed verification; already recorded
        manifest = Manifest.from_dict(found[0]["signed"])
        try:
            for entry in manifest.files:
                await fetch(entry)
        except RepositoryError as e:
            self.record_error(f"download {model}@{version}", e)
            return None
        try:
            return await self._model_source(digest, manifest)
        except LoadError as e:
            await self.cache.mark_bad(model, version, digest, str(e))
            self.record_error(f"load {model}@{version}", e)
            return None
        except (RepositoryError, NotFoundError) as e:  # the encrypted cache lost the blob
            self.record_error(f"load {model}@{version}", e)
            return None

    async def _model_source(self, digest: str, manifest: Manifest) -> ModelSource:
        """The model file of a cached version: a materialised path, or decrypted bytes.

        Raises:
            LoadError: The version has no single model file.
            RepositoryError: An encrypted blob fails authentication.
            NotFoundError: A blob is not in the cache.
        """
        main = _main_file(manifest)
        if not self.cache.encrypted:
            model_dir = await self.cache.materialise(digest, manifest.files)
            return ModelSource(path=model_dir / main)
        entry = next(f for f in manifest.files if f.path == main)
        data = await self.cache.read_blob(entry.digest)
        return ModelSource(data=data, other_files=len(manifest.files) - 1)

    async def _loaded(self, model: str, version: str, digest: str) -> None:
        found = await self.cache.manifest(digest)
        if self.on_loaded is not None and found is not None:
            self.on_loaded(model, version, found[1])
        await self.cache.touch(digest)

    async def _install(self, model: str, version: str, digest: str, fetch: BlobSource) -> None:
        source = await self._fetch_files(model, version, digest, fetch)
        if source is None:
            return
        slot = self.slots.add(model)
        before = slot.serving
        try:
            await self.slots.install(model, version, digest, source)
        except LoadError as e:
            await self.cache.mark_bad(model, version, digest, str(e))
            self.record_error(f"load {model}@{version}", e)
            return
        await self._loaded(model, version, digest)
        previous = None if before is None else before.manifest_digest
        await self.cache.set_slot(model, digest, previous)
        logger.info("Slot %s now serves %s", model, version)

    async def _evict(self) -> None:
        protected: set[str] = set()
        for slot in self.slots.slots.values():
            protected.update(loaded.manifest_digest for loaded in slot.loaded())
        for serving, previous in (await self.cache.slots()).values():
            protected.update(d for d in (serving, previous) if d)
        state = self.trusted.fleet_state
        if state is not None:
            protected.update(t.manifest_digest for t in state.models.values())
            for model in state.rollouts:
                plan = self._plan(model)
                if plan is not None:
                    protected.add(plan.candidate_digest)
        await self.cache.evict(protected)

    # what the device reports

    async def report(self) -> dict[str, Any]:
        state = self.trusted.fleet_state
        status = self.slots.status()
        return {
            "serving": {s["model"]: s["serving"] for s in status if s.get("serving")},
            "previous": {s["model"]: s["previous"] for s in status if s.get("previous")},
            "bad_versions": {s["model"]: s["bad_versions"] for s in status if s["bad_versions"]},
            "fleet_serial": None if state is None else state.serial,
            "root_version": self.trusted.root.version,
            "cursor": await self.cache.cursor(),
            "errors": list(self.errors),
        }

    async def trusted_entries(self) -> dict[str, FileEntry]:
        """Every file entry of the manifests the trusted fleet state names, by digest."""
        entries: dict[str, FileEntry] = {}
        state = self.trusted.fleet_state
        for target in [] if state is None else state.models.values():
            found = await self.cache.manifest(target.manifest_digest)
            if found is not None:
                for entry in Manifest.from_dict(found[0]["signed"]).files:
                    entries[entry.digest] = entry
        return entries

    def model_path(self, manifest_digest: str) -> Path:
        return self.cache.model_dir(manifest_digest)
