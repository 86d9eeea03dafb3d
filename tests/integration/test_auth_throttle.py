"""Repeated failed authentication from one address is answered 429, then decays."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support import api, api_ok, running_central

LIMIT = 5
WINDOW = 3.0


def test_failed_authentications_are_throttled_and_decay(tmp_path: Path) -> None:
    with running_central(
        tmp_path / "central", auth_failure_limit=LIMIT, auth_failure_window_seconds=WINDOW
    ) as central:
        fresh = api_ok(central, "POST", "/api/v1/tokens", 201, json={"name": "f", "role": "viewer"})
        for _ in range(20):  # successful requests are never slowed
            assert api(central, "GET", "/api/v1/models").status == 200
        for _ in range(3):  # a missing token is not a guess
            assert api(central, "GET", "/api/v1/models", token=None).status == 401

        for i in range(LIMIT):
            resp = api(central, "GET", "/api/v1/models", token=f"skf_guess{i}")
            assert resp.status == 401, resp.body
        refused = api(central, "GET", "/api/v1/models", token="skf_one-more")
        assert refused.status == 429
        assert refused.error()["code"] == "too_many_requests"
        assert 1 <= int(refused.headers["Retry-After"]) <= WINDOW
        # a token not seen from this address is not even looked up meanwhile ...
        assert api(central, "GET", "/api/v1/models", token=fresh["token"]).status == 429
        # ... while one that already authenticated here keeps working, unslowed
        assert api(central, "GET", "/api/v1/models").status == 200
        assert api(central, "GET", "/healthz", token=None).status == 200

        time.sleep(WINDOW + 0.2)
        assert api(central, "GET", "/api/v1/models", token=fresh["token"]).status == 200
        assert api(central, "GET", "/api/v1/models", token="skf_later").status == 401
