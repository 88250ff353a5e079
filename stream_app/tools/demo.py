"""``stream-app demo``: broker, worker and generator, with live segment changes on screen.

Everything runs on this machine: the embedded broker (memory storage), one worker as a
child process (log in ``<data>/worker.log``), and the synthetic shop producing in this
process. The screen shows each segment change as it is published and a running summary
read from the worker's own HTTP API. Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from stream_app.config import Settings
from stream_app.tools.generator import SyntheticShop, produce
from stream_app.worker.broker import EmbeddedBroker, free_port, port_open

#: The audiences the demo starts with (a copy in the demo's folder, to edit while it runs).
EXAMPLE_AUDIENCES = Path(__file__).resolve().parents[2] / "examples" / "audiences.yaml"


def http_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return orjson.loads(resp.read())


class Demo:
    """One demo run; :meth:`run` returns the process exit status."""

    def __init__(self, customers: int = 2000, rate: float = 300.0, port: int = 9092,
                 web_port: int = 6066, segments_k: int = 16, duration: float = 0.0,
                 plain: bool = False, audiences: Path | None = None) -> None:
        self.customers = customers
        self.rate = rate
        self.port = port if not port_open("127.0.0.1", port) else free_port()
        self.web_port = web_port if not port_open("127.0.0.1", web_port) else free_port()
        self.segments_k = segments_k
        self.duration = duration
        self.plain = plain
        self.console = Console()
        self.data_dir = Path(tempfile.mkdtemp(prefix="stream-app-demo-"))
        self.sent = 0
        self.changes: deque[dict[str, Any]] = deque(maxlen=14)
        self.change_count = 0
        self.segments: dict[str, Any] = {}
        self.audiences: dict[str, Any] = {}
        self.audiences_file: Path | None = None
        if audiences is not None:  # a copy: edit it while the demo runs
            self.audiences_file = self.data_dir / "audiences.yaml"
            shutil.copyfile(audiences, self.audiences_file)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def run(self) -> int:
        say = self.console.print
        broker = EmbeddedBroker(port=self.port, log_path=self.data_dir / "broker.log")
        broker.start()
        say(f"[bold]broker[/]   {broker.bootstrap_servers} (Tansu, memory storage)")
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "STREAM_APP_EMBEDDED_BROKER": "true",
            "WEB_PORT": str(self.web_port),
            "SEGMENTS_K": str(self.segments_k),
            "DATA_DIR": str(self.data_dir / "state"),
            "MODEL_PUBLISH_INTERVAL": os.environ.get("MODEL_PUBLISH_INTERVAL", "3"),
            # One worker on a broker that lives as long as the demo: no changelog recovery
            # to protect, so normal producer batches. With one record per batch (the
            # embedded default) the producer fell behind at 300 events/s: "producer buffer
            # full" 683 times in 10 minutes, latency p50 20 s (README, Operations).
            "PRODUCER_BATCHING": os.environ.get("PRODUCER_BATCHING", "on"),
        }
        if self.audiences_file is not None:
            env["AUDIENCES_FILE"] = str(self.audiences_file)
        log = open(self.data_dir / "worker.log", "wb")
        worker = subprocess.Popen([sys.executable, "-m", "stream_app.tools.cli", "worker"], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        say(f"[bold]worker[/]   pid {worker.pid}, log {self.data_dir / 'worker.log'}")
        say(f"[bold]map[/]      {self.api}/   (the live segment map, in a browser)")
        say(f"[bold]HTTP API[/] {self.api}/segments   {self.api}/customers/<customer_id>   "
            f"{self.api}/audiences")
        if self.audiences_file is not None:
            say(f"[bold]audiences[/] {self.audiences_file} (edit it: applied within 5 s; "
                "changes on topic audience-changes)")
        say(f"[bold]watch[/]    stream-app watch --bootstrap {broker.bootstrap_servers}"
            "   (another terminal; --audiences for audience changes)")
        say(f"[bold]metrics[/]  {self.api}/metrics   (health: {self.api}/health)")
        say(f"[bold]input[/]    {self.customers} customers at {self.rate:.0f} events/s; "
            "Ctrl-C stops everything")
        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt  # SIGTERM / SIGHUP stop everything like Ctrl-C

        signal.signal(signal.SIGTERM, interrupt)
        signal.signal(signal.SIGHUP, interrupt)
        try:
            return asyncio.run(self._main(broker.bootstrap_servers, worker))
        except KeyboardInterrupt:
            return 0
        finally:
            # The clean-up runs to its end: the same signal sent again (`timeout make demo`
            # reaches the demo from timeout and from make) would break into it.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
            log.close()
            broker.stop()
            say("stopped broker and worker")

    async def _main(self, bootstrap: str, worker: subprocess.Popen[bytes]) -> int:
        """:meth:`_show` until it ends or Ctrl-C, SIGTERM or SIGHUP cancels it (its tasks
        then stop cleanly: the shop's producer flushes and closes)."""
        main = asyncio.current_task()
        assert main is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, main.cancel)
        try:
            return await self._show(bootstrap, worker)
        except asyncio.CancelledError:
            return 0

    async def _show(self, bootstrap: str, worker: subprocess.Popen[bytes]) -> int:
        """Wait for the worker, then run the shop, follow the changes and show them."""
        deadline = time.monotonic() + 60
        while not self._healthy():
            if worker.poll() is not None:
                self.console.print(f"[red]worker exited with {worker.returncode}; see its log")
                return 1
            if time.monotonic() > deadline:
                self.console.print("[red]worker did not become healthy within 60 s")
                return 1
            await asyncio.sleep(0.3)
        shop = SyntheticShop(self.customers, seed=11,
                             start_ms=int(time.time() * 1000) - 30 * 86_400_000,
                             step_ms=max(1, int(86_400_000 / 60 / self.rate)))

        def clock(i: int) -> int:  # a day of event time per minute, never ahead of now
            return min(shop.start_ms + i * shop.step_ms, int(time.time() * 1000))

        topics = Settings().kind_topics  # the worker runs with the default topic names
        tasks = [
            asyncio.create_task(produce([bootstrap], topics, shop.events(None, clock), self.rate,
                                        on_sent=self._on_sent)),
            asyncio.create_task(self._follow_changes(bootstrap)),
            asyncio.create_task(self._poll_segments()),
        ]
        started = time.monotonic()
        try:
            if self.plain:
                await self._print_plain(started, worker)
            else:
                with Live(self._screen(started), console=self.console,
                          refresh_per_second=4) as live:
                    while self._running(started, worker):
                        live.update(self._screen(started))
                        await asyncio.sleep(0.25)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return 0 if worker.poll() is None else 1

    def _running(self, started: float, worker: subprocess.Popen[bytes]) -> bool:
        if worker.poll() is not None:
            return False
        return not self.duration or time.monotonic() - started < self.duration

    def _healthy(self) -> bool:
        try:
            return http_json(f"{self.api}/health", 0.5)["status"] == "ok"
        except OSError:
            return False

    def _on_sent(self, sent: int) -> None:
        self.sent = sent

    async def _follow_changes(self, bootstrap: str) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer("segment-changes", bootstrap_servers=bootstrap,
                                    group_id=None, auto_offset_reset="earliest")
        await consumer.start()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    for message in messages:
                        self.change_count += 1
                        self.changes.append(orjson.loads(message.value))
        finally:
            await consumer.stop()

    async def _poll_segments(self) -> None:
        while True:
            with contextlib.suppress(OSError, ValueError):
                self.segments = await asyncio.to_thread(http_json, f"{self.api}/segments")
                if self.audiences_file is not None:
                    self.audiences = await asyncio.to_thread(http_json,
                                                             f"{self.api}/audiences")
            await asyncio.sleep(2)

    async def _print_plain(self, started: float, worker: subprocess.Popen[bytes]) -> None:
        printed, last_summary = 0, 0.0
        while self._running(started, worker):
            fresh = self.change_count - printed
            for change in list(self.changes)[-min(fresh, len(self.changes)):] if fresh else []:
                print(self._change_line(change), flush=True)
            printed = self.change_count
            if time.monotonic() - last_summary >= 5:
                last_summary = time.monotonic()
                print(self._summary(started), flush=True)
            await asyncio.sleep(0.5)

    @staticmethod
    def _change_line(c: dict[str, Any]) -> str:
        before = "new" if c["previous_segment"] is None else f"S{c['previous_segment']}"
        return (f"change {c['customer_id']}: {before} -> S{c['segment']} "
                f"({c['segment_label']}) trigger={c['trigger']} model=v{c['model_version']}")

    def _summary(self, started: float) -> str:
        elapsed = max(time.monotonic() - started, 1e-9)
        seg = self.segments
        members = ", ".join(f"{a['name']} {a['members']}"
                            for a in self.audiences.get("audiences", []))
        return (f"summary: {self.sent} events sent ({self.sent / elapsed:.0f}/s), "
                f"{self.change_count} segment changes, {seg.get('customers', 0)} customers, "
                f"model v{seg.get('model_version', 0)}"
                + (f"; audiences: {members}" if members else ""))

    def _screen(self, started: float) -> Group:
        changes = Table(title="latest segment changes", expand=True)
        for column in ("customer", "from", "to", "label", "trigger", "model"):
            changes.add_column(column)
        for c in reversed(self.changes):
            changes.add_row(c["customer_id"],
                            "new" if c["previous_segment"] is None else str(c["previous_segment"]),
                            str(c["segment"]), c["segment_label"], c["trigger"],
                            f"v{c['model_version']}")
        sizes = Table(title="segments (largest first)", expand=True)
        for column in ("id", "size", "label"):
            sizes.add_column(column)
        ranked = sorted(self.segments.get("segments", []), key=lambda s: -s["size"])
        for s in ranked[:10]:
            sizes.add_row(str(s["id"]), str(s["size"]), s["label"])
        return Group(Panel(self._summary(started), title="stream-app demo"), changes, sizes)
