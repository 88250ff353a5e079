"""Gauges refreshed from the worker's state: customers, segment and audience sizes, and
the consumer lag of each owned input partition (every 5 s and at each ``GET /metrics``)."""

from __future__ import annotations

import logging
from typing import Any

from stream_app.core.pipeline import CustomerPipeline
from stream_app.worker.assignment import Assignment
from stream_app.worker.metrics import Metrics
from stream_app.worker.sizes import SegmentSizes, summed

log = logging.getLogger("stream_app")

#: Seconds between two refreshes of the gauges.
GAUGE_INTERVAL_S = 5.0


class Gauges:
    """The gauges of :class:`~stream_app.worker.metrics.Metrics` that are set, not counted."""

    def __init__(self, *, metrics: Metrics, pipeline: CustomerPipeline,
                 sizes: SegmentSizes[int], audience_sizes: SegmentSizes[str],
                 assignment: Assignment) -> None:
        self.metrics = metrics
        self.pipeline = pipeline
        self.sizes = sizes
        self.audience_sizes = audience_sizes
        self.assignment = assignment

    def register(self, app: Any) -> None:
        """The timer that refreshes the gauges."""

        @app.timer(interval=GAUGE_INTERVAL_S)
        async def update_gauges() -> None:
            await self.refresh()

    def local_sizes(self) -> dict[int, dict[int, int]]:
        """Customers per segment of each partition this worker owns."""
        return self.sizes.local(self.assignment.local_partitions())

    async def refresh(self) -> None:
        """Customers, segment sizes and input lag, as of now."""
        metrics, pipeline = self.metrics, self.pipeline
        totals = summed(self.local_sizes())
        metrics.customers.set(sum(totals.values()))
        live = pipeline.model.active_ids if pipeline.model else []
        metrics.segment_size.clear()  # retired segments go
        for segment in live:
            metrics.segment_size.labels(str(segment)).set(totals.get(segment, 0))
        members = summed(self.audience_sizes.local(self.assignment.local_partitions()))
        metrics.audience_members.clear()  # audiences no longer defined go
        for audience in pipeline.audiences.audiences:
            metrics.audience_members.labels(audience.name).set(members.get(audience.name, 0))
        await self.input_lag()

    async def input_lag(self) -> int:
        """Set each owned input partition's lag gauge; the sum over them."""
        total = 0
        for tp, lag in self.assignment.lags().items():
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
            total += lag
        return total
