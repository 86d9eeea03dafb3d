"""Failed-authentication throttling: counts per address, decay, bounds."""

from __future__ import annotations

from central.api.throttle import GOOD_TOKENS_PER_ADDRESS, AuthThrottle


def _throttle(limit: int = 3, window: float = 10.0, max_addresses: int = 100) -> AuthThrottle:
    return AuthThrottle(limit=limit, window=window, max_addresses=max_addresses)


def test_blocks_after_limit_failures_then_decays() -> None:
    t = _throttle()
    for now in (0.0, 1.0):
        t.failed("a", now)
        assert t.retry_after("a", "guess", now) is None
    t.failed("a", 2.0)
    assert t.retry_after("a", "guess", 2.0) == 8  # until the first failure is 10 s old
    assert t.retry_after("a", "guess", 9.5) == 1
    assert t.retry_after("a", "guess", 10.0) is None  # the first failure left the window
    t.failed("a", 10.0)
    assert t.retry_after("a", "guess", 10.0) == 1  # failures at 1, 2, 10: until 11


def test_other_addresses_are_not_slowed() -> None:
    t = _throttle()
    for now in (0.0, 0.1, 0.2):
        t.failed("a", now)
    assert t.retry_after("a", None, 0.3) is not None
    assert t.retry_after("b", None, 0.3) is None


def test_tokens_that_succeeded_from_the_address_keep_working() -> None:
    t = _throttle()
    t.succeeded("a", "good")
    for now in (0.0, 0.1, 0.2, 0.3, 0.4):
        t.failed("a", now)
    assert t.retry_after("a", "good", 0.5) is None
    assert t.retry_after("a", "new", 0.5) is not None
    assert t.retry_after("a", None, 0.5) is not None


def test_state_is_bounded() -> None:
    t = _throttle(max_addresses=50)
    for i in range(1000):
        t.failed(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(t) == 50
    for i in range(GOOD_TOKENS_PER_ADDRESS * 3):
        t.succeeded("a", f"token-{i}")
    t.failed("a", 0.0)
    t.failed("a", 0.0)
    t.failed("a", 0.0)
    assert t.retry_after("a", "token-0", 0.0) is not None  # forgotten: only the latest kept
    assert t.retry_after("a", f"token-{GOOD_TOKENS_PER_ADDRESS * 3 - 1}", 0.0) is None


def test_limit_zero_turns_it_off() -> None:
    t = _throttle(limit=0)
    for _ in range(100):
        t.failed("a", 0.0)
    assert t.retry_after("a", None, 0.0) is None
    assert len(t) == 0
