"""Signed fleet states: what every device of a fleet must serve.

A fleet's state is recomputed inside the transaction of any change that can alter it
(alias move or deletion, assignment, retirement, rollout step) and re-signed with the
next serial only when its content changed — or when it nears expiry, so that devices
never see a lapsed state from a healthy registry.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from central.services.signing import Signer
from central.stores.sqlite import SqliteStore, Transaction
from central.stores.sqlite_fleets import Assignment
from shared.canonical import canonical_json
from shared.rollout import RolloutPlan
from shared.timeutil import format_time, parse_time, utcnow

logger = logging.getLogger(__name__)

SPEC_VERSION = "1.0"


def _targets(assignments: list[Assignment]) -> dict[str, Any]:
    """The models a fleet serves: each assigned model whose alias names a live version."""
    models: dict[str, Any] = {}
    for a in assignments:
        if a.version is None or a.manifest is None or a.stage == "retired":
            continue
        models[a.model] = {
            "version": a.version,
            "alias": a.alias,
            "manifest_digest": a.manifest_digest,
            "manifest_size": len(canonical_json(a.manifest)),
        }
    return models


async def _plans(tx: Transaction, fleet_id: int, models: dict[str, Any]) -> dict[str, Any]:
    """The rollout plan of every running or paused rollout whose model the fleet serves."""
    plans: dict[str, Any] = {}
    for r in await tx.active_rollouts(fleet_id):
        candidate = await tx.get_version(r.model, r.candidate)
        if r.model not in models or candidate is None:
            continue
        plans[r.model] = RolloutPlan(
            id=r.id,
            strategy=r.strategy,
            candidate_version=candidate.version,
            candidate_digest=candidate.manifest_digest,
            candidate_size=len(canonical_json(candidate.manifest)),
            percent=r.percent,
            sticky_header=r.sticky_header,
        ).to_dict()
    return plans


class FleetStates:
    """Computes and signs fleet states inside the caller's transaction."""

    def __init__(self, signer: Signer, *, expiry_seconds: int) -> None:
        self._signer = signer
        self.expiry = timedelta(seconds=expiry_seconds)

    def use(self, signer: Signer) -> None:
        self._signer = signer

    async def refresh(
        self,
        tx: Transaction,
        fleet_id: int,
        *,
        force: bool = False,
        signer: Signer | None = None,
    ) -> int | None:
        """Re-sign the fleet's state if its content changed (or ``force``); the new serial."""
        fleet = await tx.get_fleet_by_id(fleet_id)
        latest = await tx.latest_state(fleet_id)
        models = _targets(await tx.assignments(fleet_id))
        rollouts = await _plans(tx, fleet_id, models)
        if latest is not None and not force:
            signed = latest.envelope["signed"]
            if signed["models"] == models and signed.get("rollouts", {}) == rollouts:
                return None
        serial = 1 if latest is None else latest.serial + 1
        now = utcnow()
        expires = format_time(now + self.expiry)
        signed = {
            "_type": "fleet_state",
            "spec_version": SPEC_VERSION,
            "fleet": fleet,
            "serial": serial,
            "expires": expires,
            "models": models,
            "rollouts": rollouts,
        }
        envelope = (signer or self._signer).sign(signed)
        await tx.insert_state(fleet_id, serial, envelope, expires, format_time(now))
        await tx.append_change("fleet_state.updated", data={"fleet": fleet, "serial": serial})
        logger.info("Fleet %s state serial %d: %d model(s)", fleet, serial, len(models))
        return serial

    async def refresh_model(self, tx: Transaction, model_id: int) -> None:
        """Refresh every fleet that the model is assigned to."""
        for fleet_id in await tx.fleets_of_model(model_id):
            await self.refresh(tx, fleet_id)


async def keep_fresh(store: SqliteStore, states: FleetStates, interval: float) -> None:
    """Re-sign every fleet state that has used half its validity (runs until cancelled)."""
    while True:
        try:
            for state in await store.latest_states():
                remaining = parse_time(state.expires_at) - utcnow()
                if remaining < states.expiry / 2:
                    async with store.transaction() as tx:
                        await states.refresh(tx, state.fleet_id, force=True)
        except Exception:
            logger.exception("Re-signing fleet states failed")
        await asyncio.sleep(interval)
