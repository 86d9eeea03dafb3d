"""Search: every filter clause, ordering and pagination over a small catalogue."""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest

from tests.support import CentralProcess, api, api_ok, register, unique

PMML = b'<?xml version="1.0"?>\n<PMML version="4.4" xmlns="http://www.dmg.org/PMML-4_4"/>\n'


@dataclass(frozen=True)
class Catalogue:
    prefix: str
    fraud: str
    fraud_eu: str
    churn: str

    @property
    def scope(self) -> str:
        return f"name like '{self.prefix}%'"


@pytest.fixture(scope="module")
def cat(central_module: CentralProcess) -> Catalogue:
    """Five versions over three models, registered in a known order."""
    prefix = unique("s")
    c = Catalogue(prefix, f"{prefix}-fraud", f"{prefix}-fraud-eu", f"{prefix}-churn")
    for model, region in ((c.fraud, "global"), (c.fraud_eu, "eu"), (c.churn, "us")):
        api_ok(
            central_module,
            "POST",
            "/api/v1/models",
            201,
            json={"name": model, "tags": {"region": region}},
        )
    alice = api_ok(
        central_module, "POST", "/api/v1/tokens", 201, json={"name": "alice", "role": "developer"}
    )["token"]

    def metrics(auc: float) -> dict[str, Any]:
        return {"training": {"metrics": {"auc": auc}}}

    register(
        central_module,
        c.fraud,
        "1.0.0",
        tags={"team": "risk"},
        metadata=metrics(0.80),
        description="baseline logistic regression",
    )
    register(
        central_module,
        c.fraud,
        "1.1.0",
        tags={"team": "risk"},
        metadata=metrics(0.92),
        description="tuned logistic regression",
    )
    for stage in ("training", "validation", "staging"):
        api_ok(
            central_module,
            "PUT",
            f"/api/v1/models/{c.fraud}/versions/1.1.0/stage",
            json={"stage": stage},
        )
    register(
        central_module,
        c.fraud_eu,
        "1.0.0",
        files={"model.pmml": PMML},
        tags={"team": "eu"},
        metadata=metrics(0.85),
        description="regional scorecard",
    )
    register(
        central_module,
        c.churn,
        "1.0.0",
        tags={"team": "growth"},
        metadata=metrics(0.70),
        description="churn predictor with boosted trees",
    )
    register(
        central_module,
        c.fraud,
        "2.0.0",
        branch="exp",
        tags={"team": "risk"},
        metadata=metrics(0.95),
        description="gradient boosted trees",
        token=alice,
    )
    return c


def _search(
    central: CentralProcess, flt: str, order_by: str | None = None, limit: int = 1000
) -> list[tuple[str, str]]:
    query = f"filter={quote(flt, safe='')}&limit={limit}"
    if order_by is not None:
        query += f"&order_by={quote(order_by, safe='')}"
    found: list[tuple[str, str]] = []
    cursor = None
    for _ in range(100):
        path = f"/api/v1/search?{query}"
        if cursor is not None:
            path += f"&cursor={quote(cursor, safe='')}"
        page = api_ok(central, "GET", path)
        found.extend((v["model"], v["version"]) for v in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found
    raise AssertionError("search pagination did not end")


CASES: list[tuple[str, str, set[str]]] = [
    # id, filter ({scope}, {fraud}... are filled in), expected as "model-key@version"
    ("name-exact", "name = '{fraud}'", {"fraud@1.0.0", "fraud@1.1.0", "fraud@2.0.0"}),
    (
        "name-prefix",
        "name like '{fraud}%'",
        {"fraud@1.0.0", "fraud@1.1.0", "fraud@2.0.0", "eu@1.0.0"},
    ),
    ("tags", "{scope} and tags.team = 'risk'", {"fraud@1.0.0", "fraud@1.1.0", "fraud@2.0.0"}),
    ("model-tags", "{scope} and model_tags.region = 'eu'", {"eu@1.0.0"}),
    ("stage", "{scope} and stage = 'staging'", {"fraud@1.1.0"}),
    ("branch", "{scope} and branch = 'exp'", {"fraud@2.0.0"}),
    ("owner", "{scope} and owner = 'alice'", {"fraud@2.0.0"}),
    ("format-pmml", "{scope} and format = 'pmml'", {"eu@1.0.0"}),
    (
        "format-onnx",
        "{scope} and format = 'onnx'",
        {"fraud@1.0.0", "fraud@1.1.0", "fraud@2.0.0", "churn@1.0.0"},
    ),
    ("metric-eq", "{scope} and metrics.auc = 0.92", {"fraud@1.1.0"}),
    (
        "metric-ne",
        "{scope} and metrics.auc != 0.92",
        {"fraud@1.0.0", "fraud@2.0.0", "eu@1.0.0", "churn@1.0.0"},
    ),
    ("metric-gt", "{scope} and metrics.auc > 0.85", {"fraud@1.1.0", "fraud@2.0.0"}),
    ("metric-ge", "{scope} and metrics.auc >= 0.85", {"fraud@1.1.0", "fraud@2.0.0", "eu@1.0.0"}),
    ("metric-lt", "{scope} and metrics.auc < 0.8", {"churn@1.0.0"}),
    ("metric-le", "{scope} and metrics.auc <= 0.8", {"churn@1.0.0", "fraud@1.0.0"}),
    ("metric-missing", "{scope} and metrics.f1 > 0", set()),
    ("description", "{scope} and description contains 'trees'", {"churn@1.0.0", "fraud@2.0.0"}),
    (
        "description-word",
        "{scope} and description contains 'logistic'",
        {"fraud@1.0.0", "fraud@1.1.0"},
    ),
    (
        "upper-and",
        "{scope} AND branch = 'main' AND metrics.auc >= 0.85",
        {"fraud@1.1.0", "eu@1.0.0"},
    ),
    ("no-match", "name = '{prefix}-nothing'", set()),
]


def _keys(cat: Catalogue, found: list[tuple[str, str]]) -> list[str]:
    names = {cat.fraud: "fraud", cat.fraud_eu: "eu", cat.churn: "churn"}
    return [f"{names[m]}@{v}" for m, v in found]


@pytest.mark.parametrize(("flt", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_filter(
    central_module: CentralProcess, cat: Catalogue, flt: str, expected: set[str]
) -> None:
    text = flt.format(scope=cat.scope, fraud=cat.fraud, prefix=cat.prefix)
    found = _keys(cat, _search(central_module, text))
    assert len(found) == len(set(found)), found
    assert set(found) == expected


REGISTRATION_ORDER = ["fraud@1.0.0", "fraud@1.1.0", "eu@1.0.0", "churn@1.0.0", "fraud@2.0.0"]
BY_AUC = ["churn@1.0.0", "fraud@1.0.0", "eu@1.0.0", "fraud@1.1.0", "fraud@2.0.0"]


@pytest.mark.parametrize(
    ("order_by", "expected"),
    [
        (None, list(reversed(REGISTRATION_ORDER))),
        ("created_at", list(reversed(REGISTRATION_ORDER))),
        ("created_at desc", list(reversed(REGISTRATION_ORDER))),
        ("created_at asc", REGISTRATION_ORDER),
        ("metrics.auc asc", BY_AUC),
        ("metrics.auc desc", list(reversed(BY_AUC))),
    ],
)
def test_order_by(
    central_module: CentralProcess, cat: Catalogue, order_by: str | None, expected: list[str]
) -> None:
    assert _keys(cat, _search(central_module, cat.scope, order_by)) == expected


@pytest.mark.parametrize(
    ("order_by", "expected"),
    [
        ("version asc", ["1.0.0", "1.1.0", "2.0.0"]),
        ("version desc", ["2.0.0", "1.1.0", "1.0.0"]),
    ],
)
def test_order_by_version(
    central_module: CentralProcess, cat: Catalogue, order_by: str, expected: list[str]
) -> None:
    found = _search(central_module, f"name = '{cat.fraud}'", order_by)
    assert [v for _, v in found] == expected


@pytest.mark.parametrize("order_by", ["created_at", "metrics.auc desc", "version asc"])
def test_pagination_returns_each_version_once(
    central_module: CentralProcess, cat: Catalogue, order_by: str
) -> None:
    whole = _search(central_module, cat.scope, order_by)
    paged = _search(central_module, cat.scope, order_by, limit=2)
    assert paged == whole
    assert len(whole) == 5


@pytest.mark.parametrize("order_by", ["created_at desc", "created_at asc"])
@pytest.mark.parametrize(
    ("clauses", "expected"),
    [
        # walks the format facet, checks the branch on each row
        ("format = 'onnx' and branch = 'main'", ["fraud@1.0.0", "fraud@1.1.0", "churn@1.0.0"]),
        ("description contains 'regression'", ["fraud@1.0.0", "fraud@1.1.0"]),
    ],
    ids=["facet", "words"],
)
def test_pages_in_creation_order_hold_each_version_once(
    central_module: CentralProcess, cat: Catalogue, order_by: str, clauses: str, expected: list[str]
) -> None:
    flt = f"{cat.scope} and {clauses}"
    whole = _keys(cat, _search(central_module, flt, order_by))
    assert whole == (expected if order_by.endswith("asc") else list(reversed(expected)))
    assert _keys(cat, _search(central_module, flt, order_by, limit=1)) == whole


def test_a_cursor_of_another_order_is_400(central_module: CentralProcess, cat: Catalogue) -> None:
    base = f"/api/v1/search?filter={quote(cat.scope, safe='')}&limit=1"
    by_metric = api_ok(central_module, "GET", f"{base}&order_by=metrics.auc")["next_cursor"]
    resp = api(central_module, "GET", f"{base}&cursor={quote(by_metric, safe='')}")
    assert resp.status == 400, resp.body
    assert "cursor" in resp.error()["message"]


def test_stage_search_follows_stage_changes(central_module: CentralProcess) -> None:
    model = unique("st")
    scoped = f"name = '{model}' and stage"
    register(central_module, model, "1.0.0")
    assert _search_ids(central_module, f"{scoped} = 'development'") == [f"{model}@1.0.0"]
    # 1.0.0 is in the search tables now; 1.1.0 moves before any search indexes it
    register(central_module, model, "1.1.0")
    for version in ("1.0.0", "1.1.0"):
        api_ok(
            central_module,
            "PUT",
            f"/api/v1/models/{model}/versions/{version}/stage",
            json={"stage": "training"},
        )
    assert _search_ids(central_module, f"{scoped} = 'development'") == []
    assert _search_ids(central_module, f"{scoped} = 'training'") == [
        f"{model}@1.1.0",
        f"{model}@1.0.0",
    ]
    for order_by in ("version desc", "metrics.auc desc"):
        query = f"filter={quote(f'{scoped} = {chr(39)}training{chr(39)}', safe='')}"
        page = api_ok(
            central_module, "GET", f"/api/v1/search?{query}&order_by={quote(order_by, safe='')}"
        )
        expected = [] if order_by.startswith("metrics") else ["1.1.0", "1.0.0"]
        assert [v["version"] for v in page["items"]] == expected, order_by


def test_page_size_is_respected(central_module: CentralProcess, cat: Catalogue) -> None:
    query = f"filter={quote(cat.scope, safe='')}&limit=2"
    page = api_ok(central_module, "GET", f"/api/v1/search?{query}")
    assert len(page["items"]) == 2
    assert page["next_cursor"]


@pytest.mark.parametrize(
    ("flt", "needle"),
    [
        ("bogus = 'x'", "bogus"),
        ("stage = 'staging' and colour = 'red'", "colour"),
        ("metrics.auc >> 1", "metrics.auc"),
        ("metrics.auc > 'high'", "high"),
        ("tags.team ~ 'risk'", "~"),
        ("name = unquoted", "unquoted"),
        ("stage = 'staging' or branch = 'exp'", "or"),
    ],
)
def test_invalid_filter_is_400_naming_the_clause(
    central_module: CentralProcess, flt: str, needle: str
) -> None:
    resp = api(central_module, "GET", f"/api/v1/search?filter={quote(flt, safe='')}")
    assert resp.status == 400, resp.body
    err = resp.error()
    assert err["code"] == "invalid"
    assert needle in err["message"], err["message"]


def test_invalid_order_by_is_400(central_module: CentralProcess) -> None:
    resp = api(central_module, "GET", "/api/v1/search?order_by=colour")
    assert resp.status == 400
    assert "colour" in resp.error()["message"]


def test_results_are_version_records(central_module: CentralProcess, cat: Catalogue) -> None:
    query = f"filter={quote(f'name = {chr(39)}{cat.fraud_eu}{chr(39)}', safe='')}"
    (item,) = api_ok(central_module, "GET", f"/api/v1/search?{query}")["items"]
    direct = api_ok(central_module, "GET", f"/api/v1/models/{cat.fraud_eu}/versions/1.0.0")
    assert item == direct


def _search_ids(central: CentralProcess, filter_text: str) -> list[str]:
    page = api_ok(central, "GET", f"/api/v1/search?filter={quote(filter_text, safe='')}")
    return [f"{v['model']}@{v['version']}" for v in page["items"]]


def test_description_search_finds_a_version_registered_just_before(
    central_module: CentralProcess,
) -> None:
    model, word = unique("txt"), uuid.uuid4().hex[:12]
    for i in range(3):  # searched at once after each registration: no wait, no retry
        register(central_module, model, f"1.0.{i}", description=f"run {i} of {word}")
        found = _search_ids(central_module, f"description contains '{word}'")
        assert found == [f"{model}@1.0.{j}" for j in range(i, -1, -1)]


def test_tag_and_metric_search_find_a_version_registered_just_before(
    central_module: CentralProcess,
) -> None:
    model, team = unique("tm"), uuid.uuid4().hex[:12]
    for i in range(3):  # searched at once after each registration: no wait, no retry
        register(
            central_module,
            model,
            f"1.0.{i}",
            tags={"team": team},
            metadata={"training": {"metrics": {"recall": 0.5 + i / 10}}},
        )
        newest_first = [f"{model}@1.0.{j}" for j in range(i, -1, -1)]
        assert _search_ids(central_module, f"tags.team = '{team}'") == newest_first
        by_metric = f"name = '{model}' and metrics.recall >= 0.5"
        page = api_ok(
            central_module,
            "GET",
            f"/api/v1/search?filter={quote(by_metric, safe='')}"
            f"&order_by={quote('metrics.recall desc', safe='')}",
        )
        assert [f"{v['model']}@{v['version']}" for v in page["items"]] == newest_first


def test_versions_reach_the_search_tables_without_a_search(
    central_module: CentralProcess,
) -> None:
    model, word = unique("txt"), uuid.uuid4().hex[:12]
    register(
        central_module,
        model,
        "1.0.0",
        description=f"indexed in the background {word}",
        tags={"word": word},
        metadata={"training": {"metrics": {"auc": 0.75}}},
    )
    db = sqlite3.connect(f"file:{central_module.data_dir / 'registry.search.db'}?mode=ro", uri=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            rows = db.execute(
                "SELECT rowid FROM version_text WHERE version_text MATCH ?", (f'"{word}"',)
            ).fetchall()
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        tags = db.execute(
            "SELECT version_id FROM version_tags WHERE key = 'word' AND value = ?", (word,)
        ).fetchall()
        metrics = db.execute(
            "SELECT value FROM version_metrics WHERE version_id = ? AND key = 'auc'",
            (rows[0][0] if rows else -1,),
        ).fetchall()
    finally:
        db.close()
    assert len(rows) == 1, "the description was not indexed within 10 s"
    assert tags == [(rows[0][0],)], "the tag was not indexed with the description"
    assert metrics == [(0.75,)], "the metric was not indexed with the description"


@pytest.mark.parametrize("direction", ["desc", "asc"])
def test_equal_metrics_page_in_registration_order(
    central_module: CentralProcess, direction: str
) -> None:
    """Versions with one metric value are ordered by registration, page after page."""
    model = unique("tie")
    for i in range(5):
        register(
            central_module,
            model,
            f"1.0.{i}",
            tags={"kind": "tied" if i != 2 else "other"},
            metadata={"training": {"metrics": {"auc": 0.5 if i else 0.4}}},
        )
    flt = f"name = '{model}' and metrics.auc >= 0.4 and tags.kind = 'tied'"
    order = f"metrics.auc {direction}"
    ascending = [(model, v) for v in ("1.0.0", "1.0.1", "1.0.3", "1.0.4")]
    expected = ascending if direction == "asc" else list(reversed(ascending))
    assert _search(central_module, flt, order) == expected
    assert _search(central_module, flt, order, limit=1) == expected


def test_a_common_tag_in_a_metric_order_finds_what_a_rare_one_would(
    central_module: CentralProcess,
) -> None:
    """Pages of one or two versions check a tag most versions carry version by version;
    one page of a thousand collects the tag's versions. Both find the same, in order."""
    model = unique("common")
    for i in range(80):
        register(
            central_module,
            model,
            f"1.0.{i}",
            tags={"kind": "common" if i % 4 else "rare"},
            metadata={"training": {"metrics": {"auc": round(0.5 + (i % 7) / 100, 2)}}},
        )
    for kind in ("common", "rare"):
        flt = f"name = '{model}' and tags.kind = '{kind}' and metrics.auc > 0.51"
        whole = _search(central_module, flt, "metrics.auc desc")
        assert len(whole) == sum(
            1 for i in range(80) if (i % 4 != 0) == (kind == "common") and i % 7 > 1
        )
        assert _search(central_module, flt, "metrics.auc desc", limit=1) == whole
        assert _search(central_module, flt, "metrics.auc desc", limit=2) == whole
        aucs = [round(0.5 + (int(v.rsplit(".", 1)[1]) % 7) / 100, 2) for _, v in whole]
        assert aucs == sorted(aucs, reverse=True)
