"""Lifecycle transitions under the compliance policy, and their approval workflow.

A stage move the policy lets through happens at once. One that needs approval becomes
a request; approvers decide on it. When the count of distinct valid approvals reaches
the number the request requires, the transition happens in the same transaction as
the deciding approval: stage set, change log, the policy's alias moved (which re-signs
the fleet states that follow it), request ``applied``, all audited.

Rules: the requester never approves their own request; an approver counts once; an
approval whose token has been revoked (or has expired) since no longer counts; an
expired request cannot be decided; required metadata is checked both when the
transition is requested and when it is applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from fnmatch import fnmatchcase
from typing import Any

from central.domain import STAGES, Actor, Version
from central.services.aliases import AliasService
from central.services.compliance import ComplianceService
from central.services.permissions import APPROVE, READ, WRITE, require
from central.services.policy import Verdict
from central.services.registry import RegistryService, allowed_stages, check_transition
from central.stores.sqlite import SqliteStore, Transaction
from central.stores.sqlite_approvals import REQUEST_STATUSES, ApprovalRequest
from shared.errors import (
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    PolicyViolationError,
)
from shared.names import validate_name
from shared.semver import SemVer
from shared.timeutil import format_time, utcnow

logger = logging.getLogger(__name__)

MAX_COMMENT = 4096


@dataclass(frozen=True, slots=True)
class StageOutcome:
    """What a stage move did: moved the version, or opened an approval request."""

    version: Version | None = None
    request: ApprovalRequest | None = None


def _violation(v: Version, verdict: Verdict) -> PolicyViolationError:
    return PolicyViolationError(
        f"{v.model}@{v.version} cannot enter {verdict.target}: policy "
        f"({', '.join(verdict.rules)}) requires {', '.join(verdict.missing)}",
        list(verdict.missing),
    )


class ApprovalService:
    """Stage moves, approval requests and decisions."""

    def __init__(
        self,
        store: SqliteStore,
        registry: RegistryService,
        aliases: AliasService,
        compliance: ComplianceService,
    ) -> None:
        self._store = store
        self._registry = registry
        self._aliases = aliases
        self._compliance = compliance

    async def set_stage(self, actor: Actor, model: str, version: str, stage: str) -> StageOutcome:
        """Move ``model@version`` to ``stage``, or open a request if the policy says so."""
        require(actor, WRITE, model)
        if stage not in STAGES:
            raise InvalidInputError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        SemVer.parse(version)
        async with self._store.transaction() as tx:
            v = await self._version(tx, model, version)
            check_transition(v, stage)
            verdict = await self._compliance.verdict(tx, v, stage)
            if verdict.missing:
                raise _violation(v, verdict)
            if verdict.approvals == 0:
                await self._apply(tx, actor, v, verdict, {})
                moved = True
            else:
                request_id = await self._open(tx, actor, v, stage, verdict.approvals)
                moved = False
        if moved:
            self._forget(model, verdict)
            return StageOutcome(version=await self._registry.get_version(actor, model, version))
        return StageOutcome(request=await self._get(request_id))

    async def _open(
        self, tx: Transaction, actor: Actor, v: Version, stage: str, required: int
    ) -> int:
        at = format_time(utcnow())
        pending = await tx.pending_request(v.model, v.version, at)
        if pending is not None:
            raise ConflictError(
                f"{v.model}@{v.version} already has pending request {pending.id} "
                f"({pending.from_stage} -> {pending.to_stage})"
            )
        expires = format_time(utcnow() + timedelta(seconds=self._compliance.policy.expiry_seconds))
        request_id = await tx.insert_request(
            model=v.model,
            version=v.version,
            from_stage=v.stage,
            to_stage=stage,
            requested_by=actor.token_id,
            requester_name=actor.name,
            required=required,
            created_at=at,
            expires_at=expires,
        )
        await tx.append_audit(
            actor=actor.name,
            role=actor.role,
            action="approval.request",
            target=f"{v.model}@{v.version}",
            detail={"request": request_id, "from": v.stage, "to": stage, "required": required},
        )
        logger.info(
            "Request %d: %s@%s %s -> %s needs %d approval(s)",
            request_id,
            v.model,
            v.version,
            v.stage,
            stage,
            required,
        )
        return request_id

    async def approve(self, actor: Actor, request_id: int, comment: str) -> ApprovalRequest:
        """Record ``actor``'s approval; apply the transition once enough approvals count."""
        return await self._decide(actor, request_id, "approve", comment)

    async def reject(self, actor: Actor, request_id: int, reason: str) -> ApprovalRequest:
        """Reject a pending request; it can no longer be approved."""
        if not reason.strip():
            raise InvalidInputError("a rejection needs a reason")
        return await self._decide(actor, request_id, "reject", reason)

    async def _decide(
        self, actor: Actor, request_id: int, decision: str, text: str
    ) -> ApprovalRequest:
        if len(text) > MAX_COMMENT:
            raise InvalidInputError(f"comment or reason longer than {MAX_COMMENT} characters")
        req = await self._get(request_id)
        require(actor, APPROVE, req.model)
        expired = False
        verdict: Verdict | None = None
        async with self._store.transaction() as tx:
            now = format_time(utcnow())
            req = await self._get(request_id, tx)
            if req.status == "expired":
                # record the lapse now; the refusal is raised once this commits
                await tx.expire_requests(now)
                expired = True
            else:
                self._check_decidable(actor, req)
                await tx.insert_decision(req.id, actor.token_id, actor.name, decision, text, now)
                await tx.append_audit(
                    actor=actor.name,
                    role=actor.role,
                    action=f"approval.{decision}",
                    target=f"{req.model}@{req.version}",
                    detail={"request": req.id},
                )
                if decision == "reject":
                    await tx.set_request_status(req.id, "rejected", now, text)
                else:
                    verdict = await self._maybe_apply(tx, actor, await self._get(req.id, tx))
        if expired:
            raise ConflictError(f"request {request_id} expired at {req.expires_at}")
        if verdict is not None:
            self._forget(req.model, verdict)
        return await self._get(request_id)

    @staticmethod
    def _check_decidable(actor: Actor, req: ApprovalRequest) -> None:
        if req.status != "pending":
            raise ConflictError(f"request {req.id} is {req.status}; only pending ones are decided")
        if actor.token_id == req.requested_by:
            raise ForbiddenError(
                f"no self-approval: token '{actor.name}' made request {req.id} and may not "
                "decide on it"
            )
        if any(d.approver == actor.token_id for d in req.decisions):
            raise ConflictError(f"token '{actor.name}' has already decided on request {req.id}")

    async def _maybe_apply(
        self, tx: Transaction, actor: Actor, req: ApprovalRequest
    ) -> Verdict | None:
        """Apply the request if its valid approvals reach the required count."""
        if len(req.approved_by) < req.required:
            return None
        v = await self._version(tx, req.model, req.version)
        if v.stage != req.from_stage:
            raise ConflictError(
                f"{v.model}@{v.version} is now {v.stage}, not {req.from_stage} as requested; "
                f"reject request {req.id} and request again"
            )
        check_transition(v, req.to_stage)
        verdict = await self._compliance.verdict(tx, v, req.to_stage)
        if verdict.missing:
            raise _violation(v, verdict)
        await self._apply(tx, actor, v, verdict, {"request": req.id})
        await tx.set_request_status(req.id, "applied", format_time(utcnow()))
        await tx.append_audit(
            actor=actor.name,
            role=actor.role,
            action="approval.apply",
            target=f"{v.model}@{v.version}",
            detail={"request": req.id, "approvers": req.approved_by},
        )
        logger.info("Request %d applied: %s@%s is %s", req.id, v.model, v.version, req.to_stage)
        return verdict

    async def _apply(
        self,
        tx: Transaction,
        actor: Actor,
        v: Version,
        verdict: Verdict,
        detail: dict[str, object],
    ) -> None:
        await self._registry.apply_stage(tx, actor, v, verdict.target, dict(detail))
        if verdict.move_alias:
            await self._aliases.move_in(tx, actor, v.model, verdict.move_alias, v.id, "set")

    def _forget(self, model: str, verdict: Verdict) -> None:
        if verdict.move_alias:
            self._aliases.forget(model, verdict.move_alias)

    async def get(self, actor: Actor, request_id: int) -> ApprovalRequest:
        req = await self._get(request_id)
        require(actor, READ, req.model)
        return req

    async def list(
        self, actor: Actor, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[ApprovalRequest], str | None]:
        """Requests in id order, optionally of one status; a scoped token sees its models."""
        require(actor, READ)
        if status is not None and status not in REQUEST_STATUSES:
            raise InvalidInputError(
                f"unknown status {status!r}; statuses are {', '.join(REQUEST_STATUSES)}"
            )
        after = _cursor(cursor)
        now = format_time(utcnow())
        out: list[ApprovalRequest] = []
        for _ in range(100):  # bounded: a scoped token may skip pages of other models
            batch = await self._store.list_requests(status, after, limit + 1, now)
            for req in batch:
                if actor.models is None or any(fnmatchcase(req.model, p) for p in actor.models):
                    out.append(req)
            if len(batch) <= limit or len(out) > limit:
                break
            after = batch[-1].id
        more = len(out) > limit
        out = out[:limit]
        return out, str(out[-1].id) if more and out else None

    async def readiness(self, actor: Actor, model: str, version: str, stage: str) -> dict[str, Any]:
        """How ready ``model@version`` is to enter ``stage``: missing fields, approvals."""
        require(actor, READ, model)
        if stage not in STAGES:
            raise InvalidInputError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        v = await self._registry.get_version(actor, model, version)
        verdict = await self._compliance.verdict(self._store, v, stage)
        pending = await self._store.pending_request(model, version, format_time(utcnow()))
        allowed = stage in allowed_stages(v.stage)
        return {
            "model": model,
            "version": version,
            "current_stage": v.stage,
            **verdict.to_dict(),
            "transition_allowed": allowed,
            "allowed_stages": allowed_stages(v.stage),
            "ready": allowed and not verdict.missing,
            "needs_approval": verdict.approvals > 0,
            "pending_request": None if pending is None else pending.to_dict(),
        }

    async def _get(
        self, request_id: int, reads: SqliteStore | Transaction | None = None
    ) -> ApprovalRequest:
        found = await (reads or self._store).get_request(request_id, format_time(utcnow()))
        if found is None:
            raise NotFoundError(f"approval request {request_id} does not exist")
        return found

    @staticmethod
    async def _version(reads: SqliteStore | Transaction, model: str, version: str) -> Version:
        v = await reads.get_version(validate_name(model), version)
        if v is None:
            raise NotFoundError(f"version {model}@{version} does not exist")
        return v


def _cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit() or len(cursor) > 18:
        raise InvalidInputError("invalid cursor")
    return int(cursor)
