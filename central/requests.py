"""Request bodies of the HTTP API, validated while constructing.

Each ``from_dict`` raises :class:`InvalidInputError` naming the offending field, so a
service never sees a malformed command.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from central.domain import STAGES
from shared.digest import is_digest
from shared.drift import parse_reference
from shared.errors import FormatError, InvalidInputError
from shared.names import validate_name
from shared.semver import SemVer

_TAG_KEY = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")
_MODEL_PATTERN = re.compile(r"^[a-z0-9._*?-]{1,128}$")  # a glob: same in fnmatch and GLOB
_METADATA_SECTIONS = ("training", "provenance", "deployment", "extra")
MAX_FILES = 10_000


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{what} must be a JSON object")
    return value


def _str(value: Any, what: str, *, max_len: int = 4096) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidInputError(f"{what} must be a string of at most {max_len} characters")
    return value


def _opt_str(d: Mapping[str, Any], key: str, what: str, max_len: int = 4096) -> str | None:
    value = d.get(key)
    return None if value is None else _str(value, what, max_len=max_len)


def _known(d: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(d) - allowed
    if unknown:
        raise InvalidInputError(f"unknown field(s) in {what}: {', '.join(sorted(unknown))}")


def parse_tags(value: Any, what: str = "tags") -> dict[str, str]:
    tags = _obj(value if value is not None else {}, what)
    if len(tags) > 256:
        raise InvalidInputError(f"{what}: at most 256 tags")
    out = {}
    for k, v in tags.items():
        validate_name(k, f"tag key in {what}")
        out[k] = _str(v, f"tag {k!r}", max_len=1024)
    return out


def _metrics(value: Any) -> dict[str, float | int]:
    out = {}
    for k, v in _obj(value, "metadata.training.metrics").items():
        if not _TAG_KEY.match(k):
            raise InvalidInputError(f"invalid metric name {k[:64]!r}")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise InvalidInputError(f"metric {k!r} must be a finite number, got {v!r}")
        out[k] = v
    return out


def parse_metadata(value: Any) -> dict[str, Any]:
    """The four metadata sections (metrics as numbers, params as strings), and an optional
    ``reference`` distribution of the input features."""
    meta = _obj(value if value is not None else {}, "metadata")
    _known(meta, {*_METADATA_SECTIONS, "reference"}, "metadata")
    training = dict(_obj(meta.get("training", {}), "metadata.training"))
    params = {
        k: _str(v if isinstance(v, str) else str(v), f"param {k!r}", max_len=4096)
        for k, v in _obj(training.get("params", {}), "metadata.training.params").items()
    }
    datasets = training.get("datasets", [])
    if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
        raise InvalidInputError("metadata.training.datasets must be a list of strings")
    training.update(params=params, metrics=_metrics(training.get("metrics", {})), datasets=datasets)
    out: dict[str, Any] = {"training": training}
    for section in _METADATA_SECTIONS[1:]:
        out[section] = dict(_obj(meta.get(section, {}), f"metadata.{section}"))
    if meta.get("reference") is not None:
        out["reference"] = _reference(meta["reference"])
    return out


def _reference(value: Any) -> dict[str, Any]:
    """The binned reference distribution of the input features (docs/drift.md)."""
    try:
        features = parse_reference(value)
    except FormatError as e:
        raise InvalidInputError(f"metadata.reference: {e}") from e
    return {
        "features": {name: bins.to_dict() for name, bins in features.items()},
        "rows": value["rows"],
    }


@dataclass(frozen=True, slots=True)
class FileRef:
    path: str
    digest: str


@dataclass(frozen=True, slots=True)
class RegisterVersion:
    model: str
    files: tuple[FileRef, ...]
    version: str | None = None
    branch: str = "main"
    parent: str | None = None
    description: str = ""
    stage: str = "development"
    tags: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, model: str, d: Any) -> RegisterVersion:
        d = _obj(d, "request body")
        _known(
            d,
            {
                "model",
                "version",
                "branch",
                "parent",
                "description",
                "stage",
                "tags",
                "files",
                "metadata",
            },
            "version registration",
        )
        validate_name(model)
        version = _opt_str(d, "version", "version", 256)
        if version is not None:
            SemVer.parse(version)
        parent = _opt_str(d, "parent", "parent", 256)
        if parent is not None:
            SemVer.parse(parent)
        stage = d.get("stage", "development")
        if stage not in STAGES:
            raise InvalidInputError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        return cls(
            model=model,
            files=_files(d.get("files")),
            version=version,
            branch=validate_name(d.get("branch", "main"), "branch name"),
            parent=parent,
            description=_str(d.get("description", ""), "description", max_len=65536),
            stage=stage,
            tags=parse_tags(d.get("tags")),
            metadata=parse_metadata(d.get("metadata")),
        )


def _files(value: Any) -> tuple[FileRef, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidInputError("files must be a non-empty list of {path, digest}")
    if len(value) > MAX_FILES:
        raise InvalidInputError(f"at most {MAX_FILES} files per version")
    out = []
    for i, f in enumerate(value):
        f = _obj(f, f"files[{i}]")
        path = _str(f.get("path"), f"files[{i}].path", max_len=1024)
        digest = f.get("digest")
        if not is_digest(digest):
            raise InvalidInputError(f"files[{i}].digest must be 'sha256:<64 hex>', got {digest!r}")
        out.append(FileRef(path, str(digest)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ModelFields:
    description: str | None
    tags: dict[str, str] | None

    @classmethod
    def from_dict(cls, d: Any, *, allow_name: bool) -> ModelFields:
        d = _obj(d, "request body")
        _known(
            d, {"name", "description", "tags"} if allow_name else {"description", "tags"}, "model"
        )
        return cls(
            description=_opt_str(d, "description", "description", 65536),
            tags=None if d.get("tags") is None else parse_tags(d["tags"], "model tags"),
        )


@dataclass(frozen=True, slots=True)
class CreateToken:
    name: str
    role: str
    expires_in: int | None
    models: tuple[str, ...] | None

    @classmethod
    def from_dict(cls, d: Any) -> CreateToken:
        d = _obj(d, "request body")
        _known(d, {"name", "role", "expires_in", "models"}, "token")
        expires = d.get("expires_in")
        if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int)):
            raise InvalidInputError("expires_in must be a whole number of seconds")
        models = d.get("models")
        if models is not None and (
            not isinstance(models, list) or not all(isinstance(m, str) for m in models)
        ):
            raise InvalidInputError("models must be a list of model-name patterns")
        if models is not None and (
            not 1 <= len(models) <= 100 or not all(_MODEL_PATTERN.match(m) for m in models)
        ):
            raise InvalidInputError(
                "models must hold 1 to 100 model-name patterns of [a-z0-9._-] with * and ?"
            )
        return cls(
            name=_str(d.get("name"), "name", max_len=128),
            role=_str(d.get("role"), "role", max_len=32),
            expires_in=expires,
            models=None if models is None else tuple(models),
        )


def required_str(d: Any, key: str, max_len: int = 256) -> str:
    """One required string field of a small JSON body (alias target, stage)."""
    d = _obj(d, "request body")
    if key not in d:
        raise InvalidInputError(f"missing field '{key}'")
    return _str(d[key], key, max_len=max_len)
