"""The audit log through the real server and ``skiff``: what it records, and that tampering
with the SQLite file (an edited row, a removed row, a cut tail) is caught by verification.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    CentralProcess,
    all_pages,
    api,
    api_ok,
    init_central,
    register,
    run_skiff,
    running_central,
    unique,
)

CHECKPOINT_SECONDS = 0.5


def skiff_json(central: CentralProcess, *args: str) -> Any:
    return json.loads(run_skiff(*args, "--json", env=central.env).stdout)


def make_token(central: CentralProcess, role: str) -> str:
    body = {"name": unique(role), "role": role}
    token: str = api_ok(central, "POST", "/api/v1/tokens", 201, json=body)["token"]
    return token


def audit_rows(central: CentralProcess, query: str = "") -> list[dict[str, Any]]:
    return all_pages(central, "/api/v1/audit" + (f"?{query}" if query else ""))


def wait_for_checkpoint(central: CentralProcess, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        report: dict[str, Any] = api_ok(central, "GET", "/api/v1/audit/verify")
        if report["checkpoints"] >= 1:
            return report
        assert time.monotonic() < deadline, f"no audit checkpoint within {timeout} s: {report}"
        time.sleep(0.2)


@pytest.fixture
def fast_central(tmp_path: Path) -> Iterator[CentralProcess]:
    """A central that signs audit checkpoints every half second."""
    with running_central(tmp_path / "central", audit_checkpoint_seconds=CHECKPOINT_SECONDS) as c:
        yield c


def test_mutations_are_audited_with_their_fields(central: CentralProcess) -> None:
    model = unique("audited")
    version = register(central, model, "1.0.0")
    resp = api(
        central,
        "PUT",
        f"/api/v1/models/{model}/aliases/stable",
        json={"version": version["version"]},
        headers={"X-Request-Id": "req-alias-1"},
    )
    assert resp.status == 200, resp.body

    rows = audit_rows(central, f"model={model}")
    actions = [r["action"] for r in rows]
    assert actions == ["alias.set", "version.register", "model.create"], rows
    alias_row = rows[0]
    assert alias_row["actor"] == "admin"
    assert alias_row["role"] == "admin"
    assert alias_row["target"] == f"{model}:stable"
    assert alias_row["outcome"] == "ok"
    assert alias_row["request_id"] == "req-alias-1"
    assert alias_row["at"].endswith("Z")
    assert len(alias_row["hash"]) == 64 and len(alias_row["prev_hash"]) == 64
    assert rows[1]["target"] == f"{model}@1.0.0"
    # the uploads were audited too, and an action family filters
    blobs = audit_rows(central, "action=blob.*")
    assert {r["target"] for r in blobs} == {f["digest"] for f in version["files"]}
    # the filters compose with paging
    page = api_ok(central, "GET", f"/api/v1/audit?model={model}&limit=1")
    assert [r["action"] for r in page["items"]] == ["alias.set"]
    assert page["next_cursor"] is not None


def test_refused_calls_are_audited(central: CentralProcess) -> None:
    viewer = make_token(central, "viewer")
    model = unique("denied")
    # 403: the viewer may not create a model
    resp = api(central, "POST", "/api/v1/models", json={"name": model}, token=viewer)
    assert resp.status == 403
    # 401: no token, and an unknown token
    assert api(central, "GET", "/api/v1/models", token=None).status == 401
    assert api(central, "GET", "/api/v1/tokens", token="skf_not-a-token").status == 401
    # public routes are not audited
    assert api(central, "GET", "/healthz", token=None).status == 200
    assert api(central, "GET", "/api/v1/openapi.json", token=None).status == 200

    denied = skiff_json(central, "audit", "list", "--action", "api.request")
    by_outcome: dict[str, list[dict[str, Any]]] = {}
    for row in denied:
        by_outcome.setdefault(row["outcome"], []).append(row)
    assert set(by_outcome) == {"denied", "unauthenticated"}, denied
    [refused] = by_outcome["denied"]
    assert refused["role"] == "viewer"
    assert refused["actor"].startswith("viewer-")
    assert refused["target"] == "POST /api/v1/models"
    assert refused["detail"]["client"] == "127.0.0.1"
    assert refused["detail"]["method"] == "POST"
    assert "lacks the 'write' permission" in refused["detail"]["message"]
    assert refused["request_id"]
    anonymous = by_outcome["unauthenticated"]
    assert sorted(r["target"] for r in anonymous) == [
        "GET /api/v1/models",
        "GET /api/v1/tokens",
    ]
    assert {r["actor"] for r in anonymous} == {"anonymous"}
    assert all("token" in r["detail"]["message"] for r in anonymous)
    assert not [r for r in denied if "/healthz" in r["target"] or "openapi" in r["target"]]

    # reading the log needs read_audit: the viewer is refused, and that is audited too
    assert api(central, "GET", "/api/v1/audit", token=viewer).status == 403
    last = api_ok(central, "GET", "/api/v1/audit?limit=1")["items"][0]
    assert (last["target"], last["outcome"]) == ("GET /api/v1/audit", "denied")
    approver = make_token(central, "approver")
    assert api(central, "GET", "/api/v1/audit/verify", token=approver).status == 200


def test_bad_audit_queries_are_named(central: CentralProcess) -> None:
    for query, fragment in [
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("cursor=%%%", "cursor"),
        ("actor=" + "a" * 300, "actor"),
    ]:
        resp = api(central, "GET", f"/api/v1/audit?{query}")
        assert resp.status == 400, (query, resp.body)
        assert fragment in resp.error()["message"], (query, resp.error())


def test_device_blob_downloads_are_audited(central: CentralProcess) -> None:
    model, fleet, device = unique("dl"), unique("fleet"), unique("dev")
    version = register(central, model, "1.0.0")
    api_ok(central, "PUT", f"/api/v1/models/{model}/aliases/stable", json={"version": "1.0.0"})
    api_ok(central, "POST", "/api/v1/fleets", 201, json={"name": fleet})
    api_ok(central, "PUT", f"/api/v1/fleets/{fleet}/models/{model}", json={"alias": "stable"})
    enrolled = api_ok(
        central, "POST", f"/api/v1/fleets/{fleet}/devices", 201, json={"device": device}
    )
    digest = version["files"][0]["digest"]
    path = f"/api/v1/blobs/{digest}"
    assert api(central, "GET", path, token=enrolled["token"]).status == 200
    resp = api(central, "GET", path, token=enrolled["token"], headers={"Range": "bytes=0-9"})
    assert resp.status == 206
    assert api(central, "HEAD", path, token=enrolled["token"]).status == 200  # not a download
    assert api(central, "GET", path).status == 200  # the admin's download is not audited

    rows = audit_rows(central, "action=blob.download")
    assert len(rows) == 2, rows
    for row in rows:
        assert row["role"] == "device"
        assert row["target"] == digest
        assert row["outcome"] == "ok"
        assert row["request_id"]
    whole = {"start": 0, "end": version["files"][0]["zsize"]}
    assert [r["detail"] for r in rows] == [{"start": 0, "end": 10}, whole]


def test_clean_log_verifies_with_a_signed_checkpoint(
    fast_central: CentralProcess, tmp_path: Path
) -> None:
    central = fast_central
    register(central, unique("clean"), "1.0.0")
    assert api(central, "GET", "/api/v1/models", token=None).status == 401
    report = wait_for_checkpoint(central)
    assert report["ok"] is True, report
    assert report["first_bad"] is None
    assert report["last_checkpoint"]["audit_id"] >= 1

    proc = run_skiff("audit", "verify", env=central.env)
    assert "rows checked" in proc.stdout

    # export: valid JSON Lines, one line per row, in id order, chained
    out = tmp_path / "audit.jsonl"
    run_skiff("audit", "export", "-o", str(out), env=central.env)
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == list(range(1, len(records) + 1))
    assert len(records) == len(audit_rows(central))
    assert records[0]["prev_hash"] == "0" * 64
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(records))
    assert records[0]["action"] == "registry.init"
    stdout = run_skiff("audit", "export", env=central.env).stdout
    assert [json.loads(line) for line in stdout.splitlines()] == records


def _edit_row(db: sqlite3.Connection, ids: list[int]) -> int:
    target = ids[len(ids) // 2]
    db.execute("UPDATE audit SET target = 'someone-else' WHERE id = ?", (target,))
    return target


def _delete_row(db: sqlite3.Connection, ids: list[int]) -> int:
    target = ids[len(ids) // 2]
    db.execute("DELETE FROM audit WHERE id = ?", (target,))
    return target


def _truncate_tail(db: sqlite3.Connection, ids: list[int]) -> int:
    db.execute("DELETE FROM audit WHERE id > ?", (ids[-3],))
    return ids[-2]  # the first row missing


@pytest.mark.parametrize(
    "tamper",
    [_edit_row, _delete_row, _truncate_tail],
    ids=["edited-row", "deleted-row", "truncated-tail"],
)
def test_tampering_is_caught(
    tmp_path: Path, tamper: Callable[[sqlite3.Connection, list[int]], int]
) -> None:
    with running_central(tmp_path / "central", audit_checkpoint_seconds=CHECKPOINT_SECONDS) as c:
        model = unique("tamper")
        register(c, model, "1.0.0")
        register(c, model, "1.0.1")
        api_ok(c, "PUT", f"/api/v1/models/{model}/aliases/stable", json={"version": "1.0.1"})
        assert api_ok(c, "GET", "/api/v1/audit/verify")["ok"] is True
        c.stop()  # signs a last checkpoint of the head
        db = sqlite3.connect(c.data_dir / "registry.db")
        try:
            ids = [r[0] for r in db.execute("SELECT id FROM audit ORDER BY id")]
            [(checkpointed,)] = db.execute("SELECT max(audit_id) FROM audit_checkpoints")
            assert checkpointed == ids[-1]
            bad = tamper(db, ids)
            db.commit()
        finally:
            db.close()
        c.start()
        proc = run_skiff("audit", "verify", "--json", env=c.env, check=False)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert f"first bad entry {bad}:" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        report = json.loads(proc.stdout)
        assert report["ok"] is False
        assert report["first_bad"]["id"] == bad, report


def test_rows_from_before_the_chain_are_chained_at_first_start(tmp_path: Path) -> None:
    central = init_central(tmp_path / "central")
    db = sqlite3.connect(central.data_dir / "registry.db")
    try:  # as a registry created before the chain existed left them
        db.execute("UPDATE audit SET prev_hash = NULL, hash = NULL")
        db.commit()
        [(count,)] = db.execute("SELECT count(*) FROM audit")
    finally:
        db.close()
    try:
        central.start()
        register(central, unique("legacy"), "1.0.0")
        report = api_ok(central, "GET", "/api/v1/audit/verify")
        assert report["ok"] is True, report
        assert report["checked"] > count >= 1
        proc = run_skiff("audit", "list", "--action", "registry.init", env=central.env)
        assert "registry.init" in proc.stdout
    finally:
        central.stop()


def test_actor_action_and_time_filters_find_every_row_at_once(central: CentralProcess) -> None:
    """Rows committed a moment ago are found by actor, action and time, page by page."""
    developer = make_token(central, "developer")
    model = unique("who")
    register(central, model, "1.0.0", token=developer)
    register(central, model, "1.0.1", token=developer)
    register(central, unique("other"), "1.0.0")
    mine = audit_rows(central, f"model={model}")
    actor = mine[0]["actor"]
    assert actor.startswith("developer-")
    everything = audit_rows(central)

    def expected(keep: Callable[[dict[str, Any]], bool]) -> list[int]:
        return [r["id"] for r in everything if keep(r)]

    since = mine[-1]["at"]
    cases = {
        f"actor={actor}": expected(lambda r: r["actor"] == actor),
        "action=version.register": expected(lambda r: r["action"] == "version.register"),
        f"actor={actor}&action=version.register": expected(
            lambda r: r["actor"] == actor and r["action"] == "version.register"
        ),
        f"since={since}": expected(lambda r: r["at"] >= since),
        f"since={since}&action=model.create": expected(
            lambda r: r["at"] >= since and r["action"] == "model.create"
        ),
    }
    assert len(cases[f"actor={actor}&action=version.register"]) == 2
    for query, ids in cases.items():
        assert ids, query
        assert [r["id"] for r in audit_rows(central, query)] == ids, query
        paged = all_pages(central, f"/api/v1/audit?{query}", limit=1)
        assert [r["id"] for r in paged] == ids, query
