"""Size of the customer state records and the pipeline's time per event (docs/features.md,
How the memory is kept).

Feeds the events of two generators through ``CustomerPipeline.process_message`` with the
default settings and no model (no assignment: the state's own cost shows): the synthetic
shop (2,000 customers, 60,000 events) and the retail shop (5,000 customers, long-tailed,
purchase-heavy), best of three passes each; prints µs per event and the stored records'
mean and largest size. Then the heavy customer of ``make bench`` (5,000 events one second
apart): its record and µs per event.

Run from the repository root: ``PYTHONHASHSEED=0 .venv/bin/python ops/bench_state.py``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

from stream_app.config import Settings
from stream_app.core.pipeline import CustomerPipeline
from stream_app.tools.bench import HEAVY_EVENTS, heavy_record_bytes
from stream_app.tools.generator import GeneratedEvent, RetailShop, SyntheticShop
from stream_app.worker.options import pipeline_options

EVENTS = 60_000


def one_pass(events: Iterable[GeneratedEvent]) -> tuple[float, list[int]]:
    """µs per event through a fresh pipeline, and the sizes of the records it stored."""
    pipeline = CustomerPipeline(pipeline_options(Settings()))
    store: dict[bytes, bytes] = {}
    events = list(events)
    started = time.perf_counter()
    for offset, e in enumerate(events):
        for out in pipeline.process_message(e.kind, e.key, e.value, store.get(e.key), e.kind,
                                            0, offset, None):
            if out.state is not None:
                store[e.key] = out.state
    seconds = time.perf_counter() - started
    return seconds / len(events) * 1e6, [len(record) for record in store.values()]


def main() -> None:
    shops: dict[str, Callable[[], Iterable[GeneratedEvent]]] = {
        "synthetic": lambda: SyntheticShop(2000, seed=3).events(EVENTS),
        "retail": lambda: RetailShop(5000, seed=3).events(EVENTS),
    }
    for name, events in shops.items():
        us, sizes = min((one_pass(events()) for _ in range(3)), key=lambda r: r[0])
        print(f"{name}: {us:.1f} µs/event; records: mean {statistics.mean(sizes):.0f} B, "
              f"largest {max(sizes):,} B ({len(sizes):,} customers)")
    started = time.perf_counter()
    size = heavy_record_bytes(Settings())
    us = (time.perf_counter() - started) / HEAVY_EVENTS * 1e6
    print(f"heavy customer ({HEAVY_EVENTS:,} events): record {size:,} B, {us:.0f} µs/event")


if __name__ == "__main__":
    main()
