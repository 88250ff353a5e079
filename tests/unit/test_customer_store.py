"""The record cache in front of the customers table (stream_app/worker/customer_store.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from stream_app.worker import patches
from stream_app.worker.customer_store import CustomerStore
from stream_app.worker.metrics import Metrics


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The records handed to the changelog (``write_through``), in order."""
    log: list[tuple[Any, ...]] = []

    async def write_through(table: Any, key: Any, value: Any, partition: int) -> None:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
        log.append((key, value, partition))

    monkeypatch.setattr(patches, "write_through", write_through)
    return log


def test_a_write_is_read_at_once_and_reaches_the_changelog_once_per_flush(written):
    table = {b"old": b"s0"}
    metrics = Metrics()
    store = CustomerStore(table, metrics, flush_interval_s=60.0, max_dirty=100)
    for n in range(5):  # five events of one customer: one record
        store.put(b"a", f"a{n}".encode(), 3)
    store.put(b"old", None, 1)  # deleted: gone for readers before its tombstone is written
    assert store.get(b"a") == b"a4" and store.get(b"old") is None
    assert table == {b"old": b"s0"} and written == []
    assert sorted(store.keys()) == [b"a"]
    assert dict(store.items()) == {b"a": b"a4"}
    assert store.dirty_bytes == len(b"a") + len(b"a4") + len(b"old")
    assert asyncio.run(store.flush()) == 2
    assert written == [(b"a", b"a4", 3), (b"old", None, 1)]
    assert store.dirty_bytes == 0
    assert table == {b"a": b"a4"} and store.dirty == {}
    assert metrics.state_records._value.get() == 2
    assert metrics.state_record_bytes._value.get() == len(b"a") + len(b"a4") + len(b"old")


def test_flush_keys_writes_only_those_customers(written):
    store = CustomerStore({}, Metrics(), flush_interval_s=60.0, max_dirty=100)
    store.put(b"a", b"1", 0)
    store.put(b"b", b"2", 0)
    asyncio.run(store.flush_keys([b"b", b"unknown"]))
    assert written == [(b"b", b"2", 0)]
    assert store.dirty == {b"a": (b"1", 0)}


def test_a_flush_is_due_by_time_or_by_size(monkeypatch, written):
    now = [100.0]
    monkeypatch.setattr("time.monotonic", lambda: now[0])
    store = CustomerStore({}, Metrics(), flush_interval_s=5.0, max_dirty=3)
    assert not store.flush_due()  # nothing to write
    store.put(b"a", b"1", 0)
    assert not store.flush_due()
    now[0] += 5.0
    assert store.flush_due()
    asyncio.run(store.flush())
    for key in (b"a", b"b"):
        store.put(key, b"x", 0)
    assert not store.flush_due()
    store.put(b"c", b"x", 0)
    assert store.flush_due()  # the cache is full


def test_two_flushes_at_once_keep_the_order_of_a_customers_records(monkeypatch):
    """The flusher task and the agent may flush together: the lock keeps a newer record
    from overtaking an older one of the same customer."""
    log: list[bytes] = []

    async def write_through(table: Any, key: Any, value: Any, partition: int) -> None:
        await asyncio.sleep(0.02 if value == b"old" else 0)  # a slow hand-over
        log.append(value)

    monkeypatch.setattr(patches, "write_through", write_through)
    store = CustomerStore({}, Metrics(), flush_interval_s=5.0, max_dirty=100)

    async def both() -> None:
        store.put(b"a", b"old", 0)
        store.put(b"b", b"other", 0)
        first = asyncio.ensure_future(store.flush())
        await asyncio.sleep(0)  # the first flush has taken the cache and is writing
        store.put(b"a", b"new", 0)
        await asyncio.gather(first, store.flush_keys([b"a"]))

    asyncio.run(both())
    assert log.index(b"old") < log.index(b"new")


def test_a_state_being_flushed_stays_readable_and_a_newer_one_stays_dirty(monkeypatch):
    """While a flush hands records over one by one, the agent reads and writes: it must
    see every customer's newest state (not the table's older one), and a state written
    meanwhile is flushed next time, after the older record."""
    table: dict[bytes, bytes] = {b"b": b"b0"}
    log: list[tuple[bytes, bytes]] = []

    async def write_through(table: Any, key: Any, value: Any, partition: int) -> None:
        await asyncio.sleep(0.01)  # the hand-over yields to the agent
        table[key] = value
        log.append((key, value))

    monkeypatch.setattr(patches, "write_through", write_through)
    store = CustomerStore(table, Metrics(), flush_interval_s=5.0, max_dirty=100)
    seen: list[bytes | None] = []

    async def agent() -> None:
        await asyncio.sleep(0.005)  # the flush is writing "a"
        seen.append(store.get(b"b"))  # not written yet: the cache has it
        store.put(b"a", b"a2", 0)  # newer than the record being written

    async def both() -> None:
        store.put(b"a", b"a1", 0)
        store.put(b"b", b"b1", 0)
        await asyncio.gather(store.flush(), agent())

    asyncio.run(both())
    assert seen == [b"b1"]
    assert log == [(b"a", b"a1"), (b"b", b"b1")]
    assert store.dirty == {b"a": (b"a2", 0)} and store.get(b"a") == b"a2"
    asyncio.run(store.flush())
    assert log[-1] == (b"a", b"a2") and store.dirty == {}


def test_a_spread_flush_takes_its_time_unless_told_to_hurry(written):
    store = CustomerStore({}, Metrics(), flush_interval_s=5.0, max_dirty=10_000)

    def timed(hurry: Any = None) -> float:
        for n in range(600):  # three chunks
            store.put(f"k{n}".encode(), b"x", 0)
        started = time.monotonic()
        assert asyncio.run(store.flush(0.3, hurry)) == 600
        return time.monotonic() - started

    assert timed() >= 0.3 and store.dirty == {}
    assert timed(lambda: True) < 0.3 and len(written) == 1200
