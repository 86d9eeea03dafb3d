"""Version search: a small filter language turned into indexed SQL.

``name like 'fraud%' and tags.team = 'risk' and metrics.auc > 0.9`` — clauses joined
with ``and``. Each clause maps to a condition that an index of the store serves (a
sub-select on a covering index or an indexed column); values are always bound.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from central.domain import Actor, Page
from central.services.permissions import READ, require
from central.services.searchindex import SearchIndexer
from central.stores.sqlite import SqliteStore
from shared.errors import InvalidInputError

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^']|'')*'|"(?:[^"]|"")*")
      | (?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
      | (?P<op>[!<>=]+)
      | (?P<word>[A-Za-z_][A-Za-z0-9_.:/-]*)
    )""",
    re.VERBOSE,
)
_COLUMNS = {"stage": "v.stage", "branch": "v.branch", "owner": "v.owner", "format": "v.format"}
_FACETS = {"branch", "owner", "format"}  # in the search index; stage is a versions index
_NUM_OPS = {"=", "!=", ">", ">=", "<", "<="}


@dataclass(frozen=True, slots=True)
class Clause:
    field: str
    op: str
    value: str | float


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise InvalidInputError(f"invalid filter near {text[pos : pos + 30]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _literal(kind: str, raw: str) -> str | float:
    if kind == "str":
        quote = raw[0]
        return raw[1:-1].replace(quote * 2, quote)
    return float(raw)


def parse_filter(text: str) -> list[Clause]:
    """Parse a filter expression into clauses.

    Raises:
        InvalidInputError: the expression is malformed; the message names the clause.
    """
    if len(text) > 4096:
        raise InvalidInputError("filter is longer than 4096 characters")
    tokens = _tokens(text)
    clauses, i = [], 0
    while i < len(tokens):
        part = tokens[i : i + 3]
        shown = " ".join(t[1] for t in part)
        if len(part) < 3 or part[0][0] != "word" or part[2][0] not in ("str", "num"):
            raise InvalidInputError(f"invalid filter clause {shown!r}: expected FIELD OP VALUE")
        (_, field), (op_kind, op), (value_kind, raw) = part
        op = op.lower()
        known = _NUM_OPS if op_kind == "op" else {"like", "contains"}
        if op_kind not in ("op", "word") or op not in known:
            raise InvalidInputError(f"invalid operator {op!r} in clause {shown!r}")
        clauses.append(
            _check(
                Clause(field.lower() if "." not in field else field, op, _literal(value_kind, raw)),
                shown,
            )
        )
        i += 3
        if i < len(tokens):
            if tokens[i][1].lower() != "and" or i + 1 == len(tokens):
                raise InvalidInputError(f"expected 'and' between clauses, got {tokens[i][1]!r}")
            i += 1
    return clauses


def _check(c: Clause, shown: str) -> Clause:
    prefix = c.field.split(".", 1)[0]
    if c.field.startswith("metrics."):
        if c.op not in _NUM_OPS or not isinstance(c.value, float):
            raise InvalidInputError(f"clause {shown!r}: metrics compare with = != > >= < <= NUMBER")
    elif c.field == "name":
        if c.op not in ("=", "like") or not isinstance(c.value, str):
            raise InvalidInputError(f"clause {shown!r}: use name = 'x' or name like 'prefix%'")
        if c.op == "like" and ("%" in c.value[:-1] or "_" in c.value or not c.value.endswith("%")):
            raise InvalidInputError(
                f"clause {shown!r}: only prefix patterns like 'abc%' are served"
            )
    elif c.field == "description":
        if c.op != "contains" or not isinstance(c.value, str):
            raise InvalidInputError(f"clause {shown!r}: use description contains 'text'")
    elif prefix in ("tags", "model_tags") or c.field in _COLUMNS:
        if (
            c.op not in ("=", "!=")
            or not isinstance(c.value, str)
            or ("." not in c.field and (prefix in ("tags", "model_tags")))
        ):
            raise InvalidInputError(f"clause {shown!r}: use {c.field} = 'value'")
    else:
        raise InvalidInputError(
            f"unknown field {c.field!r} in clause {shown!r}; fields: name, stage, branch, "
            "owner, format, description, tags.<key>, model_tags.<key>, metrics.<key>"
        )
    return c


@dataclass(frozen=True, slots=True)
class Query:
    """A filter as SQL: conditions (fixed text), their values, and the facet to walk."""

    where: list[str]
    params: list[Any]
    facet: tuple[str, str] | None  # (field, value) whose entries drive a creation order


def to_sql(
    clauses: list[Clause],
    sorted_metric: str | None = None,
    order: str = "created_at desc",
    common_tags: frozenset[tuple[str, str]] = frozenset(),
) -> Query:
    """The SQL of ``clauses`` for a search in ``order`` (see :func:`parse_order`).

    Stage is an indexed column of the versions. Branch, owner and format equalities are
    served by the search index's ``version_facets``: in a creation order without a stage
    clause, the first of them is walked in id order (the page ends after its rows) and
    the rest are checked on each candidate's row; in a version order each is a subquery
    on the facet; in a metric order, whose index the walk follows, a check.

    A tag equality collects the tag's versions, except in a metric order for the
    ``common_tags`` (key, value) pairs: there each version the walk meets is looked up,
    as collecting thousands of versions would cost more than the walk to a page.
    """
    where: list[str] = []
    params: list[Any] = []
    facet: tuple[str, str] | None = None
    by_stage = any(c.field == "stage" and c.op == "=" for c in clauses)
    for c in clauses:
        if c.field in _FACETS and c.op == "=":
            if facet is None and not by_stage and order.startswith("created_at"):
                facet = (c.field, str(c.value))
            elif order.startswith("version"):
                where.append(
                    "v.id IN (SELECT version_id FROM version_facets WHERE field = ? AND value = ?)"
                )
                params += [c.field, c.value]
            else:
                where.append(f"{_COLUMNS[c.field]} = ?")
                params.append(c.value)
            continue
        if c.field == "name" and c.op == "=":
            where.append("v.model_id = (SELECT id FROM models WHERE name = ?)")
            params.append(c.value)
        elif c.field == "name":
            prefix = str(c.value)[:-1]
            where.append("v.model_id IN (SELECT id FROM models WHERE name >= ? AND name < ?)")
            params += [prefix, prefix + "\U0010ffff"]
        elif c.field == "description":
            where.append("v.id IN (SELECT rowid FROM version_text WHERE version_text MATCH ?)")
            words = re.findall(r"\w+", str(c.value))
            if not words:
                raise InvalidInputError("description contains needs at least one word")
            params.append(" ".join(f'"{w}"' for w in words))
        elif c.field.startswith("metrics.") and c.field.removeprefix("metrics.") == sorted_metric:
            # the order joins this metric already (as sm): filter on the joined row
            where.append(f"sm.value {c.op} ?")
            params.append(c.value)
        elif c.field.startswith("metrics."):
            op = "!=" if c.op == "!=" else c.op
            where.append(
                f"v.id IN (SELECT version_id FROM version_metrics WHERE key = ? AND value {op} ?)"
            )
            params += [c.field.removeprefix("metrics."), c.value]
        elif (
            c.field.startswith("tags.")
            and c.op == "="
            and sorted_metric is not None
            and (c.field.removeprefix("tags."), c.value) in common_tags
        ):
            where.append(
                "EXISTS (SELECT 1 FROM version_tags t WHERE t.version_id = sm.version_id"
                " AND t.key = ? AND t.value = ?)"
            )
            params += [c.field.removeprefix("tags."), c.value]
        elif c.field.startswith(("tags.", "model_tags.")):
            table, column = (
                ("version_tags", "v.id")
                if c.field.startswith("tags.")
                else ("model_tags", "v.model_id")
            )
            owner_col = "version_id" if table == "version_tags" else "model_id"
            neg = "NOT " if c.op == "!=" else ""
            where.append(
                f"{column} {neg}IN (SELECT {owner_col} FROM {table} WHERE key = ? AND value = ?)"
            )
            params += [c.field.split(".", 1)[1], c.value]
        else:  # stage, or != on a facet
            where.append(f"{_COLUMNS[c.field]} {'=' if c.op == '=' else '!='} ?")
            params.append(c.value)
    return Query(where, params, facet)


def parse_order(text: str) -> tuple[str, str | None]:
    """``created_at``, ``version`` or ``metrics.<key>``, then ``asc``/``desc``."""
    parts = text.strip().split()
    if not parts or len(parts) > 2 or (len(parts) == 2 and parts[1].lower() not in ("asc", "desc")):
        raise InvalidInputError(f"invalid order_by {text!r}: KEY [asc|desc]")
    key = parts[0]
    direction = parts[1].lower() if len(parts) == 2 else ("asc" if key == "version" else "desc")
    if key in ("created_at", "version"):
        return f"{key} {direction}", None
    if key.startswith("metrics.") and len(key) > len("metrics."):
        return f"metric {direction}", key.removeprefix("metrics.")
    raise InvalidInputError(f"invalid order_by key {key!r}: created_at, version or metrics.<key>")


def _encode(value: Any, version_id: int) -> str:
    raw = json.dumps([value, version_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[Any, int]:
    try:
        value, version_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return value, int(version_id)
    except (ValueError, TypeError) as e:
        raise InvalidInputError("invalid cursor") from e


class SearchService:
    """Runs version searches with keyset pagination."""

    def __init__(self, store: SqliteStore, index: SearchIndexer) -> None:
        self._store = store
        self._index = index

    async def _common_tags(self, clauses: list[Clause], limit: int) -> frozenset[tuple[str, str]]:
        """The tag equalities a metric order's walk should check version by version.

        Collecting a tag's n versions costs about n steps; looking each version the walk
        meets up costs a few steps more each, and a walk that keeps one version in
        versions/n meets about limit * versions/n of them. Looking up is the cheaper
        when n * n > 4 * limit * versions: counted only that far, never whole.
        """
        tags = [
            (c.field.removeprefix("tags."), str(c.value))
            for c in clauses
            if c.field.startswith("tags.") and c.op == "="
        ]
        if not tags:
            return frozenset()
        versions = self._index.versions_indexed  # the search has just caught up
        enough = math.isqrt(4 * (limit + 1) * versions) + 1
        common = set()
        for key, value in tags:
            if await self._store.count_tagged(key, value, at_most=enough) >= enough:
                common.add((key, value))
        return frozenset(common)

    async def search(
        self, actor: Actor, text: str, order_by: str, limit: int, cursor: str | None
    ) -> Page:
        require(actor, READ)
        order, order_key = parse_order(order_by)
        clauses = parse_filter(text) if text.strip() else []
        await self._index.catch_up()  # so it holds every version committed so far
        common = await self._common_tags(clauses, limit) if order_key else frozenset()
        query = to_sql(clauses, order_key, order, common)
        where, params = query.where, query.params
        if actor.models is not None:  # a scoped token finds only the models it may read
            globs = " OR ".join(["name GLOB ?"] * len(actor.models)) or "0"
            where.append(f"v.model_id IN (SELECT id FROM models WHERE {globs})")
            params += actor.models
        if cursor is not None:
            value, last_id = _decode(cursor)
            cmp = "<" if order.endswith("desc") else ">"
            if order.startswith("created_at"):  # the id is the order
                if value != last_id:
                    raise InvalidInputError("invalid cursor")
                where.append(f"{'f.version_id' if query.facet else 'v.id'} {cmp} ?")
                params.append(last_id)
            else:
                by_version = order.startswith("version")
                sort_col, tie = (
                    ("v.sort_key", "v.id") if by_version else ("sm.value", "sm.version_id")
                )
                where.append(f"({sort_col}, {tie}) {cmp} (?, ?)")
                params += [value, last_id]
        rows = await self._store.search_versions(
            where, params, order, limit + 1, order_key, query.facet
        )
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode(rows[-1][1], rows[-1][0].id) if more and rows else None
        return Page([v for v, _ in rows], next_cursor)
