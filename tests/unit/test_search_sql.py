"""How a filter becomes SQL: a tag is collected, or checked on a metric order's walk."""

from __future__ import annotations

from central.services.search import parse_filter, to_sql


def test_a_tag_is_collected_unless_common_in_a_metric_order() -> None:
    clauses = parse_filter("tags.team = 't1' and tags.shard = 's07' and metrics.auc > 0.9")
    common = frozenset({("team", "t1")})

    walked = to_sql(clauses, "auc", "metric desc", common)
    assert walked.where[0].startswith("EXISTS (SELECT 1 FROM version_tags t")
    assert "t.version_id = sm.version_id" in walked.where[0]
    assert walked.where[1].startswith("v.id IN (SELECT version_id FROM version_tags")
    assert walked.params[:4] == ["team", "t1", "shard", "s07"]

    for order, key in (("created_at desc", None), ("version asc", None)):
        collected = to_sql(clauses, key, order, common)
        assert not any(w.startswith("EXISTS") for w in collected.where)
    assert not any(w.startswith("EXISTS") for w in to_sql(clauses, "auc", "metric desc").where)
