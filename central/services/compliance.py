"""The loaded policy applied to readers: masking of sensitive fields, guarded searches,
and the verdict of a transition for one version.

Masking covers every API answer that carries a version's metadata. It does not cover
what devices receive (sync answers and bundles): their metadata document is covered by
the signed manifest, so a masked copy would not verify. Devices may not read versions
or metadata through the API, only through sync; keep sensitive fields out of what a
device needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from central.domain import Actor, Version
from central.requests import RegisterVersion
from central.services.permissions import MATRIX, READ_SENSITIVE, WRITE, require
from central.services.policy import Policy, Verdict, document_of, mask, mask_version
from central.services.search import parse_filter
from central.stores.sqlite import SqliteStore, Transaction
from shared.errors import ConflictError, ForbiddenError, PolicyViolationError


class ComplianceService:
    """Holds the policy central started with, and applies it to reads."""

    def __init__(self, policy: Policy, store: SqliteStore) -> None:
        self.policy = policy
        self._store = store

    def hidden_paths(self, actor: Actor) -> tuple[str, ...]:
        """The sensitive paths ``actor`` may not read (none for roles with read_sensitive)."""
        if actor.role in MATRIX[READ_SENSITIVE]:
            return ()
        return self.policy.sensitive

    def version(self, actor: Actor, version: Version) -> dict[str, Any]:
        """A version's wire record as ``actor`` may see it."""
        return mask_version(version.to_dict(), self.hidden_paths(actor))

    def versions(self, actor: Actor, page: Mapping[str, Any]) -> dict[str, Any]:
        """A rendered page or batch (``{"items": [...]}``) with every version masked."""
        hidden = self.hidden_paths(actor)
        return {**page, "items": [mask_version(v, hidden) for v in page["items"]]}

    def document(self, actor: Actor, document: Mapping[str, Any]) -> dict[str, Any]:
        """A metadata document as ``actor`` may see it."""
        return mask(document, self.hidden_paths(actor))

    def check_search(self, actor: Actor, text: str, order_by: str) -> None:
        """Refuse filters and orders on sensitive fields to roles that may not read them.

        Raises:
            ForbiddenError: naming the field.
        """
        if not self.hidden_paths(actor):
            return
        fields = [c.field for c in parse_filter(text)] if text.strip() else []
        key = order_by.strip().split()[0] if order_by.strip() else ""
        if key.startswith("metrics."):
            fields.append(key)
        for f in fields:
            path = "training." + f if f.startswith("metrics.") else f
            if not f.startswith(("metrics.", "tags.")):
                continue
            covered = self.policy.sensitive_for(path)
            if covered is not None:
                raise ForbiddenError(
                    f"field {f!r} is sensitive ({covered}); role '{actor.role}' lacks the "
                    f"'{READ_SENSITIVE}' permission needed to search on it"
                )

    async def verdict(
        self, reads: SqliteStore | Transaction, version: Version, target: str
    ) -> Verdict:
        """What moving ``version`` to ``target`` needs: missing fields and approvals."""
        model = await reads.get_model(version.model)
        tag_keys = set(version.tags) | (set(model.tags) if model is not None else set())
        doc = document_of(version.metadata, version.description, version.tags)
        return self.policy.evaluate(version.stage, target, doc, tag_keys)

    async def check_registration(self, actor: Actor, requests: Iterable[RegisterVersion]) -> None:
        """Refuse registering a version straight into a stage the policy guards.

        Raises:
            PolicyViolationError: the stage's required metadata is missing.
            ConflictError: entering the stage needs approval; register in development and
                request the move instead.
        """
        for r in requests:
            require(actor, WRITE, r.model)
            if r.stage == "development":
                continue
            model = await self._store.get_model(r.model)
            tag_keys = set(r.tags) | (set(model.tags) if model is not None else set())
            doc = document_of(r.metadata, r.description, r.tags)
            verdict = self.policy.evaluate(None, r.stage, doc, tag_keys)
            if verdict.missing:
                raise PolicyViolationError(
                    f"{r.model} cannot be registered in {r.stage}: policy "
                    f"({', '.join(verdict.rules)}) requires {', '.join(verdict.missing)}",
                    list(verdict.missing),
                )
            if verdict.approvals:
                raise ConflictError(
                    f"{r.model} cannot be registered straight into {r.stage}: the policy needs "
                    f"{verdict.approvals} approval(s); register it in development and move it"
                )
