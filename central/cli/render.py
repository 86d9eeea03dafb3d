"""Text renderings of the API's records (models, versions, aliases, tokens, changes).

Each function takes the JSON record as central sends it and returns text for
people; missing keys render as ``-`` so that older or newer servers still print.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from central.cli.output import fields, format_bytes, table

__all__ = [
    "render_alias",
    "render_aliases",
    "render_changes",
    "render_history",
    "render_model",
    "render_models",
    "render_search",
    "render_signature",
    "render_tokens",
    "render_version",
    "render_versions",
]

Record = Mapping[str, Any]


def render_models(items: Sequence[Record]) -> str:
    rows = [
        (
            m.get("name"),
            m.get("latest_version"),
            m.get("version_count"),
            m.get("aliases"),
            m.get("updated_at"),
            m.get("description"),
        )
        for m in items
    ]
    return table(("name", "latest", "versions", "aliases", "updated", "description"), rows)


def render_model(m: Record) -> str:
    return fields(
        [
            ("name", m.get("name")),
            ("description", m.get("description")),
            ("owner", m.get("owner")),
            ("tags", m.get("tags")),
            ("latest version", m.get("latest_version")),
            ("versions", m.get("version_count")),
            ("aliases", m.get("aliases")),
            ("created", m.get("created_at")),
            ("updated", m.get("updated_at")),
        ]
    )


def render_versions(items: Sequence[Record]) -> str:
    rows = [
        (
            v.get("version"),
            v.get("branch"),
            v.get("stage"),
            v.get("format"),
            v.get("aliases"),
            render_signature(v.get("signature")),
            v.get("created_at"),
        )
        for v in items
    ]
    headers = ("version", "branch", "stage", "format", "aliases", "signature", "created")
    return table(headers, rows)


def render_search(items: Sequence[Record]) -> str:
    rows = [
        (
            v.get("model"),
            v.get("version"),
            v.get("stage"),
            v.get("format"),
            _training(v).get("metrics"),
            v.get("created_at"),
        )
        for v in items
    ]
    return table(("model", "version", "stage", "format", "metrics", "created"), rows)


def render_version(v: Record) -> str:
    training = _training(v)
    head = fields(
        [
            ("model", v.get("model")),
            ("version", v.get("version")),
            ("branch", v.get("branch")),
            ("parent", v.get("parent")),
            ("format", v.get("format")),
            ("stage", v.get("stage")),
            ("aliases", v.get("aliases")),
            ("description", v.get("description")),
            ("owner", v.get("owner")),
            ("tags", v.get("tags")),
            ("metrics", training.get("metrics")),
            ("params", training.get("params")),
            ("datasets", training.get("datasets")),
            ("created", v.get("created_at")),
            ("manifest", v.get("manifest_digest")),
        ]
    )
    files = [
        (f.get("path"), _size(f.get("size")), _size(f.get("zsize")), f.get("digest"))
        for f in v.get("files") or []
    ]
    parts = [head, "", "signature: " + render_signature(v.get("signature"))]
    parts += ["", table(("file", "size", "compressed", "digest"), files)]
    return "\n".join(parts)


def render_signature(signature: Any) -> str:
    """``X:FP32[3,2] -> Y:FP32[3,2]``, or ``-`` for formats without one."""
    if not isinstance(signature, Mapping):
        return "-"
    inputs = ", ".join(_tensor(t) for t in signature.get("inputs") or [])
    outputs = ", ".join(_tensor(t) for t in signature.get("outputs") or [])
    return f"{inputs or '()'} -> {outputs or '()'}"


def render_alias(a: Record) -> str:
    return f"{a.get('model')}@{a.get('alias')} -> {a.get('version')}"


def render_aliases(items: Sequence[Record]) -> str:
    rows = [(a.get("alias"), a.get("version"), a.get("updated_at")) for a in items]
    return table(("alias", "version", "updated"), rows)


def render_history(items: Sequence[Record]) -> str:
    rows = [
        (h.get("at"), h.get("action"), h.get("version"), h.get("previous"), h.get("actor"))
        for h in items
    ]
    return table(("at", "action", "version", "previous", "actor"), rows)


def render_tokens(items: Sequence[Record]) -> str:
    rows = [
        (t.get("id"), t.get("name"), t.get("role"), t.get("created_at"), t.get("expires_at"))
        for t in items
    ]
    return table(("id", "name", "role", "created", "expires"), rows)


def render_changes(items: Sequence[Record]) -> str:
    rows = [
        (c.get("seq"), c.get("at"), c.get("kind"), c.get("model"), c.get("version"), c.get("alias"))
        for c in items
    ]
    return table(("seq", "at", "kind", "model", "version", "alias"), rows)


def _training(v: Record) -> Record:
    metadata = v.get("metadata")
    training = metadata.get("training") if isinstance(metadata, Mapping) else None
    return training if isinstance(training, Mapping) else {}


def _tensor(t: Any) -> str:
    if not isinstance(t, Mapping):
        return str(t)
    shape = t.get("shape")
    dims = "[" + ",".join(str(d) for d in shape) + "]" if isinstance(shape, list) else ""
    return f"{t.get('name')}:{t.get('datatype')}{dims}"


def _size(n: Any) -> str:
    return format_bytes(n) if isinstance(n, int) else "-"
