"""``stream-app bench`` end to end on a small workload: its own broker, every mode, JSON."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

MODE_FIELDS = {"events", "seconds", "events_per_s", "cpu_seconds", "peak_rss_mb"}


@pytest.mark.timeout(450)
def test_bench_small_run_writes_complete_results(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    run = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "bench", "--events", "3000",
         "--customers", "300", "--latency-seconds", "5", "--out", str(out)],
        capture_output=True, text=True, timeout=400,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = orjson.loads(out.read_bytes())

    assert doc["config"]["events"] == 3000
    assert {"customers", "partitions", "k", "store", "python", "cpu_count"} <= set(doc["config"])
    assert set(doc["modes"]) == {"ceiling", "naive", "direct", "app"}
    for name, mode in doc["modes"].items():
        assert set(mode) >= MODE_FIELDS, name
        assert mode["events"] == 3000, name
        assert mode["events_per_s"] > 0, name
        assert mode["seconds"] > 0 and mode["cpu_seconds"] >= 0 and mode["peak_rss_mb"] > 0, name
    assert doc["modes"]["ceiling"]["events_per_s"] > doc["modes"]["app"]["events_per_s"]
    assert set(doc["ratios"]) == {"app/ceiling", "app/naive", "app/direct"}
    assert all(ratio > 0 for ratio in doc["ratios"].values())
    assert doc["changes_per_event"] >= 0

    latency = doc["latency"]
    assert latency["offered_rate"] > 0 and latency["sent"] > 0
    assert latency["samples"] > 0, latency
    assert 0 <= latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"]
    assert "app" in run.stdout and "latency" in run.stdout  # the printed table
