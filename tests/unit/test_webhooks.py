"""Webhook signing, backoff and input checks, and the receiver recipe of docs/webhooks.md."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

import pytest

from central.domain import Change
from central.services.webhook_delivery import backoff, event_body, signature
from central.services.webhooks import check_events, check_secret, check_url, matches
from shared.errors import InvalidInputError

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
NOW = 1_795_600_000


def _doc_receiver() -> dict[str, Any]:
    """Run the doc's receiver example, without its last line (which serves forever)."""
    code = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert code is not None, "docs/webhooks.md has no Python example"
    lines = [line for line in code.group(1).splitlines() if not line.startswith("web.run_app")]
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), str(DOC), "exec"), namespace)  # noqa: S102 - our own doc
    return namespace


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"id":"evt_1"}'
    expected = hmac.new(b"k" * 16, b"%d." % NOW + body, hashlib.sha256).hexdigest()
    assert signature("k" * 16, NOW, body) == f"t={NOW},v1={expected}"


def test_the_doc_receiver_accepts_what_central_signs() -> None:
    receiver = _doc_receiver()
    secret = receiver["SECRET"].decode()
    body = b'{"event":"alias.moved"}'
    header = signature(secret, NOW, body)
    assert receiver["verified"](header, body, NOW + 10)


@pytest.mark.parametrize(
    "case",
    ["tampered body", "replayed later", "future timestamp", "wrong secret", "no header"],
)
def test_the_doc_receiver_refuses_forgeries_and_replays(case: str) -> None:
    receiver = _doc_receiver()
    secret = receiver["SECRET"].decode()
    body, now = b'{"event":"alias.moved"}', NOW
    header = signature(secret, NOW, body)
    if case == "tampered body":
        body = b'{"event":"alias.deleted"}'
    elif case == "replayed later":
        now = NOW + 301
    elif case == "future timestamp":
        now = NOW - 301
    elif case == "wrong secret":
        header = signature("another secret, long enough", NOW, body)
    else:
        header = ""
    assert not receiver["verified"](header, body, now)


def test_backoff_doubles_from_one_second_up_to_an_hour_with_jitter() -> None:
    for attempts, nominal in ((1, 1.0), (2, 2.0), (3, 4.0), (10, 512.0), (13, 3600.0)):
        for _ in range(20):
            assert 0.8 * nominal <= backoff(attempts) <= 1.2 * nominal
    assert backoff(10_000) <= 1.2 * 3600


def test_event_body_names_the_event_by_its_seq() -> None:
    change = Change(7, "2026-11-26T10:00:00Z", "alias.moved", "m", "1.0.0", "prod", {"a": 1})
    doc = json.loads(event_body(change))
    assert doc == {
        "id": "evt_7",
        "event": "alias.moved",
        "at": "2026-11-26T10:00:00Z",
        "data": change.to_dict(),
    }


def test_patterns_match_change_kinds() -> None:
    assert matches(("rollout.*",), "rollout.started")
    assert matches(("version.registered", "alias.*"), "alias.deleted")
    assert not matches(("alias.moved",), "alias.deleted")
    assert not matches(("stage.*",), "version.registered")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h/x",
        "file:///etc/passwd",
        "http://",
        "https://user:pw@h/",
        "http://h:70000/",
        "http://h/x#frag",
        "http://h/a b",
        "h/x",
        "",
        None,
        "http://h/" + "x" * 3000,
    ],
)
def test_bad_urls_are_refused(url: Any) -> None:
    with pytest.raises(InvalidInputError):
        check_url(url)


def test_good_urls_pass() -> None:
    for url in ("http://127.0.0.1:9000/hook", "https://ci.example.com/skiff?team=ml"):
        assert check_url(url) == url


@pytest.mark.parametrize("events", [[], "alias.moved", ["Alias"], [""], [1], ["a b"], ["x"] * 51])
def test_bad_event_lists_are_refused(events: Any) -> None:
    with pytest.raises(InvalidInputError):
        check_events(events)


def test_event_lists_lose_duplicates() -> None:
    assert check_events(["rollout.*", "drift.alert", "rollout.*"]) == ("rollout.*", "drift.alert")


@pytest.mark.parametrize("secret", ["short", "x" * 257, 12345678901234567, "tab\tinside-16chars"])
def test_bad_secrets_are_refused(secret: Any) -> None:
    with pytest.raises(InvalidInputError):
        check_secret(secret)
