"""Rollout plans as fleet states carry them, and the deterministic assignments.

Canary membership is a function of the rollout id and the device id, monotone in the
percentage (a device in the 5% step stays in at 25%); an A/B request goes to the
candidate by a hash of the rollout id and its sticky key. Both come inside the signed
fleet state, so an offline device keeps following the plan it last verified.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.digest import is_digest
from shared.errors import FormatError

CANARY, AB = "canary", "ab"


def unit_hash(rollout_id: str, key: str) -> float:
    """A number in [0, 1) that depends only on the rollout and the key."""
    digest = hashlib.sha256(f"{rollout_id}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_canary(rollout_id: str, device_id: str, percent: int) -> bool:
    """Whether a device is in a canary that covers ``percent`` % of the fleet."""
    return unit_hash(rollout_id, device_id) * 100 < percent


def takes_candidate(rollout_id: str, key: str, percent: int) -> bool:
    """Whether an A/B request with sticky ``key`` goes to the candidate."""
    return unit_hash(rollout_id, key) * 100 < percent


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """One model's rollout, as the fleet state names it."""

    id: str
    strategy: str
    candidate_version: str
    candidate_digest: str
    candidate_size: int
    percent: int  # canary: share of devices; ab: share of requests to the candidate
    sticky_header: str | None = None

    @classmethod
    def from_dict(cls, d: Any) -> RolloutPlan:
        """Parse a fleet state's ``rollouts[model]`` entry (already signature-verified).

        Raises:
            FormatError: the entry is malformed.
        """
        try:
            if not isinstance(d, Mapping):
                raise TypeError("not an object")
            candidate = d["candidate"]
            plan = cls(
                id=str(d["id"]),
                strategy=str(d["strategy"]),
                candidate_version=str(candidate["version"]),
                candidate_digest=str(candidate["manifest_digest"]),
                candidate_size=int(candidate["manifest_size"]),
                percent=int(d["percent"]),
                sticky_header=None if d.get("sticky_header") is None else str(d["sticky_header"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"malformed rollout plan: {e}") from e
        if plan.strategy not in (CANARY, AB) or not 0 <= plan.percent <= 100:
            raise FormatError(f"malformed rollout plan: {plan.strategy} {plan.percent}%")
        if not is_digest(plan.candidate_digest):
            raise FormatError("malformed rollout plan: candidate manifest digest")
        return plan

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "strategy": self.strategy,
            "candidate": {
                "version": self.candidate_version,
                "manifest_digest": self.candidate_digest,
                "manifest_size": self.candidate_size,
            },
            "percent": self.percent,
            "sticky_header": self.sticky_header,
        }
