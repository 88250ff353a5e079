"""How a worker lives through a broker outage: clear logs, calm retries, a bounded stop.

Measured with ``tests/system/test_outage.py`` (Tansu behind a fault-injection proxy): Faust's
aiokafka clients keep the worker's state through an outage and resume by themselves once
the broker answers again, from the last committed offsets, so the features come out exact.
What they do badly, and what this module changes:

* They retry a lost broker every 100 ms in every client (``retry_backoff_ms``), which made
  ~75 connection attempts and ~190 ERROR lines per second during an outage. The worker's
  clients wait :data:`KAFKA_RETRY_BACKOFF_MS` between retries instead (a patch of
  aiokafka's defaults, :func:`stream_app.worker.patches.install_retry_backoff`, installed
  by ``create_app``), and :class:`RepeatFilter` lets each
  repeated Kafka-client warning through once per :data:`REPEAT_LOG_INTERVAL_S`.
* Nothing said plainly that the broker was gone or back. :class:`BrokerWatch` asks the
  broker for its metadata every :data:`PROBE_INTERVAL_S` and logs one line when it stops
  answering, one every :data:`REPEAT_LOG_INTERVAL_S` while it stays away, and one when it
  answers again (with the outage's length).
* SIGTERM during an outage never finished: the final commit and producer flush wait for
  the broker. :func:`bound_shutdown` gives the stop ``SHUTDOWN_TIMEOUT_S`` seconds, then
  exits with :data:`EXIT_SHUTDOWN_TIMEOUT`, skipping the final commit (at-least-once: the
  uncommitted input is read again after the restart and its redelivered events are
  dropped by ``event_id``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, KafkaError

from stream_app.config import Settings

if TYPE_CHECKING:  # (faust is imported by the worker only, not by the tools using this)
    from stream_app.worker.segmentation_app import SegmentationApp

# The logger keeps its name from before the package split (log filters and docs use it).
log = logging.getLogger("stream_app.connectivity")

#: Wait between retries of the worker's Kafka clients (aiokafka's default: 100 ms).
KAFKA_RETRY_BACKOFF_MS = 1000
#: Seconds between probes of the broker, and the longest a probe waits for an answer.
PROBE_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 4.0
#: A repeated warning of the Kafka client (or "still unreachable") once per this many s.
REPEAT_LOG_INTERVAL_S = 30.0
#: Exit status when a stop did not finish within ``SHUTDOWN_TIMEOUT_S`` (EX_TEMPFAIL:
#: a temporary failure, restart me).
EXIT_SHUTDOWN_TIMEOUT = 75
#: Loggers of the Kafka client whose repeated warnings are thinned out.
KAFKA_CLIENT_LOGGERS = ("aiokafka", "aiokafka.conn", "aiokafka.consumer.consumer",
                        "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator",
                        "aiokafka.producer.producer", "aiokafka.producer.sender")


class RepeatFilter(logging.Filter):
    """Let a warning through once per ``every`` seconds per message template.

    >>> f = RepeatFilter(every=30, clock=iter([0.0, 1.0, 31.0]).__next__)
    >>> record = logging.LogRecord("aiokafka", logging.ERROR, "", 0, "Unable %s", ("x",), None)
    >>> [f.filter(record) for _ in range(3)], f.take_suppressed()
    ([True, False, True], 1)
    """

    def __init__(self, every: float = REPEAT_LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every = every
        self.clock = clock
        self.suppressed = 0
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.msg)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self.suppressed += 1
            return False
        self._last[key] = now
        return True

    def take_suppressed(self) -> int:
        """Warnings held back since the last call."""
        count, self.suppressed = self.suppressed, 0
        return count


async def probe(servers: list[str], timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if a broker of ``servers`` answers a metadata request within ``timeout``,
    else why not."""
    client = AIOKafkaClient(bootstrap_servers=servers, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
    except asyncio.TimeoutError:
        return f"no answer within {timeout:.0f} s"
    except KafkaConnectionError:
        return "connection refused or closed"
    except (KafkaError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}".rstrip(": ")
    finally:
        await client.close()
    return None


class BrokerWatch:
    """Logs when the broker stops answering, while it stays away, and when it is back."""

    def __init__(self, servers: list[str], repeats: RepeatFilter | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.servers = servers
        self.repeats = repeats
        self.clock = clock
        self.down_since: float | None = None
        self._reported_at = 0.0

    @property
    def where(self) -> str:
        return ",".join(self.servers)

    async def check(self) -> None:
        """Probe the broker once and log what changed."""
        error = await probe(self.servers)
        self.observe(error)

    def observe(self, error: str | None) -> None:
        """Log the outcome of one probe (``error``: None when the broker answered)."""
        now = self.clock()
        if error is None:
            if self.down_since is not None:
                log.warning("Kafka at %s is reachable again after %.0f s unreachable; the "
                            "worker resumes from its last committed offsets", self.where,
                            now - self.down_since)
                self.down_since = None
            return
        if self.down_since is None:
            self.down_since = self._reported_at = now
            log.error("Kafka at %s is unreachable (%s). The worker keeps its state and retries "
                      "every %.1f s; it resumes by itself when the broker answers. SIGTERM "
                      "still stops it (see SHUTDOWN_TIMEOUT_S).", self.where, error,
                      KAFKA_RETRY_BACKOFF_MS / 1000)
        elif now - self._reported_at >= REPEAT_LOG_INTERVAL_S:
            self._reported_at = now
            held = self.repeats.take_suppressed() if self.repeats else 0
            log.error("Kafka at %s still unreachable after %.0f s (%s; %d repeated Kafka "
                      "client warnings not logged)", self.where, now - self.down_since,
                      error, held)


def bound_shutdown(app: SegmentationApp, timeout_s: float,
                   exit_process: Callable[[int], Any] = os._exit) -> None:
    """Exit with :data:`EXIT_SHUTDOWN_TIMEOUT` if ``app`` is still stopping after
    ``timeout_s`` seconds (a timer thread armed when the app starts to stop, by one of
    its ``stopping_hooks``)."""

    def give_up() -> None:
        log.error("the worker did not stop within SHUTDOWN_TIMEOUT_S=%.0f s (Kafka "
                  "unreachable?); exiting with status %d without the final commit. Input "
                  "not committed is read again after a restart; its redelivered events are "
                  "dropped by event_id.", timeout_s, EXIT_SHUTDOWN_TIMEOUT)
        logging.shutdown()
        exit_process(EXIT_SHUTDOWN_TIMEOUT)

    def arm() -> None:
        deadline = threading.Timer(timeout_s, give_up)
        deadline.daemon = True
        deadline.start()

    app.stopping_hooks.append(arm)


def watch_broker(app: SegmentationApp, settings: Settings) -> BrokerWatch:
    """Everything above but the retries (installed by ``create_app``), for the worker's
    Faust ``app`` (call before ``app.main()``)."""
    repeats = RepeatFilter()
    for name in {*KAFKA_CLIENT_LOGGERS,
                 *(n for n in logging.Logger.manager.loggerDict if n.startswith("aiokafka"))}:
        logging.getLogger(name).addFilter(repeats)
    watch = BrokerWatch(settings.bootstrap_servers, repeats)
    app.timer(interval=PROBE_INTERVAL_S, name="broker_watch")(watch.check)
    bound_shutdown(app, settings.shutdown_timeout_s)
    return watch
