"""The central application: wiring of stores, services and routes, and the server loop."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator

from aiohttp import web

from central.api.keys import (
    ALIASES,
    APPROVALS,
    AUDIT,
    BLOBS,
    CHANGES,
    COMPLIANCE,
    CONFIG,
    DRIFT,
    FEED,
    FLEET_STATES,
    FLEETS,
    KEYS,
    METRICS,
    REGISTRY,
    ROLLOUTS,
    SEARCH,
    SEARCH_INDEX,
    STORE,
    SYNC,
    TELEMETRY,
    THROTTLE,
    TOKENS,
    WEBHOOK_DELIVERY,
    WEBHOOKS,
)
from central.api.middleware import authenticate, errors, observe
from central.api.routes import setup_routes
from central.api.throttle import AuthThrottle
from central.config import CentralConfig
from central.services.aliases import AliasService
from central.services.approvals import ApprovalService
from central.services.audit import AuditService, keep_checkpoints
from central.services.blobs import BlobService
from central.services.changes import ChangeService
from central.services.compliance import ComplianceService
from central.services.drift import DriftService, Thresholds, keep_checking
from central.services.feed import ChangeFeed
from central.services.fleets import FleetService
from central.services.fleetstate import FleetStates, keep_fresh
from central.services.keys import KeyService, finish_rotation
from central.services.policy import load_policy
from central.services.registry import RegistryService
from central.services.rollouts import RolloutService
from central.services.search import SearchService
from central.services.searchindex import SearchIndexer
from central.services.signing import Signer
from central.services.sync import SyncService
from central.services.telemetry import TelemetryService
from central.services.tokens import TokenService
from central.services.webhook_delivery import WebhookDispatcher
from central.services.webhooks import WebhookService
from central.stores.blobs import LocalBlobStore
from central.stores.encrypted import EncryptedBlobStore
from central.stores.masterkey import MasterKey, load_master_key
from central.stores.sqlite import SqliteStore
from shared import aio, logs
from shared.errors import InvalidInputError, NotFoundError
from shared.metrics import Registry as MetricsRegistry
from shared.systemd import sd_notify, watchdog

logger = logging.getLogger(__name__)

GIL_SWITCH_SECONDS = 0.0005  # the longest a thread keeps the GIL when another waits


async def _storage(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if not config.db_path.exists():
        raise NotFoundError(
            f"{config.data_dir} is not an initialised registry: run 'skiff central init' first"
        )
    master = None
    if config.encryption == "on":  # a missing key stops the start before anything is opened
        master = await asyncio.to_thread(load_master_key, config.master_key_path, os.environ)
    store = SqliteStore(config.db_path, durability=config.durability)
    blob_store: LocalBlobStore | None = None
    try:
        await store.open()
        blob_store = await _blob_store(config, store, master)
        await blob_store.open()
        await _wire(app, store, blob_store)
        yield
    finally:
        if blob_store is not None:
            await blob_store.close()
        await store.close()


async def _blob_store(
    config: CentralConfig, store: SqliteStore, master: MasterKey | None
) -> LocalBlobStore:
    """The blob store the ``encryption`` setting chooses (docs/encryption.md)."""
    if master is not None:
        return EncryptedBlobStore(
            config.blob_dir, store, master, segment_size=config.encryption_segment_bytes
        )
    if await store.blob_key_counts():
        raise InvalidInputError(
            'blob files here are encrypted at rest: set encryption = "on" and the master key'
        )
    return LocalBlobStore(config.blob_dir)


async def _wire(app: web.Application, store: SqliteStore, blob_store: LocalBlobStore) -> None:
    """Build the services over the open stores and put them on the app."""
    config = app[CONFIG]
    root = await store.get_root()
    if root is not None:
        await asyncio.to_thread(finish_rotation, config.key_dir, root)
    signer = await asyncio.to_thread(Signer.from_key_dir, config.key_dir)
    blobs = BlobService(
        store, blob_store, level=config.zstd_level, max_upload=config.max_upload_bytes
    )
    states = FleetStates(signer, expiry_seconds=config.fleet_state_expiry_seconds)
    feed = ChangeFeed(store, interval=config.alias_cache_refresh_seconds)
    sync = SyncService(store, feed)
    aliases = AliasService(store, states)
    feed.subscribe(aliases.on_change)
    dispatcher = WebhookDispatcher(
        store,
        max_attempts=config.webhook_max_attempts,
        timeout=config.webhook_timeout_seconds,
        concurrency=config.webhook_concurrency,
        metrics=app[METRICS],
    )
    feed.subscribe(dispatcher.on_change)
    app[WEBHOOKS] = WebhookService(store)
    app[WEBHOOK_DELIVERY] = dispatcher
    blobs.device_access = sync.may_download
    app[STORE] = store
    app[BLOBS] = blobs
    app[TOKENS] = TokenService(store)
    feed.subscribe(app[TOKENS].on_change)
    app[REGISTRY] = RegistryService(
        store, blobs, signer, states, max_model_bytes=config.max_upload_bytes
    )
    app[ALIASES] = aliases
    policy = await asyncio.to_thread(load_policy, config.policy_path)
    compliance = ComplianceService(policy, store)
    app[REGISTRY].sensitive_paths = policy.sensitive
    app[COMPLIANCE] = compliance
    app[APPROVALS] = ApprovalService(store, app[REGISTRY], aliases, compliance)
    search_index = SearchIndexer(store)
    blobs.catch_up_index = search_index.catch_up
    feed.subscribe(search_index.on_change)
    app[SEARCH_INDEX] = search_index
    app[SEARCH] = SearchService(store, search_index)
    app[CHANGES] = ChangeService(store)
    app[FLEET_STATES] = states
    app[FLEETS] = FleetService(store, blob_store, states)
    app[KEYS] = KeyService(
        store, config.key_dir, signer, states, root_expiry_days=config.root_expiry_days
    )
    app[KEYS].root_file = config.data_dir / "root.json"
    app[FEED] = feed
    app[SYNC] = sync
    app[TELEMETRY] = TelemetryService(store, sync)
    app[DRIFT] = DriftService(
        store,
        Thresholds(
            config.drift_psi_warn,
            config.drift_psi_alert,
            config.drift_ks_alert,
            config.drift_min_samples,
        ),
        window_seconds=config.drift_window_seconds,
    )
    app[ROLLOUTS] = RolloutService(store, states, aliases)
    app[ROLLOUTS].drift = app[DRIFT]
    app[ROLLOUTS].approvals = app[APPROVALS]
    app[AUDIT] = AuditService(store, signer, search_index)
    await app[AUDIT].start()
    await feed.start()
    await sync.start()


async def _background(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    tasks = [
        asyncio.create_task(app[FEED].run(), name="change-feed"),
        asyncio.create_task(
            keep_fresh(app[STORE], app[FLEET_STATES], config.fleet_state_check_seconds),
            name="fleet-state-refresh",
        ),
        asyncio.create_task(
            keep_checkpoints(app[AUDIT], config.audit_checkpoint_seconds),
            name="audit-checkpoints",
        ),
        asyncio.create_task(app[WEBHOOK_DELIVERY].run(), name="webhook-delivery"),
        asyncio.create_task(app[SEARCH_INDEX].run(), name="search-index"),
        asyncio.create_task(
            keep_checking(app[DRIFT], config.drift_check_seconds), name="drift-check"
        ),
        asyncio.create_task(app[ROLLOUTS].run(config.rollout_check_seconds), name="rollout-judge"),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await _final_checkpoint(app)


async def _final_checkpoint(app: web.Application) -> None:
    """Sign the head of the audit log on the way out, so a cut tail shows at once."""
    try:
        await app[AUDIT].checkpoint()
    except Exception:
        logger.exception("Signing the final audit checkpoint failed")


async def _release_long_polls(app: web.Application) -> None:
    app[SYNC].close()


def make_app(config: CentralConfig) -> web.Application:
    app = web.Application(
        middlewares=[observe, errors, authenticate],
        client_max_size=config.max_json_bytes,
    )
    app[CONFIG] = config
    app[METRICS] = MetricsRegistry()
    app[THROTTLE] = AuthThrottle(
        limit=config.auth_failure_limit, window=config.auth_failure_window_seconds
    )
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_release_long_polls)
    setup_routes(app)
    return app


async def serve(config: CentralConfig, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, then drain in-flight requests and close the stores."""
    runner = web.AppRunner(
        make_app(config),
        access_log=None,
        shutdown_timeout=config.shutdown_timeout_seconds,
        auto_decompress=False,  # blob uploads handle Content-Encoding: zstd themselves
    )
    context = config.ssl_context()  # before setup: a bad certificate stops the start
    await runner.setup()
    host, port = config.host_port()
    try:
        await web.TCPSite(runner, host, port, ssl_context=context).start()
        scheme = "http" if context is None else "https"
        logger.info(
            "Central serving %s on %s://%s:%d (%s event loop)",
            config.data_dir,
            scheme,
            host,
            port,
            aio.loop_name(),
        )
        # What start-up built (modules, services, routes) lives as long as the process:
        # keep it out of the collector's full passes, which would walk it on every one.
        gc.collect()
        gc.freeze()
        sd_notify("READY=1")
        pinger = asyncio.create_task(watchdog(), name="watchdog")
        await stop.wait()
        sd_notify("STOPPING=1")
        logger.info("Stopping: draining in-flight requests")
        pinger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pinger
    finally:
        await runner.cleanup()
    logger.info("Central stopped")


def run(config: CentralConfig) -> None:
    """Entry point of ``skiff central serve``: serve until SIGTERM or SIGINT."""
    logs.configure(config.log_level)
    # `kill -USR2 <pid>` writes every thread's stack to stderr: what a stuck central waits for.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    # The event loop gives up the GIL in every socket call and commit; a worker thread
    # (reads, checkpoints, the search index) that takes it then keeps it until it blocks
    # or the switch interval ends. 5 ms by default, that is several requests' time.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    aio.run(main())
