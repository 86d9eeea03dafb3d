"""Model slots: load, warm up, health-check and hot-swap ONNX versions.

A slot serves one model name. :meth:`SlotManager.install` builds a new
``InferenceSession`` off the event loop, runs it once on a synthetic input, checks that
every tensor output is finite and only then swaps it in with one reference assignment
(DESIGN.md section 2, "Hot-swap"). A request resolves its :class:`LoadedVersion` once, at
its start, and runs on it to the end, so a swap never cancels or fails a request in flight.
A version that fails to load or to pass its check is recorded in ``bad_versions`` and the
slot keeps what it had.

Deciding what to install (sync, sideload), reporting and HTTP are left to others.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from edge_agent.tensors import TensorSpec, synthetic_input
from shared.errors import ConflictError, InvalidInputError, NotFoundError, SkiffError
from shared.metrics import Registry

__all__ = [
    "PLATFORM",
    "HealthCheckError",
    "InferenceError",
    "LoadError",
    "LoadedVersion",
    "ModelSource",
    "NotReadyError",
    "RunCost",
    "Slot",
    "SlotManager",
]

logger = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"

# (model, old serving version or None, new serving version)
SwapHook = Callable[[str, str | None, str], None]
# (model, request key) -> version to serve, or None for the serving one
Router = Callable[[str, str | None], str | None]


class LoadError(SkiffError):
    """A model version does not load, or fails its warm-up run."""

    code = "model_load_failed"
    status = 500


class HealthCheckError(LoadError):
    """A model version loads but its warm-up output is not finite."""


class NotReadyError(SkiffError):
    """A model is known but has no version loaded to serve."""

    code = "not_ready"
    status = 503


class InferenceError(SkiffError):
    """A loaded model failed while running a request."""

    code = "inference_failed"
    status = 500


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A verified ONNX model to load: a file, or its bytes (from an encrypted cache).

    Attributes:
        path: The ``.onnx`` file (its external data files, if any, beside it).
        data: The model's bytes; external data files cannot be resolved from these.
        other_files: How many other files the version has (named in load errors of
            in-memory models, which cannot reach them).
    """

    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)
    other_files: int = 0

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("a model source has exactly one of path and data")


INLINE_SECONDS = 0.0005  # a version whose runs take less than this runs on the event loop
INLINE_SAMPLES = 16  # consecutive runs under INLINE_WORST before a version may run inline
INLINE_WORST = 4 * INLINE_SECONDS  # a run slower than this is a slow run
MAX_SLOW_INLINE = 3  # slow runs on the loop one version may cost before threads for good


class RunCost:
    """How long one version's runs take, to run tiny models without a thread hop.

    Handing a run to a worker thread and its result back costs about 0.1 ms and two
    wake-ups; a small model runs in a few microseconds. A version runs inline on the
    event loop once its last :data:`INLINE_SAMPLES` runs each took under
    :data:`INLINE_WORST` of CPU time, its runs average under :data:`INLINE_SECONDS`, and
    the request is no larger than one that ran fast.

    A slow run restarts the count, so the version runs in the threads until it has shown
    :data:`INLINE_SAMPLES` fast runs again: one run slowed by something other than its
    input (other work in the process, say) does not keep a tiny model off the loop for
    good. A request larger than any that ran fast goes to the threads, so a model whose
    run time grows with its input never runs a large one inline; one whose run time
    depends on its input values costs the loop at most :data:`MAX_SLOW_INLINE` slow runs,
    after which it stays in the threads.
    """

    __slots__ = ("average", "largest", "samples", "slow_inline", "streak")

    def __init__(self) -> None:
        self.samples = 0
        self.average = 0.0  # exponentially weighted, seconds
        self.streak = 0  # consecutive runs under INLINE_WORST
        self.slow_inline = 0  # slow runs made on the event loop
        self.largest = 0  # input elements of the largest request that ran fast

    def inline(self, elements: int) -> bool:
        return (
            self.streak >= INLINE_SAMPLES
            and self.average < INLINE_SECONDS
            and self.slow_inline < MAX_SLOW_INLINE
            and elements <= self.largest
        )

    def record(self, seconds: float, elements: int, *, inline: bool = False) -> None:
        """Count one run of ``seconds`` CPU time; ``inline``: it ran on the event loop."""
        self.samples += 1
        self.average = seconds if self.samples == 1 else 0.9 * self.average + 0.1 * seconds
        if seconds < INLINE_WORST:
            self.streak += 1
            self.largest = max(self.largest, elements)  # a size known to run fast
        else:
            self.streak = 0
            if inline:
                self.slow_inline += 1


@dataclass(frozen=True)
class LoadedVersion:
    """One model version loaded in an onnxruntime session, ready to serve.

    Immutable: a request holding one keeps a consistent session and signature whatever
    the slot does meanwhile.
    """

    model: str
    version: str
    manifest_digest: str
    session: onnxruntime.InferenceSession = field(repr=False, compare=False)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    loaded_at: datetime
    platform: str = PLATFORM
    cost: RunCost = field(default_factory=RunCost, repr=False, compare=False)


@dataclass
class Slot:
    """What one model name serves now and can roll back to.

    Attributes:
        serving: The version answering requests, or ``None`` (not ready).
        previous: The version served before the last swap (kept for rollback).
        bad_versions: Versions that failed to load or to pass the check, with the reason.
        variants: Versions loaded beside the served one (an A/B candidate), by version.
    """

    model: str
    serving: LoadedVersion | None = None
    previous: LoadedVersion | None = None
    bad_versions: dict[str, str] = field(default_factory=dict)
    variants: dict[str, LoadedVersion] = field(default_factory=dict)

    def loaded(self) -> list[LoadedVersion]:
        """Every loaded version: serving, previous, then variants."""
        found = [v for v in (self.serving, self.previous) if v is not None]
        return found + [v for v in self.variants.values() if v not in found]


class SlotManager:
    """Holds the device's model slots and runs inference on them.

    Args:
        inference_threads: Worker threads running ``session.run``; the event loop runs
            only models measured to take microseconds (:class:`RunCost`), so health and
            status answer while a slow model computes.
        intra_op_threads: onnxruntime threads inside one run.
        metrics: Registry for load, swap and inference metrics, if any.
    """

    def __init__(
        self,
        *,
        inference_threads: int = 2,
        intra_op_threads: int = 1,
        metrics: Registry | None = None,
    ) -> None:
        if inference_threads < 1 or intra_op_threads < 1:
            raise ValueError("inference_threads and intra_op_threads must be at least 1")
        self._intra_op_threads = intra_op_threads
        # A run spread over several intra-op threads is not measured by its calling
        # thread's CPU time, and is not tiny anyway: such sessions always run in threads.
        self._inline_ok = intra_op_threads == 1
        self._executor = ThreadPoolExecutor(inference_threads, thread_name_prefix="inference")
        self._slots: dict[str, Slot] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._run_options = onnxruntime.RunOptions()
        # Failed runs are reported as errors to the caller; onnxruntime need not print them.
        self._run_options.log_severity_level = 4
        self.on_swap: SwapHook | None = None
        # The A/B seam: requests without a version go where this says (None: serving).
        self.router: Router | None = None
        # The request header whose value keys the router, per model (A/B stickiness).
        self.key_header: Callable[[str], str | None] | None = None
        # Told of every inference (version, seconds, ok, outputs): memory-only work.
        self.observer: (
            Callable[
                [LoadedVersion, float, bool, dict[str, Any] | None, dict[str, np.ndarray]], None
            ]
            | None
        ) = None
        self._metrics = _Metrics(metrics) if metrics is not None else None

    @property
    def slots(self) -> Mapping[str, Slot]:
        """The slots by model name (read-only view)."""
        return self._slots

    def add(self, model: str) -> Slot:
        """Declare a model this device should serve; its slot is not ready until installed."""
        return self._slots.setdefault(model, Slot(model))

    def all_serving(self) -> bool:
        """Whether every declared slot has a version loaded."""
        return all(slot.serving is not None for slot in self._slots.values())

    async def install(
        self, model: str, version: str, manifest_digest: str, model_path: Path | ModelSource
    ) -> LoadedVersion:
        """Load, warm up and health-check a version, then make it the one served.

        Installing the version and digest already served does nothing.

        Args:
            model: The slot's model name (created if missing).
            version: The version's semver.
            manifest_digest: Digest of the signed manifest the file was verified against.
            model_path: The verified ``.onnx`` file, or a :class:`ModelSource`.

        Raises:
            HealthCheckError: An output of the warm-up run is NaN or infinite.
            LoadError: The file does not load or the warm-up run fails. In both cases the
                slot keeps serving what it served and records the version as bad.

        Returns:
            The version now served.
        """
        slot = self.add(model)
        async with self._locks.setdefault(model, asyncio.Lock()):
            served = slot.serving
            if served and (served.version, served.manifest_digest) == (version, manifest_digest):
                return served
            try:
                loaded = await asyncio.to_thread(
                    self._load, model, version, manifest_digest, model_path
                )
            except LoadError as e:
                slot.bad_versions[version] = str(e)
                self._count_load(model, "failed")
                logger.warning("Model %s version %s rejected: %s", model, version, e)
                raise
            slot.bad_versions.pop(version, None)
            self._count_load(model, "ok")
            self._swap(slot, loaded)
            return loaded

    async def load_variant(
        self, model: str, version: str, manifest_digest: str, model_path: Path | ModelSource
    ) -> LoadedVersion:
        """Load a version beside the served one (an A/B candidate), checked like an install.

        Requests reach it when they name it or when the router sends them to it.

        Raises:
            LoadError: As for :meth:`install`; the slot is unchanged.
        """
        slot = self.add(model)
        async with self._locks.setdefault(model, asyncio.Lock()):
            for loaded in slot.loaded():
                if (loaded.version, loaded.manifest_digest) == (version, manifest_digest):
                    slot.variants[version] = loaded
                    return loaded
            try:
                loaded = await asyncio.to_thread(
                    self._load, model, version, manifest_digest, model_path
                )
            except LoadError as e:
                slot.bad_versions[version] = str(e)
                self._count_load(model, "failed")
                raise
            old = slot.variants.get(version)
            slot.variants[version] = loaded
            if old is not None:
                self._release_later([old])
            logger.info(
                "Slot %s loaded variant %s beside %s",
                model,
                version,
                slot.serving and slot.serving.version,
            )
            return loaded

    def drop_variants(self, model: str, keep: frozenset[str] = frozenset()) -> None:
        """Unload the variants of a model but those in ``keep``."""
        slot = self._slots.get(model)
        if slot is None:
            return
        gone = [v for version, v in slot.variants.items() if version not in keep]
        slot.variants = {k: v for k, v in slot.variants.items() if k in keep}
        still = {id(v) for v in (slot.serving, slot.previous) if v is not None}
        self._release_later([v for v in gone if id(v) not in still])

    async def rollback(self, model: str, *, reason: str | None = None) -> LoadedVersion:
        """Serve the previous version again; the one it replaces becomes ``previous``.

        Args:
            model: The slot's model name.
            reason: If given, the replaced version is also recorded as bad with it.

        Raises:
            NotFoundError: No slot for the model.
            ConflictError: The slot has nothing to roll back to.

        Returns:
            The version now served.
        """
        slot = self._slot(model)
        target, replaced = slot.previous, slot.serving
        if target is None:
            raise ConflictError(f"model {model} has no previous version to roll back to")
        slot.serving, slot.previous = target, replaced
        if replaced is not None and reason is not None:
            slot.bad_versions[replaced.version] = reason
        logger.info(
            "Slot %s rolled back from %s to %s",
            model,
            replaced.version if replaced else None,
            target.version,
        )
        self._notify(model, replaced.version if replaced else None, target.version)
        return target

    def remove(self, model: str) -> None:
        """Forget a model's slot; requests already running on it finish normally."""
        slot = self._slots.pop(model, None)
        self._locks.pop(model, None)
        if slot is not None:
            logger.info("Slot %s removed", model)
            evicted = slot.loaded()
            slot.serving = slot.previous = None
            slot.variants = {}
            self._release_later(evicted)

    def get(
        self, model: str, version: str | None = None, *, key: str | None = None
    ) -> LoadedVersion:
        """Resolve what a request runs on; the caller keeps it to the end of the request.

        Args:
            model: The model name.
            version: An explicit version: the serving or the previous one.
            key: A request key for the router, when no version is given.

        Raises:
            NotFoundError: Unknown model, or that version is not loaded.
            NotReadyError: The model's slot has nothing serving.
        """
        slot = self._slot(model)
        serving = slot.serving
        if version is None and self.router is not None:
            version = self.router(model, key)
            if version is None or version not in self.versions(model):
                version = None
        if version is None:
            if serving is None:
                raise NotReadyError(f"model {model} is not ready: no version is loaded")
            return serving
        for loaded in slot.loaded():
            if loaded.version == version:
                return loaded
        raise NotFoundError(f"model {model} has no version {version} loaded")

    def versions(self, model: str) -> list[str]:
        """The versions of a model that requests may name: serving first, then previous."""
        return [v.version for v in self._slot(model).loaded()]

    async def infer(
        self,
        loaded: LoadedVersion,
        inputs: dict[str, np.ndarray],
        output_names: list[str] | None = None,
    ) -> dict[str, Any]:
        """Run a model: in the inference threads, or inline if its runs are tiny (RunCost).

        Args:
            loaded: What :meth:`get` resolved at the start of the request.
            inputs: Arrays by input name, already checked against ``loaded.inputs``.
            output_names: Outputs to compute, or ``None`` for all of them.

        Raises:
            InvalidInputError: An unknown output is named, or onnxruntime rejects an input.
            InferenceError: The model failed while running.

        Returns:
            Output values by name, in the order asked for (or the model's order).
        """
        known = [spec.name for spec in loaded.outputs]
        names = known if output_names is None else output_names
        for name in names:
            if name not in known:
                raise InvalidInputError(f"output {name}: the model has no such output")
        cost = loaded.cost
        elements = sum(int(getattr(v, "size", 1)) for v in inputs.values())
        started = time.perf_counter()
        try:
            inline = self._inline_ok and cost.inline(elements)
            if inline:
                cpu = time.thread_time()
                values = loaded.session.run(names, inputs, self._run_options)
                seconds = time.thread_time() - cpu
            else:
                values, seconds = await asyncio.get_running_loop().run_in_executor(
                    self._executor, _timed_run, loaded.session, names, inputs, self._run_options
                )
            cost.record(seconds, elements, inline=inline)
        except Exception as e:
            if self.observer is not None:
                self.observer(loaded, time.perf_counter() - started, False, None, inputs)
            if self._metrics:
                self._metrics.failures.inc(model=loaded.model, version=loaded.version)
            if isinstance(e, InvalidArgument):
                raise InvalidInputError(f"the model rejected the input: {e}") from e
            logger.error("Model %s version %s failed: %s", loaded.model, loaded.version, e)
            raise InferenceError(
                f"model {loaded.model} version {loaded.version} failed: {e}"
            ) from e
        elapsed = time.perf_counter() - started
        if self._metrics:
            self._metrics.latency.observe(elapsed, model=loaded.model)
        outputs = dict(zip(names, values, strict=True))
        if self.observer is not None:
            self.observer(loaded, elapsed, True, outputs, inputs)
        return outputs

    def status(self) -> list[dict[str, Any]]:
        """Per slot: model, serving and previous versions, bad versions and load time."""
        rows = []
        for slot in self._slots.values():
            serving, previous = slot.serving, slot.previous
            rows.append(
                {
                    "model": slot.model,
                    "serving": serving.version if serving else None,
                    "manifest_digest": serving.manifest_digest if serving else None,
                    "previous": previous.version if previous else None,
                    "bad_versions": dict(slot.bad_versions),
                    "variants": sorted(slot.variants),
                    "loaded_at": serving.loaded_at.isoformat() if serving else None,
                }
            )
        return rows

    async def close(self) -> None:
        """Drop every slot and stop the inference threads once running requests finish."""
        evicted = [v for s in self._slots.values() for v in s.loaded()]
        self._slots.clear()
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        await asyncio.to_thread(_release, evicted)

    # Internals

    def _slot(self, model: str) -> Slot:
        slot = self._slots.get(model)
        if slot is None:
            raise NotFoundError(f"unknown model {model}")
        return slot

    def _swap(self, slot: Slot, new: LoadedVersion) -> None:
        old, evicted = slot.serving, slot.previous
        # The swap itself: requests that already resolved `old` finish on it.
        slot.previous = old
        slot.serving = new
        logger.info(
            "Slot %s now serves %s (previous %s)", slot.model, new.version, old and old.version
        )
        self._notify(slot.model, old.version if old else None, new.version)
        if evicted is not None:
            self._release_later([evicted])

    def _release_later(self, evicted: list[LoadedVersion]) -> None:
        # Hand the last references to a worker thread: freeing a session and collecting can
        # take a while, and onnxruntime may not return all memory of a destroyed session.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the loop: nothing to keep responsive
            _release(evicted)
            return
        loop.run_in_executor(None, _release, evicted).add_done_callback(_log_release_failure)

    def _notify(self, model: str, old: str | None, new: str) -> None:
        if self._metrics:
            self._metrics.swaps.inc(model=model)
        if self.on_swap is None:
            return
        try:
            self.on_swap(model, old, new)
        except Exception:
            logger.exception("on_swap hook failed for model %s", model)

    def _count_load(self, model: str, result: str) -> None:
        if self._metrics:
            self._metrics.loads.inc(model=model, result=result)

    def _load(
        self, model: str, version: str, digest: str, source: Path | ModelSource
    ) -> LoadedVersion:
        """Build, warm up and check a session. Runs in a worker thread."""
        label = f"model {model} version {version}"
        if not isinstance(source, ModelSource):
            source = ModelSource(path=source)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self._intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = onnxruntime.InferenceSession(
                source.data if source.data is not None else str(source.path),
                options,
                providers=["CPUExecutionProvider"],
            )
            inputs = tuple(
                TensorSpec.from_ort(a.name, a.type, a.shape) for a in session.get_inputs()
            )
            outputs = tuple(
                TensorSpec.from_ort(a.name, a.type, a.shape) for a in session.get_outputs()
            )
        except Exception as e:
            if source.data is not None and source.other_files:
                raise LoadError(
                    f"{label} does not load from memory: {e}. With cache_key_file set the"
                    f" agent loads models from decrypted bytes and cannot read the"
                    f" {source.other_files} other file(s) of the version (ONNX external data)"
                ) from e
            raise LoadError(f"{label} does not load: {e}") from e
        inputs, results = self._warm_up(label, session, inputs)
        for spec, value in zip(outputs, results, strict=True):
            numeric = isinstance(value, np.ndarray) and value.dtype.kind in "fc"
            if numeric and not np.isfinite(value).all():
                raise HealthCheckError(
                    f"{label} fails its health check: output {spec.name} is not finite"
                )
        return LoadedVersion(
            model=model,
            version=version,
            manifest_digest=digest,
            session=session,
            inputs=inputs,
            outputs=outputs,
            loaded_at=datetime.now(UTC),
            platform=PLATFORM,
        )

    def _warm_up(
        self, label: str, session: onnxruntime.InferenceSession, inputs: tuple[TensorSpec, ...]
    ) -> tuple[tuple[TensorSpec, ...], list[Any]]:
        """Run once on zeros. Inputs reported with shape ``[]`` are tried as scalars, then
        as rank 1: onnxruntime reports an undeclared shape as ``[]`` too, and one that
        works at rank 1 is taken to have an unknown rank."""
        first: Exception | None = None
        for scalar in (True, False):
            feed = {spec.name: synthetic_input(spec, scalar=scalar) for spec in inputs}
            try:
                results = session.run(None, feed, self._run_options)
            except Exception as e:
                first = first or e
                if not any(spec.shape == () for spec in inputs):
                    break
                continue
            if not scalar:
                inputs = tuple(
                    TensorSpec(s.name, s.datatype, None) if s.shape == () else s for s in inputs
                )
            return inputs, results
        raise LoadError(f"{label} fails its warm-up run: {first}") from first


class _Metrics:
    def __init__(self, r: Registry) -> None:
        self.loads = r.counter("skiff_edge_model_loads_total", "Model version loads by result.")
        self.swaps = r.counter("skiff_edge_model_swaps_total", "Changes of the version served.")
        self.failures = r.counter(
            "skiff_edge_inference_failures_total", "Inference runs that raised."
        )
        self.latency = r.histogram("skiff_edge_inference_seconds", "Model run time.")


def _timed_run(
    session: onnxruntime.InferenceSession,
    names: list[str],
    inputs: dict[str, np.ndarray],
    options: onnxruntime.RunOptions,
) -> tuple[list[Any], float]:
    """Run in an inference thread; returns the outputs and the run's CPU seconds.

    CPU time of this thread, not wall time: waiting for the interpreter lock or a core
    says nothing about the model (and with one intra-op thread, the run is this thread).
    """
    started = time.thread_time()
    values = session.run(names, inputs, options)
    return values, time.thread_time() - started


def _signature(args: list[Any]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec.from_ort(a.name, a.type, a.shape) for a in args)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _malloc_trim()


def _release(evicted: list[LoadedVersion]) -> None:
    # Dropping the last references frees the session (no cycle holds it, so no full
    # gc.collect(), which would hold the GIL and stall requests for tens of ms). glibc keeps
    # freed arenas mapped; trimming hands a destroyed session's memory back to the system.
    evicted.clear()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _log_release_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("Releasing an evicted session failed: %s", future.exception())
