"""The policy core: field paths, evaluation of a transition, masking."""

from __future__ import annotations

import pytest

from central.services.policy import (
    DEFAULT_POLICY,
    MASK,
    mask,
    mask_version,
    normalize_path,
    parse_policy,
)
from shared.errors import InvalidInputError


@pytest.mark.parametrize(
    ("path", "full"),
    [
        ("metrics.auc", "training.metrics.auc"),
        ("params.lr", "training.params.lr"),
        ("training.dataset", "training.dataset"),
        ("provenance.code_version", "provenance.code_version"),
        ("description", "description"),
        ("tags.team", "tags.team"),
        ("compliance.data_classification", "extra.compliance.data_classification"),
    ],
)
def test_paths_normalize(path: str, full: str) -> None:
    assert normalize_path(path) == full


@pytest.mark.parametrize("path", ["", "metrics", "tags.a.b", "a..b", "a b", ".x"])
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidInputError):
        normalize_path(path)


def test_evaluate_adds_tag_rules_and_takes_the_highest_approvals() -> None:
    policy = parse_policy(
        """
        [stages.production]
        require = ["metrics.auc"]
        approvals = 1
        move_alias = "production"
        [tags.hipaa]
        require = ["compliance.level"]
        approvals = 2
        """
    )
    doc = {"training": {"metrics": {"auc": 0.9}}, "extra": {"compliance": {"level": ""}}}
    verdict = policy.evaluate("staging", "production", doc, {"hipaa"})
    assert verdict.missing == ("extra.compliance.level",)
    assert verdict.approvals == 2
    assert verdict.move_alias == "production"
    plain = policy.evaluate("staging", "production", doc, set())
    assert (plain.missing, plain.approvals) == ((), 1)
    assert policy.evaluate("development", "training", doc, {"hipaa"}).approvals == 0


def test_from_limits_which_transitions_need_approval() -> None:
    policy = parse_policy('[stages.retired]\napprovals = 1\nfrom = ["production"]\n')
    assert policy.evaluate("production", "retired", {}, ()).approvals == 1
    assert policy.evaluate("staging", "retired", {}, ()).approvals == 0


def test_default_policy_needs_one_approval_for_production_only() -> None:
    assert DEFAULT_POLICY.evaluate("staging", "production", {}, ()).approvals == 1
    assert DEFAULT_POLICY.evaluate("validation", "staging", {}, ()).approvals == 0
    assert DEFAULT_POLICY.sensitive == ()


def test_mask_keeps_keys_and_leaves_the_input_alone() -> None:
    doc = {"provenance": {"lineage": {"a": 1}, "code": "x"}, "tags": {"c": "acme"}}
    out = mask(doc, ["provenance.lineage", "tags.c", "extra.absent"])
    assert out == {"provenance": {"lineage": MASK, "code": "x"}, "tags": {"c": MASK}}
    assert doc["provenance"]["lineage"] == {"a": 1}


def test_mask_version_masks_metadata_tags_and_description() -> None:
    record = {
        "version": "1.0.0",
        "description": "secret plan",
        "tags": {"client": "acme"},
        "metadata": {"extra": {"customer": "acme"}},
    }
    out = mask_version(record, ["description", "tags.client", "extra.customer"])
    assert out["description"] == MASK
    assert out["tags"] == {"client": MASK}
    assert out["metadata"] == {"extra": {"customer": MASK}}
    assert mask_version(record, []) == record


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[stages.production]\nmove_alias = 3\n", "stages.production.move_alias"),
        ("[tags.x]\nstages = ['nowhere']\n", "tags.x.stages"),
        ("[stages.production]\nfrom = []\n", "stages.production.from"),
        ("oops = 1\n", "oops"),
    ],
)
def test_bad_files_name_the_key(text: str, named: str) -> None:
    with pytest.raises(InvalidInputError, match=named.replace(".", r"\.")):
        parse_policy(text)
