"""The pauses of Python's cyclic garbage collector in a worker.

A worker holds a large, long-lived heap (Faust's and aiokafka's machinery, the model, the
assignment index) and allocates many short-lived objects per event. CPython's collector
scans a generation whenever allocations outnumber deallocations by its threshold, and
from time to time the whole heap, with the event loop stopped. :class:`CollectorPauses`
times every collection (``stream_app_gc_pause_seconds{generation}``): its sum over time
is the share of the worker spent collecting, its buckets the pauses that add to latency
(docs/performance.md has what was measured, and why the collector is left as it is).

>>> from prometheus_client import CollectorRegistry, Histogram
>>> registry = CollectorRegistry()
>>> timer = CollectorPauses(Histogram("pauses", "", ["generation"], registry=registry))
>>> timer.install()
>>> _ = gc.collect(0)
>>> timer.uninstall()
>>> registry.get_sample_value("pauses_count", {"generation": "0"}) >= 1
True
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram


class CollectorPauses:
    """Observes the duration of each garbage collection in ``pauses`` (by generation)."""

    def __init__(self, pauses: Histogram) -> None:
        self._by_generation = [pauses.labels(str(generation)) for generation in range(3)]
        self._started = 0.0

    def install(self) -> None:
        if self._observe not in gc.callbacks:
            gc.callbacks.append(self._observe)

    def uninstall(self) -> None:
        if self._observe in gc.callbacks:
            gc.callbacks.remove(self._observe)

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._by_generation[info["generation"]].observe(time.perf_counter() - self._started)

