"""Phased rollouts: canary steps or an A/B split, judged by edge telemetry.

A rollout puts a plan into its fleet's signed state (re-signed in the same
transaction). A background evaluation compares the candidate's telemetry with the
baseline's since the current step began: a failing rule rolls back at once; a passing
step advances after its soak time; passing the last step promotes (the alias the fleet
follows moves to the candidate). Every decision is recorded, audited and appears in the
change log as ``rollout.*`` (so webhooks carry it).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from central.domain import SYSTEM, Actor
from central.services.aliases import AliasService
from central.services.approvals import ApprovalService
from central.services.drift import DriftService
from central.services.fleetstate import FleetStates
from central.services.permissions import MANAGE_FLEETS, READ, require
from central.services.telemetry import summarize
from central.stores.sqlite import SqliteStore, Transaction
from central.stores.sqlite_rollouts import RolloutRow
from shared.errors import ConflictError, InvalidInputError, NotFoundError, SkiffError
from shared.names import validate_name
from shared.rollout import AB, CANARY
from shared.semver import SemVer
from shared.timeutil import format_time, parse_time, utcnow

logger = logging.getLogger(__name__)

DEFAULT_RULES: dict[str, Any] = {
    "min_requests": 100,  # candidate requests in a step before it is judged
    "max_error_rate_increase": 0.02,  # candidate error rate minus baseline's, absolute
    "max_error_rate": None,  # absolute bound on the candidate's error rate
    "max_p95_ratio": 1.5,  # candidate p95 latency / baseline p95 latency
    "max_drift_psi": None,  # largest PSI of any input feature of the candidate (reference)
    "bounds": {},  # custom bounds: {metric: {"min"?, "max"?}} on the candidate's metrics
}
# Metrics that custom bounds can name: error_rate, p50_ms, p95_ms, p99_ms,
# class_share:<label> (share of requests predicting the label), psi:<feature>.
BOUND_METRICS = ("error_rate", "p50_ms", "p95_ms", "p99_ms")
BOUND_PREFIXES = ("class_share:", "psi:")


@dataclass(frozen=True, slots=True)
class StartRollout:
    model: str
    fleet: str
    candidate: str
    baseline: str | None
    strategy: str
    steps: tuple[int, ...]
    soak_seconds: float
    sticky_header: str | None
    rules: dict[str, Any]

    @classmethod
    def from_dict(cls, d: Any) -> StartRollout:
        if not isinstance(d, dict):
            raise InvalidInputError("request body must be a JSON object")
        strategy = d.get("strategy", CANARY)
        if strategy not in (CANARY, AB):
            raise InvalidInputError(f"strategy must be 'canary' or 'ab', got {strategy!r}")
        if strategy == AB:
            split = d.get("split")
            if not isinstance(split, int) or isinstance(split, bool) or not 0 < split < 100:
                raise InvalidInputError("an A/B rollout needs split: the candidate's percent 1..99")
            steps: tuple[int, ...] = (split,)
        else:
            raw = d.get("steps", [5, 25, 50, 100])
            if (
                not isinstance(raw, list)
                or not raw
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in raw)
                or any(not 0 < s <= 100 for s in raw)
                or list(raw) != sorted(set(raw))
            ):
                raise InvalidInputError("steps must be increasing percents in 1..100")
            steps = tuple(raw)
        soak = d.get("soak_seconds", 600)
        if (
            isinstance(soak, bool)
            or not isinstance(soak, int | float)
            or not 0 <= soak <= 7 * 86400
        ):
            raise InvalidInputError("soak_seconds must be 0..604800")
        rules = {**DEFAULT_RULES, **_rules(d.get("rules", {}))}
        header = d.get("sticky_header")
        if header is not None and (not isinstance(header, str) or not 0 < len(header) <= 128):
            raise InvalidInputError("sticky_header must be a header name")
        for key in ("candidate", "baseline"):
            if d.get(key) is not None:
                SemVer.parse(str(d[key]))
        if not isinstance(d.get("candidate"), str):
            raise InvalidInputError("missing field 'candidate'")
        return cls(
            model=validate_name(str(d.get("model"))),
            fleet=validate_name(str(d.get("fleet")), "fleet name"),
            candidate=d["candidate"],
            baseline=d.get("baseline"),
            strategy=strategy,
            steps=steps,
            soak_seconds=float(soak),
            sticky_header=header,
            rules=rules,
        )


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and value >= 0


def _rules(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) - set(DEFAULT_RULES):
        raise InvalidInputError(f"rules: a JSON object with keys from {sorted(DEFAULT_RULES)}")
    for key, v in value.items():
        if key == "bounds":
            _bounds(v)
        elif v is not None and not _number(v):
            raise InvalidInputError(f"rule {key} must be a non-negative number or null")
    return dict(value)


def _bounds(value: Any) -> None:
    if not isinstance(value, dict) or len(value) > 64:
        raise InvalidInputError("rules.bounds: an object of at most 64 metrics")
    for metric, bound in value.items():
        if metric not in BOUND_METRICS and not metric.startswith(BOUND_PREFIXES):
            raise InvalidInputError(
                f"rules.bounds: unknown metric {metric!r:.60}; use {', '.join(BOUND_METRICS)}, "
                "class_share:<label> or psi:<feature>"
            )
        if (
            not isinstance(bound, dict)
            or not bound
            or set(bound) - {"min", "max"}
            or not all(_number(v) for v in bound.values())
        ):
            raise InvalidInputError(f'rules.bounds.{metric:.60}: {{"min"?, "max"?}} numbers')


def candidate_metrics(cand: dict[str, Any], drift: dict[str, Any] | None) -> dict[str, float]:
    """The candidate's metrics that rules and bounds can name."""
    found: dict[str, float] = {}
    if cand["error_rate"] is not None:
        found["error_rate"] = cand["error_rate"]
    for q in ("p50", "p95", "p99"):
        if cand["latency_ms"][q] is not None:
            found[f"{q}_ms"] = cand["latency_ms"][q]
    total = sum(cand["classes"].values())
    for label, n in cand["classes"].items():
        found[f"class_share:{label}"] = n / total if total else 0.0
    for feature, f in (drift or {}).items():
        if f.get("psi") is not None and f.get("live_n", 0) > 0:
            found[f"psi:{feature}"] = f["psi"]
    return found


def judge(
    rules: dict[str, Any],
    cand: dict[str, Any],
    base: dict[str, Any],
    drift: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Verdicts of every rule: ``pass``, ``fail`` or ``wait`` (not enough data yet)."""
    minimum = int(rules["min_requests"])
    verdicts: list[dict[str, Any]] = []

    def add(rule: str, verdict: str, detail: str) -> None:
        verdicts.append({"rule": rule, "verdict": verdict, "detail": detail})

    if cand["requests"] < minimum:
        add("min_requests", "wait", f"candidate has {cand['requests']} of {minimum} requests")
        return verdicts
    add("min_requests", "pass", f"candidate has {cand['requests']} requests")
    rate = cand["error_rate"] or 0.0
    if rules["max_error_rate"] is not None:
        ok = rate <= rules["max_error_rate"]
        add(
            "max_error_rate",
            "pass" if ok else "fail",
            f"candidate error rate {rate:.4f} (max {rules['max_error_rate']})",
        )
    if base["requests"] >= minimum:
        increase = rate - (base["error_rate"] or 0.0)
        limit = rules["max_error_rate_increase"]
        if limit is not None:
            add(
                "max_error_rate_increase",
                "pass" if increase <= limit else "fail",
                f"error rate {rate:.4f} vs baseline {base['error_rate'] or 0:.4f} "
                f"(+{increase:.4f}, max +{limit})",
            )
        c95, b95, limit = (
            cand["latency_ms"]["p95"],
            base["latency_ms"]["p95"],
            rules["max_p95_ratio"],
        )
        if limit is not None and c95 is not None and b95:
            ratio = c95 / b95
            add(
                "max_p95_ratio",
                "pass" if ratio <= limit else "fail",
                f"p95 {c95:.2f} ms vs baseline {b95:.2f} ms ({ratio:.2f}x, max {limit}x)",
            )
    metrics = candidate_metrics(cand, drift)
    if rules.get("max_drift_psi") is not None:
        worst = max((v for k, v in metrics.items() if k.startswith("psi:")), default=None)
        if worst is None:
            add("max_drift_psi", "wait", "no drift measured yet (reference data and inputs)")
        else:
            ok = worst <= rules["max_drift_psi"]
            add(
                "max_drift_psi",
                "pass" if ok else "fail",
                f"largest input PSI {worst:.3f} (max {rules['max_drift_psi']})",
            )
    for metric, bound in (rules.get("bounds") or {}).items():
        value = metrics.get(metric)
        if value is None:
            add(f"bounds.{metric}", "wait", f"{metric} not measured yet")
            continue
        low, high = bound.get("min"), bound.get("max")
        ok = (low is None or value >= low) and (high is None or value <= high)
        add(
            f"bounds.{metric}",
            "pass" if ok else "fail",
            f"{metric} = {value:.4g} (bounds {low if low is not None else '-'}"
            f"..{high if high is not None else '-'})",
        )
    return verdicts


class RolloutService:
    """Starts, steers and judges rollouts."""

    def __init__(self, store: SqliteStore, states: FleetStates, aliases: AliasService) -> None:
        self._store = store
        self._states = states
        self._aliases = aliases
        self._lock = asyncio.Lock()
        self.drift: DriftService | None = None  # set by the app: candidate drift for rules
        self.approvals: ApprovalService | None = None  # set by the app: policy on promotion

    async def start(self, actor: Actor, spec: StartRollout) -> dict[str, Any]:
        require(actor, MANAGE_FLEETS, spec.model)
        now = format_time(utcnow())
        async with self._store.transaction() as tx:
            fleet = await tx.get_fleet(spec.fleet)
            if fleet is None:
                raise NotFoundError(f"fleet {spec.fleet} does not exist")
            assignment = next(
                (a for a in await tx.assignments(fleet.id) if a.model == spec.model), None
            )
            if assignment is None or assignment.version is None:
                raise ConflictError(f"fleet {spec.fleet} does not serve {spec.model}")
            baseline = spec.baseline or assignment.version
            if baseline != assignment.version:
                raise ConflictError(
                    f"baseline {baseline} is not what {spec.fleet} serves ({assignment.version})"
                )
            if await tx.get_version(spec.model, spec.candidate) is None:
                raise NotFoundError(f"version {spec.model}@{spec.candidate} does not exist")
            if spec.candidate == baseline:
                raise ConflictError("the candidate is already what the fleet serves")
            if any(r.model == spec.model for r in await tx.active_rollouts(fleet.id)):
                raise ConflictError(f"{spec.model} already has an active rollout on {spec.fleet}")
            row = RolloutRow(
                id="ro_" + secrets.token_hex(6),
                model=spec.model,
                fleet=spec.fleet,
                fleet_id=fleet.id,
                candidate=spec.candidate,
                baseline=baseline,
                strategy=spec.strategy,
                steps=list(spec.steps),
                step=0,
                sticky_header=spec.sticky_header,
                soak_seconds=spec.soak_seconds,
                rules=spec.rules,
                status="running",
                reason=None,
                step_started_at=now,
                created_by=actor.name,
                created_at=now,
                updated_at=now,
            )
            await tx.insert_rollout(row)
            await self._record(tx, actor, row, "started", {"percent": row.percent}, now)
            await self._states.refresh(tx, fleet.id)
        logger.info(
            "Rollout %s of %s@%s on %s started (%s)",
            row.id,
            spec.model,
            spec.candidate,
            spec.fleet,
            spec.strategy,
        )
        return await self.show(actor, row.id)

    async def _record(
        self,
        tx: Transaction,
        actor: Actor,
        row: RolloutRow,
        kind: str,
        detail: dict[str, Any],
        at: str,
    ) -> None:
        data = {
            "id": row.id,
            "fleet": row.fleet,
            "candidate": row.candidate,
            "baseline": row.baseline,
            **detail,
        }
        await tx.add_rollout_event(row.id, kind, detail, at)
        await tx.append_change(f"rollout.{kind}", model=row.model, version=row.candidate, data=data)
        await tx.append_audit(
            actor=actor.name, role=actor.role, action=f"rollout.{kind}", target=row.id, detail=data
        )

    async def _get(self, rollout_id: str) -> RolloutRow:
        row = await self._store.get_rollout(rollout_id)
        if row is None:
            raise NotFoundError(f"rollout {rollout_id} does not exist")
        return row

    async def show(self, actor: Actor, rollout_id: str) -> dict[str, Any]:
        require(actor, READ)
        row = await self._get(rollout_id)
        cand, base = await self._stats(row)
        drift = await self._drift(row)
        verdicts = judge(row.rules, cand, base, drift) if row.status == "running" else []
        started = parse_time(row.step_started_at)
        return {
            "id": row.id,
            "model": row.model,
            "fleet": row.fleet,
            "strategy": row.strategy,
            "candidate": row.candidate,
            "baseline": row.baseline,
            "status": row.status,
            "reason": row.reason,
            "steps": row.steps,
            "step": row.step,
            "percent": row.percent,
            "sticky_header": row.sticky_header,
            "soak_seconds": row.soak_seconds,
            "rules": row.rules,
            "step_started_at": row.step_started_at,
            "next_decision_at": format_time(started + timedelta(seconds=row.soak_seconds))
            if row.status == "running"
            else None,
            "versions": {row.candidate: cand, row.baseline: base},
            "drift": drift,
            "verdicts": verdicts,
            "events": row.events,
            "created_by": row.created_by,
            "created_at": row.created_at,
        }

    async def list_all(
        self, actor: Actor, *, fleet: str | None, model: str | None, status: str | None
    ) -> list[dict[str, Any]]:
        require(actor, READ)
        rows = await self._store.list_rollouts(fleet=fleet, model=model, status=status)
        return [
            {
                "id": r.id,
                "model": r.model,
                "fleet": r.fleet,
                "strategy": r.strategy,
                "candidate": r.candidate,
                "baseline": r.baseline,
                "status": r.status,
                "percent": r.percent,
                "step": r.step,
                "updated_at": r.updated_at,
            }
            for r in rows
        ]

    async def _drift(self, row: RolloutRow) -> dict[str, Any] | None:
        """Per input feature drift of the candidate in the fleet since the step began."""
        if self.drift is None:
            return None
        try:
            report = await self.drift.report(
                SYSTEM, row.model, row.candidate, fleet=row.fleet, since=row.step_started_at
            )
        except NotFoundError:
            return None  # no reference data: nothing to compare with
        features: dict[str, Any] = report["features"]
        return features

    async def _stats(self, row: RolloutRow) -> tuple[dict[str, Any], dict[str, Any]]:
        since = row.step_started_at
        cand = await self._store.telemetry_windows(
            row.model, row.candidate, fleet=row.fleet, since=since
        )
        base = await self._store.telemetry_windows(
            row.model, row.baseline, fleet=row.fleet, since=since
        )
        return summarize(cand), summarize(base)

    # steering

    async def pause(self, actor: Actor, rollout_id: str) -> dict[str, Any]:
        return await self._transition(actor, rollout_id, "paused", ("running",), "paused")

    async def resume(self, actor: Actor, rollout_id: str) -> dict[str, Any]:
        return await self._transition(actor, rollout_id, "running", ("paused",), "resumed")

    async def abort(
        self, actor: Actor, rollout_id: str, reason: str | None = None
    ) -> dict[str, Any]:
        return await self._transition(
            actor,
            rollout_id,
            "aborted",
            ("running", "paused", "awaiting_approval"),
            "aborted",
            reason=reason or "aborted by " + actor.name,
        )

    async def promote(self, actor: Actor, rollout_id: str) -> dict[str, Any]:
        require(actor, MANAGE_FLEETS)
        async with self._lock:
            row = await self._get(rollout_id)
            if row.status not in ("running", "paused"):
                raise ConflictError(f"rollout {rollout_id} is {row.status}")
            await self._promote(actor, row, "promoted by " + actor.name)
        return await self.show(actor, rollout_id)

    async def _transition(
        self,
        actor: Actor,
        rollout_id: str,
        status: str,
        allowed: tuple[str, ...],
        kind: str,
        *,
        reason: str | None = None,
    ) -> dict[str, Any]:
        require(actor, MANAGE_FLEETS)
        async with self._lock:
            row = await self._get(rollout_id)
            if row.status not in allowed:
                raise ConflictError(
                    f"rollout {rollout_id} is {row.status}; {kind} needs {' or '.join(allowed)}"
                )
            now = format_time(utcnow())
            async with self._store.transaction() as tx:
                # resuming starts the step's soak again: judge only what happens from now
                started = now if status == "running" else row.step_started_at
                await tx.update_rollout(
                    row.id,
                    status=status,
                    step=row.step,
                    step_started_at=started,
                    reason=reason,
                    at=now,
                )
                await self._record(tx, actor, row, kind, {"reason": reason}, now)
                await self._states.refresh(tx, row.fleet_id)
        return await self.show(actor, rollout_id)

    async def _promote(self, actor: Actor, row: RolloutRow, reason: str) -> str:
        """Move the fleet's alias to the candidate — through an approval where the policy
        governs that alias — and say what happened (``promoted`` or ``awaiting_approval``)."""
        gate = await self._approval_gate(row)
        if gate is not None:
            await self._await_approval(row, gate)
            return row.status if row.status == "paused" else "awaiting_approval"
        await self._move_alias(actor, row, reason)
        return "promoted"

    async def _approval_gate(self, row: RolloutRow) -> dict[str, Any] | None:
        """The readiness report when the policy puts approval on the alias this fleet follows."""
        if self.approvals is None:
            return None
        assignment = next(
            (a for a in await self._store.assignments(row.fleet_id) if a.model == row.model), None
        )
        ready = await self.approvals.readiness(SYSTEM, row.model, row.candidate, "production")
        if assignment is None or not ready["needs_approval"]:
            return None
        return ready if ready.get("move_alias") == assignment.alias else None

    async def _await_approval(self, row: RolloutRow, ready: dict[str, Any]) -> None:
        """Open (or reuse) the request that moves the candidate to production and the alias."""
        assert self.approvals is not None
        now = format_time(utcnow())
        pending = ready["pending_request"]
        status, kind = "awaiting_approval", "awaiting_approval"
        try:
            if pending is None:
                outcome = await self.approvals.set_stage(
                    SYSTEM, row.model, row.candidate, "production"
                )
                pending = None if outcome.request is None else outcome.request.to_dict()
            reason = (
                f"waiting for approval request {pending['id']} (policy on the alias)"
                if pending is not None
                else "applied without waiting"
            )
        except SkiffError as e:  # e.g. the candidate is not one step from production
            status, kind, reason = "paused", "paused", f"promotion needs approval, but {e}"
        async with self._store.transaction() as tx:
            await tx.update_rollout(
                row.id,
                status=status,
                step=row.step,
                step_started_at=row.step_started_at,
                reason=reason,
                at=now,
            )
            await self._record(tx, SYSTEM, row, kind, {"reason": reason}, now)
            await self._states.refresh(tx, row.fleet_id)
        logger.info("Rollout %s %s: %s", row.id, status, reason)

    async def _settle_approval(self, row: RolloutRow) -> str:
        """Finish a rollout awaiting approval once the request was decided."""
        assignment = next(
            (a for a in await self._store.assignments(row.fleet_id) if a.model == row.model), None
        )
        if assignment is not None and assignment.version == row.candidate:
            now = format_time(utcnow())
            async with self._store.transaction() as tx:
                await tx.update_rollout(
                    row.id,
                    status="promoted",
                    step=row.step,
                    step_started_at=row.step_started_at,
                    reason="approved: the alias moved to the candidate",
                    at=now,
                )
                await self._record(tx, SYSTEM, row, "promoted", {"reason": "approved"}, now)
                await self._states.refresh(tx, row.fleet_id)
            return "promoted"
        assert self.approvals is not None
        ready = await self.approvals.readiness(SYSTEM, row.model, row.candidate, "production")
        if ready["pending_request"] is None:
            await self._rollback(row, "the promotion's approval request was rejected or expired")
            return "rolled_back"
        return "awaiting_approval"

    async def _move_alias(self, actor: Actor, row: RolloutRow, reason: str) -> None:
        now = format_time(utcnow())
        async with self._store.transaction() as tx:
            fleet_assignment = next(
                (a for a in await tx.assignments(row.fleet_id) if a.model == row.model), None
            )
            candidate = await tx.get_version(row.model, row.candidate)
            if fleet_assignment is None or candidate is None:
                raise ConflictError(f"rollout {row.id} can no longer be promoted")
            await tx.update_rollout(
                row.id,
                status="promoted",
                step=row.step,
                step_started_at=row.step_started_at,
                reason=reason,
                at=now,
            )
            await self._record(tx, actor, row, "promoted", {"reason": reason}, now)
            # moving the alias re-signs every fleet that follows it, this one included
            await self._aliases.move_in(
                tx, actor, row.model, fleet_assignment.alias, candidate.id, "promote"
            )
            await self._states.refresh(tx, row.fleet_id)
        logger.info("Rollout %s promoted %s@%s", row.id, row.model, row.candidate)

    async def _rollback(self, row: RolloutRow, reason: str) -> None:
        now = format_time(utcnow())
        async with self._store.transaction() as tx:
            await tx.update_rollout(
                row.id,
                status="rolled_back",
                step=row.step,
                step_started_at=row.step_started_at,
                reason=reason,
                at=now,
            )
            await self._record(tx, SYSTEM, row, "rolled_back", {"reason": reason}, now)
            await self._states.refresh(tx, row.fleet_id)
        logger.warning("Rollout %s rolled back: %s", row.id, reason)

    async def _advance(self, row: RolloutRow) -> None:
        now = format_time(utcnow())
        step = row.step + 1
        async with self._store.transaction() as tx:
            await tx.update_rollout(
                row.id, status="running", step=step, step_started_at=now, reason=None, at=now
            )
            await self._record(
                tx, SYSTEM, row, "advanced", {"step": step, "percent": row.steps[step]}, now
            )
            await self._states.refresh(tx, row.fleet_id)
        logger.info("Rollout %s advanced to %d%%", row.id, row.steps[step])

    # judging

    async def evaluate(self, rollout_id: str) -> str:
        """Judge one running rollout now; what was decided."""
        async with self._lock:
            row = await self._get(rollout_id)
            if row.status == "awaiting_approval":
                return await self._settle_approval(row)
            if row.status != "running":
                return "idle"
            cand, base = await self._stats(row)
            verdicts = judge(row.rules, cand, base, await self._drift(row))
            failed = [v for v in verdicts if v["verdict"] == "fail"]
            if failed:
                await self._rollback(row, "; ".join(f"{v['rule']}: {v['detail']}" for v in failed))
                return "rolled_back"
            if any(v["verdict"] == "wait" for v in verdicts):
                return "wait"
            elapsed = (utcnow() - parse_time(row.step_started_at)).total_seconds()
            if elapsed < row.soak_seconds:
                return "soak"
            if row.step + 1 < len(row.steps):
                await self._advance(row)
                return "advanced"
            return await self._promote(SYSTEM, row, "every step passed")

    async def run(self, interval: float) -> None:
        """Judge every running rollout every ``interval`` seconds (until cancelled)."""
        while True:
            await asyncio.sleep(interval)
            try:
                for row in await self._store.running_rollouts():
                    await self.evaluate(row.id)
            except Exception:
                logger.exception("Evaluating rollouts failed")
