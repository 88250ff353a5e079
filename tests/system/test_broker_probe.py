"""``stream-app broker-probe`` end to end, small: its own broker, the steps and the JSON."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest


@pytest.mark.timeout(120)
def test_probe_reads_every_steady_record_at_the_tail_of_a_growing_log(tmp_path: Path) -> None:
    """Each step adds the fill (in batches of the given size) and the steady load to the
    log, and the tail reader gets exactly the steady load: nothing of the fill (the probe
    seeks past it) and nothing lost."""
    out = tmp_path / "probe.json"
    run = subprocess.run(
        [sys.executable, "-m", "stream_app.tools.cli", "broker-probe", "--steps", "3",
         "--fill", "1000", "--batch-records", "25", "--rate", "400", "--seconds", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=110,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    steps = orjson.loads(out.read_bytes())["steps"]

    assert len(steps) == 3
    log_records = log_batches = 0
    for step in steps:
        log_records += 1000
        log_batches += 1000 // 25
        assert (step["log_records"], step["log_batches"]) == (log_records, log_batches)
        assert step["produced"] > 0
        assert step["consumed"] == step["produced"]
        assert step["broker_cores"] >= 0
        assert 0 <= step["delay_p50_ms"] <= step["delay_p99_ms"]
        log_records += step["produced"]
        log_batches += step["produced"]  # 400/s in 10-ms ticks over 4: a record a batch
    assert "steady load 400 records/s over 4 partitions" in run.stdout
