"""The edge agent daemon: wiring, the HTTP server, sd_notify and a clean stop.

Start order matters for offline-first: the cache is reconciled and what it holds is
served *before* the first sync is attempted, so a device with no network answers
inference requests within about a second plus model load time.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import signal
import ssl
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
from aiohttp import web

import shared
from edge_agent.agent import Agent
from edge_agent.cache import Cache
from edge_agent.cache_key import read_cache_key
from edge_agent.config import EdgeConfig
from edge_agent.fetcher import Fetcher
from edge_agent.inference_api import setup_inference_routes
from edge_agent.sideload import Sideloader
from edge_agent.slots import SlotManager
from edge_agent.sync import SyncClient
from edge_agent.telemetry import TelemetryRecorder
from shared import aio, logs
from shared.metrics import Registry as MetricsRegistry
from shared.systemd import sd_notify, watchdog
from shared.tls import client_context, server_context

logger = logging.getLogger(__name__)

STOP_TASKS_SECONDS = 5.0  # how long a stop waits for the background tasks to end
AGENT = web.AppKey("agent", Agent)
SYNC = web.AppKey("sync", SyncClient)
METRICS = web.AppKey("metrics", MetricsRegistry)
TELEMETRY = web.AppKey("telemetry", TelemetryRecorder)


async def status(request: web.Request) -> web.Response:
    agent, sync = request.app[AGENT], request.app[SYNC]
    state = agent.trusted.fleet_state
    body: dict[str, Any] = {
        "slots": agent.slots.status(),
        "fleet": agent.trusted.fleet,
        "fleet_serial": None if state is None else state.serial,
        "fleet_state_expires": None if state is None else state.expires.isoformat(),
        "root_version": agent.trusted.root.version,
        "cursor": await agent.cache.cursor(),
        "last_contact": await agent.cache.last_contact(),
        "connected": sync.connected,
        "cache_bytes": await agent.cache.usage(),
        "bad_versions": await agent.cache.bad_versions(),
        "errors": list(agent.errors),
        "version": shared.__version__,
        "telemetry": {
            "uploaded_batches": request.app[TELEMETRY].uploaded,
            "dropped_batches": request.app[TELEMETRY].dropped,  # outbox full: oldest dropped
        },
    }
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS]
    agent, sync = request.app[AGENT], request.app[SYNC]
    registry.gauge("skiff_edge_cache_bytes", "Bytes of verified blobs in the cache").set(
        await agent.cache.usage()
    )
    registry.gauge("skiff_edge_sync_errors", "Failed sync rounds since start").set(sync.sync_errors)
    registry.gauge("skiff_edge_connected", "1 when the last sync reached central").set(
        1 if sync.connected else 0
    )
    return web.Response(text=registry.render(), content_type="text/plain")


def _connector(config: EdgeConfig) -> aiohttp.TCPConnector:
    if config.ca_file is not None:
        return aiohttp.TCPConnector(ssl=client_context(config.ca_file))
    return aiohttp.TCPConnector()


def _server_context(config: EdgeConfig) -> ssl.SSLContext | None:
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    return server_context(config.tls_cert_file, config.tls_key_file)


async def serve(config: EdgeConfig, stop: asyncio.Event) -> None:
    """Run the agent until ``stop`` is set; then drain requests and close everything."""
    await asyncio.to_thread(config.data_dir.mkdir, parents=True, exist_ok=True)
    registry = MetricsRegistry()
    device_key = None
    if config.cache_key_file is not None:
        device_key = await asyncio.to_thread(read_cache_key, config.cache_key_file)
    cache = await Cache.open(
        config.data_dir, budget_bytes=config.cache_budget_bytes, device_key=device_key
    )
    slots = SlotManager(inference_threads=config.inference_threads, metrics=registry)
    agent = Agent(
        fleet=config.fleet,
        root_envelope=config.root_envelope(),
        cache=cache,
        slots=slots,
        device_id=config.device_id,
    )
    telemetry = TelemetryRecorder(cache, max_batches=config.telemetry_outbox_max_batches)
    slots.observer = telemetry.observe
    agent.on_loaded = telemetry.set_reference
    await agent.restore()
    session = aiohttp.ClientSession(connector=_connector(config))
    fetcher = Fetcher(
        session, config.central_url, config.token, timeout=config.request_timeout_seconds
    )
    sync = SyncClient(config, fetcher, agent)
    agent.on_change = sync.report_now.set
    app = web.Application()
    app[AGENT], app[SYNC], app[METRICS] = agent, sync, registry
    app[TELEMETRY] = telemetry
    setup_inference_routes(
        app, slots, ready=lambda: agent.started, max_body_bytes=config.max_request_bytes
    )
    app.router.add_get("/skiff/status", status)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10.0)
    await runner.setup()
    host, port = config.host_port()
    context = _server_context(config)
    await web.TCPSite(runner, host, port, ssl_context=context).start()
    agent.started = True
    # What start-up built lives as long as the process: keep it out of the collector's
    # full passes, which the request path would otherwise pay for now and then.
    gc.collect()
    gc.freeze()
    logger.info(
        "Edge agent %s serving on %s://%s:%d (fleet %s, %s event loop)",
        config.device_id,
        "http" if context is None else "https",
        host,
        port,
        config.fleet,
        aio.loop_name(),
    )
    sideloader = Sideloader(
        config.sideload_path, agent, fallback=sync.fetch, max_json_bytes=config.max_metadata_bytes
    )
    tasks = [
        asyncio.create_task(sync.run(), name="sync"),
        asyncio.create_task(sync.report_loop(), name="report"),
        asyncio.create_task(
            telemetry.run(fetcher, config.device_id, config.telemetry_interval_seconds),
            name="telemetry",
        ),
        asyncio.create_task(sideloader.run(stop), name="sideload"),
        asyncio.create_task(watchdog(), name="watchdog"),
    ]
    sd_notify("READY=1")
    try:
        await stop.wait()
    finally:
        sd_notify("STOPPING=1")
        logger.info("Stopping: draining in-flight requests")
        for task in tasks:
            task.cancel()
        _, stuck = await asyncio.wait(tasks, timeout=STOP_TASKS_SECONDS)
        for task in stuck:  # logged with where it waits, then left behind
            logger.warning(
                "Task %s did not stop within %.0f s; it waits in %s",
                task.get_name(),
                STOP_TASKS_SECONDS,
                " <- ".join(map(_where, reversed(task.get_stack()))),
            )
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                logger.debug("Task %s ended with %r", task.get_name(), task.exception())
        await runner.cleanup()  # stops accepting, lets running requests finish
        await session.close()
        await slots.close()
        await cache.close()
        logger.info("Edge agent stopped")


def _where(frame: FrameType) -> str:
    return f"{frame.f_code.co_qualname} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})"


def run(config: EdgeConfig) -> None:
    """Entry point of ``skiff edge run``: serve until SIGTERM or SIGINT."""
    logs.configure(config.log_level)

    # `kill -USR2 <pid>` writes every thread's stack to stderr: what a stuck agent waits for.
    faulthandler.register(signal.SIGUSR2, all_threads=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    aio.run(main())
