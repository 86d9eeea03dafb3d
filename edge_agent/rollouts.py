"""A/B routing of requests that name no version, per the trusted rollout plans."""

from __future__ import annotations

import random
from dataclasses import dataclass

from shared.rollout import RolloutPlan, takes_candidate


@dataclass(frozen=True, slots=True)
class Split:
    plan: RolloutPlan
    baseline: str  # the version the fleet state names


class AbRouter:
    """Sends each request to the candidate or the baseline of its model's A/B plan.

    With a sticky key (the plan's header) the choice is a hash of rollout id and key, so a
    user always meets the same version; without one it is drawn per request.
    """

    def __init__(self) -> None:
        self.splits: dict[str, Split] = {}
        self._random = random.Random()

    def __call__(self, model: str, key: str | None) -> str | None:
        split = self.splits.get(model)
        if split is None:
            return None
        plan = split.plan
        if key is not None:
            candidate = takes_candidate(plan.id, key, plan.percent)
        else:
            candidate = self._random.random() * 100 < plan.percent
        return plan.candidate_version if candidate else split.baseline

    def key_header(self, model: str) -> str | None:
        split = self.splits.get(model)
        return None if split is None else split.plan.sticky_header
