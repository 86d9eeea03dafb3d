"""The central application: wiring of stores, services and routes, and the server loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from central.api.keys import (
    ALIASES,
    BLOBS,
    CHANGES,
    CONFIG,
    FEED,
    FLEET_STATES,
    FLEETS,
    METRICS,
    REGISTRY,
    SEARCH,
    STORE,
    SYNC,
    TOKENS,
)
from central.api.middleware import authenticate, errors, observe
from central.api.routes import setup_routes
from central.config import CentralConfig
from central.services.aliases import AliasService
from central.services.blobs import BlobService
from central.services.changes import ChangeService
from central.services.feed import ChangeFeed
from central.services.fleets import FleetService
from central.services.fleetstate import FleetStates, keep_fresh
from central.services.registry import RegistryService
from central.services.search import SearchService
from central.services.signing import Signer
from central.services.sync import SyncService
from central.services.tokens import TokenService
from central.stores.blobs import LocalBlobStore
from central.stores.sqlite import SqliteStore
from shared import logs
from shared.errors import NotFoundError
from shared.metrics import Registry as MetricsRegistry

logger = logging.getLogger(__name__)


async def _storage(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if not config.db_path.exists():
        raise NotFoundError(
            f"{config.data_dir} is not an initialised registry: run 'skiff central init' first"
        )
    store = SqliteStore(config.db_path, durability=config.durability)
    blob_store = LocalBlobStore(config.blob_dir)
    await store.open()
    await blob_store.open()
    signer = Signer.from_key_dir(config.key_dir)
    blobs = BlobService(
        store, blob_store, level=config.zstd_level, max_upload=config.max_upload_bytes
    )
    states = FleetStates(signer, expiry_seconds=config.fleet_state_expiry_seconds)
    feed = ChangeFeed(store, interval=config.alias_cache_refresh_seconds)
    sync = SyncService(store, feed)
    aliases = AliasService(store, states)
    feed.subscribe(aliases.on_change)
    blobs.device_access = sync.may_download
    app[STORE] = store
    app[BLOBS] = blobs
    app[TOKENS] = TokenService(store)
    app[REGISTRY] = RegistryService(
        store, blobs, signer, states, max_model_bytes=config.max_upload_bytes
    )
    app[ALIASES] = aliases
    app[SEARCH] = SearchService(store)
    app[CHANGES] = ChangeService(store)
    app[FLEET_STATES] = states
    app[FLEETS] = FleetService(store, blob_store, states)
    app[FEED] = feed
    app[SYNC] = sync
    await feed.start()
    await sync.start()
    try:
        yield
    finally:
        await blob_store.close()
        await store.close()


async def _background(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    tasks = [
        asyncio.create_task(app[FEED].run(), name="change-feed"),
        asyncio.create_task(
            keep_fresh(app[STORE], app[FLEET_STATES], config.fleet_state_check_seconds),
            name="fleet-state-refresh",
        ),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _release_long_polls(app: web.Application) -> None:
    app[SYNC].close()


def make_app(config: CentralConfig) -> web.Application:
    app = web.Application(
        middlewares=[observe, errors, authenticate],
        client_max_size=config.max_json_bytes,
    )
    app[CONFIG] = config
    app[METRICS] = MetricsRegistry()
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_release_long_polls)
    setup_routes(app)
    return app


def run(config: CentralConfig) -> None:
    """Serve until SIGTERM or SIGINT, then drain in-flight requests and stop."""
    logs.configure(config.log_level)
    host, port = config.host_port()
    logger.info("Central serving %s on http://%s:%d", config.data_dir, host, port)
    web.run_app(
        make_app(config),
        host=host,
        port=port,
        shutdown_timeout=config.shutdown_timeout_seconds,
        access_log=None,
        print=None,
        handle_signals=True,
        auto_decompress=False,  # blob uploads handle Content-Encoding: zstd themselves
    )
    logger.info("Central stopped")
