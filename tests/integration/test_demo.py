"""`stream-app demo` (what `make demo` runs) shows live segment changes within 30 s."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from stream_app.worker.broker import free_port, port_open


def test_demo_shows_segment_changes_within_30_seconds():
    port, web_port = free_port(), free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_app.tools.cli", "demo", "--plain", "--duration", "40",
         "--port", str(port), "--web-port", str(web_port), "--customers", "500"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    first_change = None
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if first_change is None and line.startswith("change "):
            first_change = time.monotonic() - started
    assert proc.wait(60) == 0, "".join(lines[-30:])
    text = "".join(lines)
    assert f"http://127.0.0.1:{web_port}/metrics" in text
    assert f"http://127.0.0.1:{web_port}/segments" in text
    assert first_change is not None and first_change < 30, (first_change, text[-3000:])
    change = re.search(r"^change (\S+): (new|S\d+) -> S(\d+) \((.+)\) trigger=(\w+) model=v(\d+)$",
                       text, re.MULTILINE)
    assert change, text[-2000:]
    summaries = re.findall(r"^summary: (\d+) events sent .* (\d+) customers", text, re.MULTILINE)
    assert summaries and int(summaries[-1][0]) > 1000 and int(summaries[-1][1]) > 100
    # The example audiences are applied: the summary lists them with their members.
    audiences = re.findall(r"; audiences: (.+)$", text, re.MULTILINE)
    assert audiences and "browsers-who-never-buy" in audiences[-1], text[-2000:]
    assert "stopped broker and worker" in text
    assert not port_open("127.0.0.1", port) and not port_open("127.0.0.1", web_port)
