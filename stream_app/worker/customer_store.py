"""The ``customers`` table behind a record cache: each customer's state is written to the
changelog once per flush, not once per event.

The worker's services read and write customer states only through :class:`CustomerStore`
(never the Faust table itself). A write lands in the cache (``dirty``): readers see it at
once, the table's store and its changelog get it when the cache is flushed. That is what
Kafka Streams' record cache does, with the worker's ordering rules on top:

* a customer whose outcome sends a segment or audience change is flushed (its record
  handed to the producer) *before* that change is sent (:meth:`CustomerStore.flush_keys`),
  so a replay after a crash finds the event applied and re-sends the change, as it always
  did (:class:`~stream_app.core.pipeline.CustomerPipeline`);
* an input message is acknowledged only after a flush that covers its state
  (:meth:`~stream_app.worker.processing.Processor.flush`), and Faust commits only
  acknowledged offsets: a crash loses the cache and replays the messages it covered, and
  nothing they changed was announced;
* a flush is due every ``state_flush_interval_s`` (spread over a third of it), when
  ``state_cache_size`` customers are dirty, and at once during a rebalance (Faust waits
  for every message to be acknowledged before it gives a partition away).

The store of a table (memory or RocksDB) is written at the flush too, together with the
changelog record: a RocksDB store is never ahead of its changelog.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from stream_app.worker import patches
from stream_app.worker.metrics import Metrics

#: Records a flush writes before it lets the agent's own flush (of a changed customer) in.
FLUSH_CHUNK = 256
#: Seconds between a spread flush's looks at whether to hurry.
HURRY_POLL_S = 0.05


class CustomerStore:
    """Customer states by table key (bytes), cached until flushed to ``table``."""

    def __init__(self, table: Any, metrics: Metrics, *, flush_interval_s: float,
                 max_dirty: int) -> None:
        self.table = table
        self.metrics = metrics
        self.flush_interval_s = flush_interval_s
        self.max_dirty = max_dirty
        #: Written but not flushed: key → (state, or None for deleted; input partition).
        self.dirty: dict[bytes, tuple[bytes | None, int]] = {}
        #: Bytes of the records ``dirty`` would write (keys and states).
        self.dirty_bytes = 0
        #: Held while records are written (a chunk, or a changed customer's): two writers
        #: of one key would race to the changelog.
        self.lock = asyncio.Lock()
        self.flushed_at = time.monotonic()

    # -- reading --------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        """The customer's newest state (None: none stored, or deleted)."""
        entry = self.dirty.get(key)
        if entry is not None:
            return entry[0]
        return self.table.get(key)

    def keys(self) -> list[bytes]:
        """Every stored customer's key (a list: taken now)."""
        dirty = self.dirty
        keys = [key for key in self.table if key not in dirty]
        keys.extend(key for key, (state, _) in dirty.items() if state is not None)
        return keys

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """``(key, state)`` of every stored customer; the keys are listed up front and each
        state is read when its turn comes (a list of every state would stay for a pass)."""
        for key in self.keys():
            stored = self.get(key)
            if stored is not None:
                yield key, stored

    # -- writing --------------------------------------------------------------------------
    def put(self, key: bytes, state: bytes | None, partition: int) -> None:
        """Store ``state`` (None: delete) for ``key``, whose events arrive on input
        ``partition``; it reaches the table and its changelog at the next flush."""
        dirty = self.dirty
        old = dirty.get(key)
        if old is not None:
            self.dirty_bytes -= _size(key, old[0])
        dirty[key] = (state, partition)
        self.dirty_bytes += _size(key, state)

    def flush_due(self) -> bool:
        """Whether the cache is to be flushed now (see the module)."""
        return bool(self.dirty) and (
            len(self.dirty) >= self.max_dirty
            or time.monotonic() - self.flushed_at >= self.flush_interval_s)

    async def flush(self, spread_s: float = 0.0,
                    hurry: Callable[[], bool] | None = None) -> int:
        """Hand every dirty record to the producer; the number of records.

        In chunks of :data:`FLUSH_CHUNK`, the lock released in between: the agent, which
        flushes the customers with changes itself before it sends their changes, waits
        for one chunk, not for the whole cache (thousands of records). ``spread_s``: the
        chunks are spread over that many seconds, so that a flush takes a steady share of
        the event loop instead of stopping the events behind it for a second; until
        ``hurry()`` says otherwise (a rebalance, a stop)."""
        started = self.flushed_at = time.monotonic()
        keys, written = list(self.dirty), 0
        chunks = max(1, -(-len(keys) // FLUSH_CHUNK))
        for n, start in enumerate(range(0, len(keys), FLUSH_CHUNK), 1):
            async with self.lock:
                written += await self._write(keys[start:start + FLUSH_CHUNK])
            ahead = started + spread_s * n / chunks - time.monotonic()
            while ahead > 0 and not (hurry is not None and hurry()):
                await asyncio.sleep(min(ahead, HURRY_POLL_S))
                ahead = started + spread_s * n / chunks - time.monotonic()
            await asyncio.sleep(0)
        return written

    async def flush_keys(self, keys: Iterable[bytes]) -> None:
        """Hand the dirty records of ``keys`` to the producer (the others stay cached)."""
        async with self.lock:
            await self._write(keys)

    async def _write(self, keys: Iterable[bytes]) -> int:
        """Write the cached states of ``keys`` (those still cached: another flush may have
        written one meanwhile) to the table and its changelog, each as it is when its turn
        comes, under the lock: a customer's records reach the producer in the order of its
        states. A record leaves the cache once written, unless a newer state came meanwhile
        (until then readers find it here: the table may not have it yet)."""
        table, dirty, size, count = self.table, self.dirty, 0, 0
        for key in keys:
            entry = dirty.get(key)
            if entry is None:
                continue
            state, partition = entry
            await patches.write_through(table, key, state, partition)
            record = _size(key, state)
            if dirty.get(key) is entry:
                del dirty[key]
                self.dirty_bytes -= record
            count += 1
            size += record
        if count:
            self.metrics.state_records.inc(count)
            self.metrics.state_record_bytes.inc(size)
        return count


def _size(key: bytes, state: bytes | None) -> int:
    """Bytes of a changelog record's key and value."""
    return len(key) + (len(state) if state is not None else 0)
