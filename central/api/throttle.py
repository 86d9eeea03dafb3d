"""Slowing down token guessing: failed authentications per client address.

After ``limit`` failed authentications from one address within ``window`` seconds, that
address gets 429 with ``Retry-After`` until its oldest counted failure is ``window``
seconds old (so the block decays on its own). Tokens that already authenticated from the
address keep working meanwhile, so one misconfigured client behind a NAT does not lock
out the others; new tokens are not even looked up. The state lives in memory, bounded
to ``max_addresses`` addresses (least recently seen dropped first).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

GOOD_TOKENS_PER_ADDRESS = 16  # token hashes remembered as valid for one address


@dataclass(slots=True)
class _Client:
    failures: deque[float] = field(default_factory=deque)
    good: OrderedDict[str, None] = field(default_factory=OrderedDict)


class AuthThrottle:
    """Failed-authentication counts per address. Pure: the caller passes the time."""

    def __init__(self, *, limit: int, window: float, max_addresses: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    def retry_after(self, address: str, token_hash: str | None, now: float) -> int | None:
        """Seconds ``address`` must wait before trying ``token_hash``; None when it may."""
        if self.limit <= 0:
            return None
        client = self._clients.get(address)
        if client is None:
            return None
        self._expire(client, now)
        if len(client.failures) < self.limit or (
            token_hash is not None and token_hash in client.good
        ):
            return None
        return max(1, math.ceil(client.failures[0] + self.window - now))

    def failed(self, address: str, now: float) -> None:
        """Count one failed authentication from ``address``."""
        if self.limit <= 0:
            return
        client = self._client(address)
        self._expire(client, now)
        client.failures.append(now)
        while len(client.failures) > self.limit:
            client.failures.popleft()

    def succeeded(self, address: str, token_hash: str) -> None:
        """Remember that ``token_hash`` is valid from ``address``."""
        if self.limit <= 0:
            return
        client = self._client(address)
        client.good[token_hash] = None
        client.good.move_to_end(token_hash)
        while len(client.good) > GOOD_TOKENS_PER_ADDRESS:
            client.good.popitem(last=False)

    def __len__(self) -> int:
        return len(self._clients)

    def _client(self, address: str) -> _Client:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = _Client()
            while len(self._clients) > self.max_addresses:
                self._clients.popitem(last=False)
        self._clients.move_to_end(address)
        return client

    def _expire(self, client: _Client, now: float) -> None:
        while client.failures and client.failures[0] + self.window <= now:
            client.failures.popleft()
