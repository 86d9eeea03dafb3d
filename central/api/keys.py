"""Typed keys of the application and request state."""

from __future__ import annotations

from aiohttp import web

from central.api.throttle import AuthThrottle
from central.config import CentralConfig
from central.domain import Actor
from central.services.aliases import AliasService
from central.services.approvals import ApprovalService
from central.services.audit import AuditService
from central.services.blobs import BlobService
from central.services.changes import ChangeService
from central.services.compliance import ComplianceService
from central.services.drift import DriftService
from central.services.feed import ChangeFeed
from central.services.fleets import FleetService
from central.services.fleetstate import FleetStates
from central.services.keys import KeyService
from central.services.registry import RegistryService
from central.services.rollouts import RolloutService
from central.services.search import SearchService
from central.services.searchindex import SearchIndexer
from central.services.sync import SyncService
from central.services.telemetry import TelemetryService
from central.services.tokens import TokenService
from central.services.webhook_delivery import WebhookDispatcher
from central.services.webhooks import WebhookService
from central.stores.sqlite import SqliteStore
from shared.metrics import Registry as MetricsRegistry

CONFIG = web.AppKey("config", CentralConfig)
STORE = web.AppKey("store", SqliteStore)
REGISTRY = web.AppKey("registry", RegistryService)
ALIASES = web.AppKey("aliases", AliasService)
BLOBS = web.AppKey("blobs", BlobService)
SEARCH = web.AppKey("search", SearchService)
SEARCH_INDEX = web.AppKey("search_index", SearchIndexer)
TOKENS = web.AppKey("tokens", TokenService)
CHANGES = web.AppKey("changes", ChangeService)
METRICS = web.AppKey("metrics", MetricsRegistry)
FEED = web.AppKey("feed", ChangeFeed)
FLEET_STATES = web.AppKey("fleet_states", FleetStates)
FLEETS = web.AppKey("fleets", FleetService)
SYNC = web.AppKey("sync", SyncService)
TELEMETRY = web.AppKey("telemetry", TelemetryService)
DRIFT = web.AppKey("drift", DriftService)
ROLLOUTS = web.AppKey("rollouts", RolloutService)
KEYS = web.AppKey("keys", KeyService)
APPROVALS = web.AppKey("approvals", ApprovalService)
COMPLIANCE = web.AppKey("compliance", ComplianceService)
AUDIT = web.AppKey("audit", AuditService)
THROTTLE = web.AppKey("throttle", AuthThrottle)
WEBHOOKS = web.AppKey("webhooks", WebhookService)
WEBHOOK_DELIVERY = web.AppKey("webhook_delivery", WebhookDispatcher)

ACTOR = web.RequestKey("actor", Actor)
REQUEST_ID = web.RequestKey("request_id", str)
