"""``stream-app bench`` end to end on a small workload: its own broker, every mode, JSON."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from stream_app.tools.bench import TARGETS

MODE_FIELDS = {"events", "seconds", "events_per_s", "cpu_seconds", "peak_rss_mb"}


def run_bench(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``stream-app bench ARGS``, asserted to succeed; on failure or timeout the assertion
    shows the end of what it printed (its phases say where it stopped)."""
    argv = [sys.executable, "-m", "stream_app.tools.cli", "bench", *args]
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        printed = exc.stdout or b""  # bytes on POSIX, whatever text= says
        if isinstance(printed, bytes):
            printed = printed.decode(errors="replace")
        raise AssertionError(f"bench still running after {timeout} s; it printed:\n"
                             f"{printed[-3000:]}") from None
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


@pytest.mark.timeout(450)
def test_bench_small_run_writes_complete_results(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    run = run_bench(["--events", "3000", "--customers", "300", "--latency-seconds", "5",
                     "--out", str(out)], timeout=400)
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
    assert doc["modes"]["app"]["broker_cpu_seconds"] > 0  # the broker served the app mode
    assert set(doc["ratios"]) == {"app/ceiling", "app/naive", "app/direct"}
    assert all(ratio > 0 for ratio in doc["ratios"].values())
    assert 0 <= doc["moves_per_event"] <= doc["changes_per_event"]
    assert doc["changelog_records_per_event"] > 0 and doc["changelog_bytes_per_event"] > 0
    assert [t["met"] for t in doc["targets"]] == [
        t["value"] >= bound if op == ">=" else t["value"] <= bound
        for t, (_, _, op, bound) in zip(doc["targets"], TARGETS)]
    assert "targets" in run.stdout

    latency = doc["latency"]
    assert latency["offered_rate"] > 0 and latency["sent"] > 0
    assert latency["samples"] > 0, latency
    assert 0 <= latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"]
    assert "app" in run.stdout and "latency" in run.stdout  # the printed table


@pytest.mark.timeout(450)
def test_bench_json_array_workload_counts_events(tmp_path: Path) -> None:
    """Messages of up to 5 events of one customer: every mode reads every event."""
    out = tmp_path / "arrays.json"
    run_bench(["--events", "3000", "--customers", "300", "--events-per-message", "5",
               "--latency-seconds", "3", "--modes", "ceiling,direct,naive,app", "--out", str(out)],
              timeout=400)
    doc = orjson.loads(out.read_bytes())
    config = doc["config"]
    assert config["events"] == 3000 and config["events_per_message"] == 5
    assert 3000 / 5 <= config["messages"] < 3000
    for name, mode in doc["modes"].items():
        assert mode["events"] == 3000 and mode["events_per_s"] > 0, name
    assert doc["modes"]["app"]["messages_processed"] >= config["messages"]


@pytest.mark.timeout(600)
def test_bench_sweep_measures_every_point_on_both_stores(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    run = run_bench(["--sweep", "--sweep-customers", "150,300", "--sweep-k", "4",
                     "--sweep-events-per-customer", "3", "--sweep-stores", "memory,rocksdb",
                     "--events", "600", "--customers", "150", "--out", str(out)], timeout=550)
    doc = orjson.loads(out.read_bytes())
    points = [(r["vary"], r["customers"], r["k"], r["store"], r["events"]) for r in doc["sweep"]]
    # 3 events per customer, and at least --events: 150 customers run 600, 300 run 900.
    assert points == [("customers", 150, 32, "memory", 600), ("customers", 300, 32, "memory", 900),
                      ("customers", 150, 32, "rocksdb", 600),
                      ("customers", 300, 32, "rocksdb", 900), ("k", 150, 4, "memory", 600)]
    for row in doc["sweep"]:
        assert row["events_per_s"] > 0 and row["peak_rss_mb"] > 0, row
        assert row["rss_kb_per_customer"] == pytest.approx(
            row["peak_rss_mb"] * 1024 / row["customers"], rel=0.01)
    assert set(doc["summary"]) == {"memory", "rocksdb"}
    assert all(s["throughput_ratio"] > 0 for s in doc["summary"].values())
    assert "sweep" in run.stdout
