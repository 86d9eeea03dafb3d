"""Compliance policy: required metadata, approvals and sensitive fields, from ``policy.toml``.

Pure: parsing, checking and evaluation take documents in and give answers out; the
approval service and the API apply them. The file is read once at start; a bad file
stops central with a message naming the key (or the line, for TOML syntax).

Field paths are dotted paths into a version's metadata document:

- ``training.…``, ``provenance.…``, ``deployment.…``, ``extra.…``: that section;
- ``metrics.x`` means ``training.metrics.x`` and ``params.x`` means ``training.params.x``;
- ``description`` is the version's description, ``tags.x`` its tag ``x``;
- any other path is looked up under ``extra`` (``compliance.level`` is
  ``extra.compliance.level``).
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from central.domain import STAGES
from shared.errors import InvalidInputError

SECTIONS = ("training", "provenance", "deployment", "extra")
MASK = "***"
DEFAULT_EXPIRY_SECONDS = 7 * 24 * 3600
_PATH = re.compile(r"^[A-Za-z0-9_:/-]+(\.[A-Za-z0-9_:/-]+)*$")


def normalize_path(path: str) -> str:
    """The full form of a field path (see the module docstring).

    Raises:
        InvalidInputError: ``path`` is not a dotted path of names.
    """
    if not isinstance(path, str) or not _PATH.match(path) or len(path) > 512:
        raise InvalidInputError(f"invalid field path {path!r}: expected names joined by dots")
    head, _, rest = path.partition(".")
    if head in SECTIONS:
        return path
    if head in ("metrics", "params") and rest:
        return f"training.{path}"
    if head == "description" and not rest:
        return path
    if head == "tags" and rest and "." not in rest:
        return path
    if head in ("description", "tags", "metrics", "params"):
        raise InvalidInputError(f"invalid field path {path!r}: use description, tags.KEY, {head}.X")
    return f"extra.{path}"


def lookup(document: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """``(found, value)`` of a normalized path in a metadata document."""
    node: Any = document
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _present(document: Mapping[str, Any], path: str) -> bool:
    found, value = lookup(document, path)
    return found and value is not None and value != "" and value != [] and value != {}


def mask(document: Mapping[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """A copy of ``document`` with the value at each present path replaced by ``***``."""
    out: dict[str, Any] = copy.deepcopy(dict(document))
    for path in paths:
        *parents, leaf = path.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = MASK
    return out


def document_of(
    metadata: Mapping[str, Any], description: str, tags: Mapping[str, str]
) -> dict[str, Any]:
    """The document paths are resolved against: the sections, description and tags."""
    return {**metadata, "description": description, "tags": dict(tags)}


def mask_version(record: Mapping[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """A version's wire record with its sensitive fields masked."""
    paths = list(paths)
    if not paths:
        return dict(record)
    doc = mask(document_of(record.get("metadata", {}), "", record.get("tags", {})), paths)
    out = {**record, "tags": doc.pop("tags"), "metadata": {k: v for k, v in doc.items()}}
    out["metadata"].pop("description", None)
    if "description" in paths:
        out["description"] = MASK
    return out


@dataclass(frozen=True, slots=True)
class Rule:
    """What a stage or a tag asks of a transition."""

    require: tuple[str, ...] = ()
    approvals: int = 0
    from_stages: tuple[str, ...] | None = None  # transitions that need approval; None = all
    stages: tuple[str, ...] = ("production",)  # tag rules: the target stages they govern


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a transition needs under the policy."""

    target: str
    missing: tuple[str, ...]
    approvals: int
    move_alias: str | None
    rules: tuple[str, ...]  # which policy tables applied, e.g. "stages.production"

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.target,
            "missing": list(self.missing),
            "approvals_required": self.approvals,
            "move_alias": self.move_alias,
            "rules": list(self.rules),
        }


@dataclass(frozen=True, slots=True)
class Policy:
    stages: Mapping[str, Rule] = field(default_factory=dict)
    tags: Mapping[str, Rule] = field(default_factory=dict)
    move_alias: Mapping[str, str] = field(default_factory=dict)  # stage -> alias
    sensitive: tuple[str, ...] = ()
    expiry_seconds: int = DEFAULT_EXPIRY_SECONDS

    def evaluate(
        self,
        current: str | None,
        target: str,
        document: Mapping[str, Any],
        tag_keys: Iterable[str],
    ) -> Verdict:
        """Required fields missing, and approvals needed, to move from ``current`` to ``target``.

        ``current`` None (a version registered straight into ``target``) counts every
        rule's approvals, whatever its ``from``.
        """
        rules: list[tuple[str, Rule]] = []
        if target in self.stages:
            rules.append((f"stages.{target}", self.stages[target]))
        keys = set(tag_keys)
        for tag, rule in sorted(self.tags.items()):
            if tag in keys and target in rule.stages:
                rules.append((f"tags.{tag}", rule))
        required: dict[str, None] = {}
        approvals = 0
        for _, rule in rules:
            required.update(dict.fromkeys(rule.require))
            if rule.from_stages is None or current is None or current in rule.from_stages:
                approvals = max(approvals, rule.approvals)
        missing = tuple(p for p in required if not _present(document, p))
        return Verdict(
            target, missing, approvals, self.move_alias.get(target), tuple(n for n, _ in rules)
        )

    def sensitive_for(self, path: str) -> str | None:
        """The declared sensitive path that covers ``path`` (itself or a parent), if any."""
        for s in self.sensitive:
            if path == s or path.startswith(s + "."):
                return s
        return None


DEFAULT_POLICY = Policy(stages={"production": Rule(approvals=1)})


class _Reader:
    """Checks one table of the file, naming the offending key in every error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> InvalidInputError:
        return InvalidInputError(f"{self.source}: {key}: {problem}")

    def table(self, value: Any, key: str, allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(key, "must be a table")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(
                f"{key}.{unknown[0]}" if key else unknown[0],
                f"unknown key; allowed: {', '.join(sorted(allowed))}",
            )
        return value

    def paths(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise self.fail(key, "must be a list of field paths")
        try:
            return tuple(dict.fromkeys(normalize_path(p) for p in value))
        except InvalidInputError as e:
            raise self.fail(key, str(e)) from e

    def stages(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or any(s not in STAGES for s in value):
            raise self.fail(key, f"must be a non-empty list of stages ({', '.join(STAGES)})")
        return tuple(value)

    def count(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise self.fail(key, f"must be a whole number 0..100, got {value!r}")
        return value

    def rule(self, value: Any, key: str, *, tag: bool) -> tuple[Rule, str | None]:
        allowed = {"require", "approvals", "from"} | ({"stages"} if tag else {"move_alias"})
        t = self.table(value, key, allowed)
        alias = t.get("move_alias")
        if alias is not None and (not isinstance(alias, str) or not _PATH.match(alias)):
            raise self.fail(f"{key}.move_alias", "must be an alias name")
        rule = Rule(
            require=self.paths(t.get("require", []), f"{key}.require"),
            approvals=self.count(t.get("approvals", 0), f"{key}.approvals"),
            from_stages=None if "from" not in t else self.stages(t["from"], f"{key}.from"),
            stages=self.stages(t.get("stages", ["production"]), f"{key}.stages"),
        )
        return rule, alias


def parse_policy(text: str, source: str = "policy.toml") -> Policy:
    """Parse and check a policy file's text.

    Raises:
        InvalidInputError: the text is not TOML (the message names the line) or a key is
            unknown or has a bad value (the message names the key).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInputError(f"{source}: {e}") from e
    r = _Reader(source)
    top = r.table(data, "", {"stages", "tags", "sensitive", "request_expiry_seconds"})
    stages: dict[str, Rule] = {}
    aliases: dict[str, str] = {}
    for stage, value in r.table(top.get("stages", {}), "stages", set(STAGES)).items():
        rule, alias = r.rule(value, f"stages.{stage}", tag=False)
        stages[stage] = rule
        if alias:
            aliases[stage] = alias
    tags: dict[str, Rule] = {}
    for tag, value in _mapping(r, top.get("tags", {}), "tags").items():
        if not _PATH.match(tag) or "." in tag:
            raise r.fail(f"tags.{tag}", "invalid tag key")
        tags[tag] = r.rule(value, f"tags.{tag}", tag=True)[0]
    sensitive = r.table(top.get("sensitive", {}), "sensitive", {"fields"})
    expiry = top.get("request_expiry_seconds", DEFAULT_EXPIRY_SECONDS)
    if isinstance(expiry, bool) or not isinstance(expiry, int) or expiry < 1:
        raise r.fail("request_expiry_seconds", f"must be a positive whole number, got {expiry!r}")
    return Policy(
        stages=stages,
        tags=tags,
        move_alias=aliases,
        sensitive=r.paths(sensitive.get("fields", []), "sensitive.fields"),
        expiry_seconds=expiry,
    )


def _mapping(r: _Reader, value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise r.fail(key, "must be a table")
    return value


def load_policy(path: Path) -> Policy:
    """The policy in ``path``, or :data:`DEFAULT_POLICY` when there is no such file.

    Raises:
        InvalidInputError: the file is unreadable or invalid; the message names the file
            and the key or line.
    """
    if not path.exists():
        return DEFAULT_POLICY
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"cannot read policy file {path}: {e}") from e
    return parse_policy(text, str(path))
