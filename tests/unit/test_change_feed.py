"""The change feed on a real database file: this process's commits are handed to the
listeners as they return, another replica's are read from the log, in order, once."""

from __future__ import annotations

import pytest

from central.domain import Change
from central.services.feed import ChangeFeed
from central.stores.sqlite import SqliteStore


async def _commit(store: SqliteStore, *kinds: str) -> None:
    async with store.transaction() as tx:
        for kind in kinds:
            await tx.append_change(kind, model="m", data={"kind": kind})


async def test_a_commit_reaches_the_listeners_as_it_returns(store: SqliteStore) -> None:
    feed = ChangeFeed(store, interval=60)
    seen: list[Change] = []
    feed.subscribe(seen.append)
    await _commit(store, "before.start")  # the feed starts after it
    await feed.start()

    await _commit(store, "a", "b")
    assert [(c.kind, c.model, c.data) for c in seen] == [
        ("a", "m", {"kind": "a"}),
        ("b", "m", {"kind": "b"}),
    ]
    assert seen == await store.list_changes(seen[0].seq - 1, 10)  # as the log holds them
    await feed.catch_up()  # reading the log again tells nobody twice
    assert [c.kind for c in seen] == ["a", "b"]
    assert feed.last_seq == seen[-1].seq


async def test_another_replicas_commit_is_read_in_order(store: SqliteStore) -> None:
    feed = ChangeFeed(store, interval=60)
    seen: list[str] = []
    feed.subscribe(lambda c: seen.append(c.kind))
    await feed.start()
    other = SqliteStore(store.path)  # a second central on the same database
    await other.open()
    try:
        await _commit(other, "theirs")
        await _commit(store, "ours")
    finally:
        await other.close()
    assert seen == []  # after a gap, nothing is told out of order
    await feed.catch_up()
    assert seen == ["theirs", "ours"]


async def test_a_failing_listener_neither_stops_the_others_nor_the_commit(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    feed = ChangeFeed(store, interval=60)

    def broken(change: Change) -> None:
        raise RuntimeError("listener bug")

    seen: list[str] = []
    feed.subscribe(broken)
    feed.subscribe(lambda c: seen.append(c.kind))
    await feed.start()
    await _commit(store, "a", "b")
    assert seen == ["a", "b"]
    assert [c.kind for c in await store.list_changes(0, 10)] == ["a", "b"]
    assert "A change listener failed" in caplog.text
