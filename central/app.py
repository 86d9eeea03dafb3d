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
    METRICS,
    REGISTRY,
    SEARCH,
    STORE,
    TOKENS,
)
from central.api.middleware import authenticate, errors, observe
from central.api.routes import setup_routes
from central.config import CentralConfig
from central.services.aliases import AliasService
from central.services.blobs import BlobService
from central.services.changes import ChangeService
from central.services.registry import RegistryService
from central.services.search import SearchService
from central.services.signing import Signer
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
    app[STORE] = store
    app[BLOBS] = blobs
    app[TOKENS] = TokenService(store)
    app[REGISTRY] = RegistryService(store, blobs, signer, max_model_bytes=config.max_upload_bytes)
    app[ALIASES] = AliasService(store)
    app[SEARCH] = SearchService(store)
    app[CHANGES] = ChangeService(store)
    try:
        yield
    finally:
        await blob_store.close()
        await store.close()


async def _background(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(
        app[ALIASES].follow_changes(app[CONFIG].alias_cache_refresh_seconds),
        name="alias-cache",
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_app(config: CentralConfig) -> web.Application:
    app = web.Application(
        middlewares=[observe, errors, authenticate],
        client_max_size=config.max_json_bytes,
    )
    app[CONFIG] = config
    app[METRICS] = MetricsRegistry()
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(_background)
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
