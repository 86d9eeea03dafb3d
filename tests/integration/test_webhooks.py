"""Webhooks: signed callbacks on registry events, retried, and surviving a crash of central.

A real aiohttp receiver runs on 127.0.0.1 in a thread of the test process and checks
each request's ``Skiff-Signature`` (HMAC-SHA256 over ``"<timestamp>.<body>"``) and the
freshness of its timestamp, as docs/webhooks.md tells receivers to.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support import (
    CentralProcess,
    api,
    api_ok,
    free_port,
    register,
    run_skiff,
    running_central,
    unique,
)

SECRET = "whsec-test-0123456789abcdef"
TOLERANCE_SECONDS = 300
WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    signature_ok: bool
    fresh: bool
    status: int  # what the receiver answered

    @property
    def doc(self) -> Any:
        return json.loads(self.body)


def verify(secret: str, header: str, body: bytes) -> tuple[bool, int]:
    """(signature valid, timestamp) of a ``t=<ts>,v1=<hex>`` header."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    ts = int(parts.get("t", "0"))
    expected = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", "")), ts


class Receiver:
    """An HTTP endpoint that records signed POSTs and answers ``answers`` in turn, then 200."""

    def __init__(self, port: int | None = None, answers: tuple[int, ...] = ()) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.answers = list(answers)
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        ok, ts = verify(SECRET, request.headers.get("Skiff-Signature", ""), body)
        with self._lock:
            status = self.answers.pop(0) if self.answers else 200
            self.received.append(
                Received(
                    dict(request.headers),
                    body,
                    ok,
                    abs(time.time() - ts) <= TOLERANCE_SECONDS,
                    status,
                )
            )
        return web.Response(status=status)

    def start(self) -> Receiver:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/hook", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert ready.wait(10), "receiver did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def wait_for(self, done: Callable[[list[Received]], bool], what: str) -> list[Received]:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            got = self.snapshot()
            if done(got):
                return got
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; received {self.snapshot()}")

    def successes(self) -> list[Received]:
        return [r for r in self.snapshot() if r.status == 200]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def add_webhook(central: CentralProcess, url: str, events: list[str]) -> str:
    body = {"url": url, "events": events, "secret": SECRET}
    record = api_ok(central, "POST", "/api/v1/webhooks", 201, json=body)
    assert "secret" not in record  # a given secret is never echoed
    return str(record["id"])


def deliveries(central: CentralProcess, webhook_id: str, status: str = "") -> list[Any]:
    query = f"?status={status}" if status else ""
    page = api_ok(central, "GET", f"/api/v1/webhooks/{webhook_id}/deliveries{query}")
    return list(page["items"])


def wait_deliveries(
    central: CentralProcess, webhook_id: str, done: Callable[[list[Any]], bool]
) -> list[Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        items = deliveries(central, webhook_id)
        if done(items):
            return items
        time.sleep(0.05)
    raise AssertionError(f"timed out; deliveries: {deliveries(central, webhook_id)}")


def test_registering_and_moving_an_alias_deliver_signed_events(
    central: CentralProcess, receiver: Receiver
) -> None:
    events = ["version.registered", "stage.changed", "alias.moved", "rollout.*", "drift.alert"]
    hook = add_webhook(central, receiver.url, events)
    model = unique("hooked")
    register(central, model, "1.0.0")  # also model.created and blob.stored: not subscribed
    api_ok(central, "PUT", f"/api/v1/models/{model}/aliases/production", json={"version": "1.0.0"})

    got = receiver.wait_for(lambda r: len(r) >= 2, "two deliveries")
    time.sleep(1.0)  # anything else would have come by now
    got = receiver.snapshot()
    assert [r.doc["event"] for r in got] == ["version.registered", "alias.moved"]
    for r in got:
        assert r.signature_ok, r
        assert r.fresh, r
        assert r.headers["Skiff-Event"] == r.doc["event"]
        assert r.headers["Content-Type"] == "application/json"
        assert int(r.headers["Skiff-Timestamp"]) == int(
            r.headers["Skiff-Signature"].split(",")[0][2:]
        )
        doc = r.doc
        assert set(doc) == {"id", "event", "at", "data"}
        assert doc["id"] == f"evt_{doc['data']['seq']}"
        assert doc["data"]["model"] == model
        assert doc["data"]["version"] == "1.0.0"
    assert got[1].doc["data"]["alias"] == "production"
    assert got[0].doc["data"]["data"]["manifest_digest"].startswith("sha256:")

    items = deliveries(central, hook)
    assert [d["event"] for d in items] == ["alias.moved", "version.registered"]  # newest first
    for d in items:
        assert d["status"] == "delivered"
        assert d["attempts"] == 1
        assert d["last_status"] == 200
        assert d["delivered_at"]
    by_id = {str(d["id"]): d for d in items}
    assert {r.headers["Skiff-Delivery"] for r in got} == set(by_id)

    # a wrong secret does not verify: the receiver's check is a real one
    ok, _ = verify("not-the-secret-at-all", got[0].headers["Skiff-Signature"], got[0].body)
    assert not ok


def test_events_not_subscribed_are_not_sent(central: CentralProcess, receiver: Receiver) -> None:
    only_stages = add_webhook(central, receiver.url, ["stage.*"])
    model = unique("quiet")
    register(central, model, "1.0.0")
    api_ok(central, "PUT", f"/api/v1/models/{model}/aliases/staging", json={"version": "1.0.0"})
    watcher = Receiver().start()
    try:
        everything = add_webhook(central, watcher.url, ["*"])
        register(central, model, "1.1.0")
        watcher.wait_for(lambda r: any(x.doc["event"] == "version.registered" for x in r), "1.1.0")
    finally:
        watcher.stop()
    time.sleep(1.0)
    assert receiver.snapshot() == []
    assert deliveries(central, only_stages) == []
    # a webhook gets only what happens after it was added
    assert all(d["event_id"] > 0 for d in deliveries(central, everything))
    seen = [x.doc["data"]["version"] for x in watcher.snapshot() if x.doc["event"].startswith("v")]
    assert seen == ["1.1.0"]


def test_a_failing_receiver_gets_the_delivery_on_the_third_attempt(
    central: CentralProcess,
) -> None:
    receiver = Receiver(answers=(500, 500)).start()
    try:
        hook = add_webhook(central, receiver.url, ["version.registered"])
        register(central, unique("flaky"), "1.0.0")
        got = receiver.wait_for(lambda r: len(r) >= 3, "three attempts")
        assert [r.status for r in got] == [500, 500, 200]
        assert all(r.signature_ok and r.fresh for r in got)
        assert len({r.body for r in got}) == 1  # the same event every time
        assert len({r.headers["Skiff-Delivery"] for r in got}) == 1
        # backoff: about 1 s, then about 2 s (with jitter)
        items = wait_deliveries(central, hook, lambda d: bool(d) and d[0]["status"] != "pending")
    finally:
        receiver.stop()
    assert items[0]["status"] == "delivered"
    assert items[0]["attempts"] == 3

    out = run_skiff("webhook", "deliveries", hook, "--json", env=central.env)
    listed = json.loads(out.stdout)
    assert [(d["status"], d["attempts"], d["last_status"]) for d in listed] == [
        ("delivered", 3, 200)
    ]
    text = run_skiff("webhook", "deliveries", "--status", "delivered", env=central.env).stdout
    assert "version.registered" in text
    assert " 3 " in text


def test_a_delivery_fails_after_max_attempts_and_can_be_sent_again(tmp_path: Path) -> None:
    receiver = Receiver(answers=(503,) * 2).start()
    try:
        with running_central(tmp_path / "central", webhook_max_attempts=2) as central:
            hook = add_webhook(central, receiver.url, ["version.registered"])
            register(central, unique("doomed"), "1.0.0")
            items = wait_deliveries(central, hook, lambda d: bool(d) and d[0]["status"] == "failed")
            assert items[0]["attempts"] == 2
            assert items[0]["last_status"] == 503
            assert "503" in items[0]["last_error"]
            assert deliveries(central, hook, "pending") == []
            assert len(receiver.snapshot()) == 2

            out = run_skiff("webhook", "redeliver", hook, str(items[0]["id"]), env=central.env)
            assert "queued again" in out.stdout
            items = wait_deliveries(central, hook, lambda d: d[0]["status"] == "delivered")
            assert items[0]["attempts"] == 1
            assert [r.status for r in receiver.snapshot()] == [503, 503, 200]
            again = api(central, "POST", f"/api/v1/webhooks/{hook}/deliveries/999/redeliver")
            assert again.status == 404

            metrics = api(central, "GET", "/metrics", token=None).body.decode()
            for outcome, count in (("retry", 1), ("failed", 1), ("delivered", 1)):
                line = f'skiff_webhook_attempts_total{{outcome="{outcome}"}} {count}'
                assert re.search(rf"^{re.escape(line)}(\.0)?$", metrics, re.M), metrics
    finally:
        receiver.stop()


def test_a_pending_delivery_survives_a_crash_of_central(central: CentralProcess) -> None:
    port = free_port()
    receiver = Receiver(port=port)  # not listening yet: every attempt fails
    hook = add_webhook(central, receiver.url, ["version.registered"])
    register(central, unique("crashy"), "1.0.0")
    before = wait_deliveries(central, hook, lambda d: bool(d) and d[0]["attempts"] >= 1)
    assert before[0]["status"] == "pending"
    assert before[0]["last_error"]
    central.kill()

    receiver.start()
    try:
        central.start()
        got = receiver.wait_for(lambda r: len(r) >= 1, "the delivery after the restart")
        assert got[0].signature_ok and got[0].fresh
        assert got[0].doc["event"] == "version.registered"
        items = wait_deliveries(central, hook, lambda d: d[0]["status"] == "delivered")
    finally:
        receiver.stop()
    assert len(items) == 1
    assert items[0]["attempts"] >= 2


def test_a_change_committed_just_before_a_crash_is_still_sent(
    central: CentralProcess, receiver: Receiver
) -> None:
    hook = add_webhook(central, receiver.url, ["drift.*"])
    central.kill()
    # a change that committed while the process died, before any delivery was enqueued;
    # a kind added after webhooks were written passes through all the same
    with contextlib.closing(sqlite3.connect(central.data_dir / "registry.db")) as db:
        db.execute(
            "INSERT INTO changes (at, kind, model, version, alias, data) VALUES "
            "('2026-11-26T10:00:00Z', 'drift.alert', 'm', '1.0.0', NULL, '{\"psi\":0.4}')"
        )
        db.commit()
    central.start()
    got = receiver.wait_for(lambda r: len(r) >= 1, "the drift alert")
    assert got[0].signature_ok
    assert got[0].doc["event"] == "drift.alert"
    assert got[0].doc["data"]["data"] == {"psi": 0.4}
    time.sleep(1.0)
    assert len(receiver.snapshot()) == 1
    assert [d["status"] for d in deliveries(central, hook)] == ["delivered"]


def test_removing_a_webhook_stops_its_deliveries(
    central: CentralProcess, receiver: Receiver
) -> None:
    hook = add_webhook(central, receiver.url, ["version.registered"])
    assert [w["id"] for w in api_ok(central, "GET", "/api/v1/webhooks")["items"]] == [hook]
    assert api(central, "DELETE", f"/api/v1/webhooks/{hook}").status == 204
    assert api_ok(central, "GET", "/api/v1/webhooks")["items"] == []
    assert api(central, "DELETE", f"/api/v1/webhooks/{hook}").error()["code"] == "not_found"
    register(central, unique("gone"), "1.0.0")
    time.sleep(1.5)
    assert receiver.snapshot() == []
    assert deliveries(central, hook) == []
    missing = api(central, "GET", "/api/v1/webhooks/wh_nope/deliveries")
    assert missing.status == 404


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"url": "ftp://example.com/hook", "events": ["*"], "secret": SECRET}, "http"),
        ({"url": "not a url", "events": ["*"], "secret": SECRET}, "url"),
        ({"url": "http:///nohost", "events": ["*"], "secret": SECRET}, "host"),
        ({"url": "http://u:p@example.com/", "events": ["*"], "secret": SECRET}, "credentials"),
        ({"url": "http://example.com:99999/", "events": ["*"], "secret": SECRET}, "url"),
        ({"url": "http://example.com/", "events": [], "secret": SECRET}, "events"),
        ({"url": "http://example.com/", "events": "version.registered"}, "events"),
        ({"url": "http://example.com/", "events": ["Bad Pattern"]}, "pattern"),
        ({"url": "http://example.com/", "events": ["*"], "secret": "short"}, "secret"),
        ({"url": "http://example.com/", "events": ["*"], "extra": 1}, "unknown"),
        ([], "object"),
    ],
    ids=[
        "ftp",
        "not-a-url",
        "no-host",
        "credentials",
        "bad-port",
        "no-events",
        "events-not-list",
        "bad-pattern",
        "short-secret",
        "unknown-field",
        "not-object",
    ],
)
def test_bad_webhooks_are_refused(central_module: CentralProcess, body: Any, names: str) -> None:
    central = central_module
    resp = api(central, "POST", "/api/v1/webhooks", json=body)
    assert resp.status == 400, resp
    err = resp.error()
    assert err["code"] == "invalid"
    assert names in err["message"], err
    assert api_ok(central, "GET", "/api/v1/webhooks")["items"] == []


def test_only_admins_manage_webhooks(central_module: CentralProcess) -> None:
    central = central_module
    dev = api_ok(central, "POST", "/api/v1/tokens", 201, json={"name": "dev", "role": "developer"})[
        "token"
    ]
    body = {"url": "http://127.0.0.1:9/hook", "events": ["*"], "secret": SECRET}
    for method, path, payload in (
        ("POST", "/api/v1/webhooks", body),
        ("GET", "/api/v1/webhooks", None),
        ("DELETE", "/api/v1/webhooks/wh_x", None),
        ("GET", "/api/v1/webhooks/wh_x/deliveries", None),
    ):
        resp = api(central, method, path, json=payload, token=dev)
        assert resp.status == 403, (method, path, resp)
        assert "manage_webhooks" in resp.error()["message"]
    assert api_ok(central, "GET", "/api/v1/webhooks")["items"] == []


def test_the_cli_adds_lists_and_removes_webhooks(central: CentralProcess) -> None:
    added = json.loads(
        run_skiff(
            "webhook",
            "add",
            "https://hooks.example.com/skiff",
            "--events",
            "version.registered,stage.changed,alias.moved,rollout.*,drift.alert",
            "--json",
            env=central.env,
        ).stdout
    )
    assert added["secret"].startswith("whsec_")  # generated, shown once
    assert added["events"] == [
        "version.registered",
        "stage.changed",
        "alias.moved",
        "rollout.*",
        "drift.alert",
    ]
    listed = run_skiff("webhook", "list", env=central.env).stdout
    assert added["id"] in listed
    assert added["secret"] not in listed
    assert "secret" not in json.dumps(api_ok(central, "GET", "/api/v1/webhooks"))
    run_skiff("webhook", "remove", added["id"], env=central.env)
    assert "(none)" in run_skiff("webhook", "list", env=central.env).stdout
    bad = run_skiff(
        "webhook", "add", "file:///etc/passwd", "--events", "*", env=central.env, check=False
    )
    assert bad.returncode == 1
    assert "http" in bad.stderr
