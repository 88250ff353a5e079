"""The worker's Faust monitor keeps what Faust reads, not its per-event statistics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from stream_app.config import Settings
from stream_app.worker.app import create_app
from stream_app.worker.segmentation_app import InboundMonitor


def test_the_worker_app_uses_the_inbound_monitor(tmp_path: Path) -> None:
    app = create_app(dataclasses.replace(Settings(), data_dir=str(tmp_path)))
    assert isinstance(app.monitor, InboundMonitor)


def test_an_event_taken_in_is_timed_and_not_counted() -> None:
    monitor = InboundMonitor()
    assert monitor.on_stream_event_in("tp-0", 7, stream=None, event=None) is None
    first = monitor.stream_inbound_time["tp-0"]
    monitor.on_stream_event_in("tp-0", 8, stream=None, event=None)
    assert monitor.stream_inbound_time["tp-0"] >= first
    assert monitor.events_total == 0 and not monitor.events_by_stream
