"""Re-judging stored customers: re-scoring after a model, sweeps as event time passes,
audience passes, and what a worker does while it catches up after a rebalance.

The passes queue control messages (``schemas/control``) on the co-partitioned control
topic, one per chunk of a partition's customers, paced (stream_app/worker/pacing.py); the
``process`` agent hands each control message back to :meth:`Rejudge.control`, which judges
the batch's customers again. While the worker reads what its partitions held at their
assignment (stream_app/worker/catch_up.py), no pass is queued, and each customer's last
changes are sent again before its first message (:meth:`Rejudge.first_touch`), so that the
replay after a crash re-sends what the crash lost before anything newer is decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import faust
import orjson
from faust.exceptions import NotReady
from prometheus_client import Counter

from stream_app.config import Settings
from stream_app.core.changes import event_digest
from stream_app.core.pipeline import CustomerPipeline, Outcome
from stream_app.core.state import CustomerState
from stream_app.model.assignments import AssignmentIndex
from stream_app.model.segmentation import SegmentModel
from stream_app.worker.assignment import Assignment
from stream_app.worker.catch_up import CatchUp
from stream_app.worker.control import ControlBatches, last_control_causes
from stream_app.worker.customer_store import CustomerStore
from stream_app.worker.metrics import Metrics
from stream_app.worker.pacing import Pace
from stream_app.worker.sizes import SegmentSizes, home_and_bucket, summary
from stream_app.worker.sweep import SweepSchedule

log = logging.getLogger("stream_app")

#: Customers per control message (a re-scoring or sweep pass sends one message per chunk of
#: a partition's customers, not one per customer; small enough that the events queued
#: behind one wait ~25 ms).
CONTROL_CHUNK = 64
#: Input (and control) messages waiting beyond which re-scoring and sweep passes hold back
#: before each control message (at most a second each: they slow down, never stop).
HOLD_LAG = 1_000
#: Re-judgement passes wait after a rebalance until the assigned partitions are read up to
#: where they ended at the assignment (stream_app/worker/catch_up.py), at most this long; the
#: positions are looked at every CATCH_UP_POLL_S.
CATCH_UP_MAX_WAIT_S = 30.0
CATCH_UP_POLL_S = 0.2
CATCH_UP_ENDS_WAIT_S = 10.0  # for the end offsets, at each rebalance


class Rejudge:
    """The re-judgement passes of one worker and the control messages they queue.

    ``rescore_wanted`` and ``audiences_wanted`` are set when a pass is due (by
    :class:`~stream_app.worker.model_service.ModelService`, and here); ``partitions`` is the
    input partition count (a customer's home partition).
    """

    def __init__(self, *, app: Any, settings: Settings, partitions: int,
                 pipeline: CustomerPipeline, customers: CustomerStore, control_topic: Any,
                 metrics: Metrics, assignment: Assignment, index: AssignmentIndex,
                 schedule: SweepSchedule, sizes: SegmentSizes[int],
                 audience_sizes: SegmentSizes[str], rescore_wanted: asyncio.Event,
                 audiences_wanted: asyncio.Event) -> None:
        self.app = app
        self.settings = settings
        self.partitions = partitions
        self.pipeline = pipeline
        self.customers = customers
        self.control_topic = control_topic
        self.metrics = metrics
        self.assignment = assignment
        self.index = index
        self.schedule = schedule
        self.sizes = sizes
        self.audience_sizes = audience_sizes
        self.rescore_wanted = rescore_wanted
        self.audiences_wanted = audiences_wanted
        #: The partitions whose customers are all in the index (a full pass since they
        #: were assigned here).
        self.indexed: set[int] = set()
        #: Whether the records the partitions held at their assignment are read: only then
        #: does the worker queue re-judgements itself (re-scoring, sweeps, audience
        #: passes), so that the replay after a crash re-sends what the crash lost before
        #: anything newer about the same customers is decided.
        self.catch_up = CatchUp(CATCH_UP_MAX_WAIT_S)
        #: Customers whose last changes were sent again while catching up (first_touch).
        self.restated: set[bytes] = set()
        #: The customers of the control messages queued here and not processed yet: the
        #: messages name no customer (stream_app/worker/control.py).
        self.batches = ControlBatches()
        #: While catching up: per partition, the customers whose last change a control
        #: message caused, by the cause's digest (built at the partition's first control
        #: message whose batch is not held here, dropped when the catch-up is done; see
        #: :meth:`control`).
        self.replay_causes: dict[int, dict[int, list[bytes]]] = {}

    def register(self, app: Any) -> None:
        """The passes' tasks and timer, the rebalance signals, and the seek report."""
        rejudge, settings = self, self.settings
        app.on_seek = self.on_seek

        @app.on_partitions_revoked.connect
        async def forget_revoked(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
            rejudge.forget_revoked(revoked)

        @app.on_rebalance_complete.connect
        async def note_assignment_ends(app: faust.App, **kwargs: Any) -> None:
            await rejudge.note_assignment_ends()

        @app.on_rebalance_complete.connect
        async def count_segments(app: faust.App, **kwargs: Any) -> None:
            await rejudge.count_segments()

        @app.task
        async def rescore() -> None:
            await rejudge.rescore()

        @app.timer(interval=settings.sweep_interval_s)
        async def sweep() -> None:
            await rejudge.sweep()

        @app.task
        async def judge_audiences_again() -> None:
            await rejudge.judge_audiences_again()

        @app.task
        async def follow_catch_up() -> None:
            await rejudge.follow_catch_up()

    # -- control messages and the catch-up ------------------------------------------------
    def on_seek(self, starts: dict[Any, int]) -> None:
        """Where the input partitions' reading started at a seek (stream_app/worker/seek.py)."""
        self.assignment.seeked.update(starts)
        self.catch_up.reached(starts, time.monotonic())

    def first_touch(self, key: bytes) -> bool:
        """Whether to send ``key``'s last changes again before its message: its first one
        while the worker reads what its partitions held at their assignment
        (CustomerPipeline.restate: a crash may have lost them, and the replay re-sends
        them only while they are the customer's last)."""
        if self.catch_up.done.is_set():
            if self.restated:
                self.restated.clear()
            if self.replay_causes:
                self.replay_causes.clear()
            return False
        if key in self.restated:
            return False
        self.restated.add(key)
        return True

    def control(self, message: Any) -> Iterator[tuple[bytes, Outcome]]:
        """Work queued by this app on stored customers of the message's partition (see
        ``schemas/control``): ``(customer key, outcome)`` for each. The message names its
        batch, whose customers this worker holds (stream_app/worker/control.py). The cause
        of a move names the request and the message, so a redelivered message re-sends the
        changes it made (a crash may have lost them after their state was stored): a
        batch this worker does not hold, read while catching up, re-sends the last
        changes of the customers whose last change it caused (:meth:`caused_by`); after
        the catch-up it is skipped (the partition's customers are re-judged anyway)."""
        batches, pipeline, customers = self.batches, self.pipeline, self.customers
        try:
            op = orjson.loads(message.value)
            name = op["op"]
            at = int(op["at"]) if name == "sweep" else 0
            version = int(op.get("model", 0))
            definitions = str(op.get("version", ""))
            keys = (batches.take(message.partition, int(op["batch"]))
                    if op.get("worker") == batches.worker else None)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.error("ignored an unreadable control message: %s", exc)
            return
        where = f"@{message.partition}/{message.offset}"
        cause = (f"model:{version}{where}" if name == "rescore" else
                 f"sweep:{at}{where}" if name == "sweep" else
                 f"audiences:{definitions}{where}")
        if keys is None:  # queued before a restart, or by the partition's previous owner
            replayed = self.caused_by(message.partition, cause)
            self.metrics.control_unknown.labels("replayed" if replayed is not None
                                                else "skipped").inc()
            # The work itself is done again by a pass over the partition, which is not
            # indexed here yet: every customer of it is re-scored (and so scheduled for
            # its sweeps), or judged by the current audience definitions.
            if name == "audiences":
                self.audiences_wanted.set()
            else:
                self.rescore_wanted.set()
                self.metrics.rescore_waiting.set(1)
            for key in replayed or ():
                stored = customers.get(key)
                if stored is not None and self.first_touch(key):
                    yield key, pipeline.restate(key.decode(), stored)
            return
        for key in keys:
            stored = customers.get(key)
            if stored is None:
                continue
            if self.first_touch(key):
                yield key, pipeline.restate(key.decode(), stored)
            if name == "rescore":
                yield key, pipeline.rescore(key.decode(), stored, cause)
            elif name == "sweep":
                yield key, pipeline.sweep(key.decode(), stored, at, cause)
            elif name == "audiences":
                yield key, pipeline.reevaluate_audiences(key.decode(), stored, cause)

    def caused_by(self, partition: int, cause: str) -> list[bytes] | None:
        """While catching up: the customers of ``partition`` whose last segment or
        audience change ``cause`` caused (None once caught up). The first call for a
        partition reads its customers' states once (only after a restart or a rebalance
        that brought control messages queued elsewhere)."""
        if self.catch_up.done.is_set():
            self.replay_causes.clear()
            return None
        causes = self.replay_causes.get(partition)
        if causes is None:
            causes = self.replay_causes[partition] = {}
            for key, stored in self.stored_customers():
                if home_and_bucket(key, stored, self.partitions)[0] == partition:
                    for digest in last_control_causes(stored):
                        causes.setdefault(digest, []).append(key)
        return causes.get(event_digest(cause), [])

    def forget_customer(self, key: bytes, partition: int) -> None:
        """Drop an erased customer, or one that withdrew consent, from the pending control
        batches and the catch-up's sets (docs/privacy.md; the sink forgets the rest)."""
        self.batches.forget(key)
        self.restated.discard(key)
        for keys in self.replay_causes.get(partition, {}).values():
            if key in keys:
                keys.remove(key)

    def forget_revoked(self, revoked: set[Any]) -> None:
        """Drop what this worker kept about the partitions it lost."""
        self.catch_up.rebalancing()
        self.restated.clear()
        gone = {tp.partition for tp in revoked}
        self.indexed.difference_update(gone)
        self.index.drop_partitions(gone)
        self.batches.drop_partitions(gone)  # their messages go to the next owner: skipped
        for partition in gone:
            self.replay_causes.pop(partition, None)
        for tp in revoked:
            if tp.topic in self.assignment.input_topics:
                self.assignment.revoked(tp)
                with contextlib.suppress(KeyError):  # KeyError: never measured
                    self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    async def note_assignment_ends(self) -> None:
        """The end offsets of the assigned input and control partitions, to be read up to
        before re-judgements are queued (an unreachable broker: not waited for)."""
        try:
            ends = await asyncio.wait_for(
                self.app.consumer.highwaters(*self.assignment.inputs()),
                CATCH_UP_ENDS_WAIT_S)
        except Exception as exc:  # any failure: do not hold the passes back
            log.warning("end offsets of the assigned partitions unknown (%r): re-judgements "
                        "do not wait for their records", exc)
            ends = {}
        self.catch_up.assigned(ends, time.monotonic())

    async def follow_catch_up(self) -> None:
        """Tell ``catch_up`` the positions of the partitions it waits for."""
        catch_up, processed = self.catch_up, self.assignment.processed
        while True:
            await asyncio.sleep(CATCH_UP_POLL_S)
            if catch_up.done.is_set():
                continue
            catch_up.reached({tp: processed[tp] + 1 for tp in catch_up.pending()
                              if tp in processed}, time.monotonic())

    async def count_segments(self) -> None:
        """Count the owned partitions' customers per segment and audience (tables
        recovered, streams not resumed yet), and see whether any of them was judged by
        other audience definitions (elsewhere); yields to the event loop every few
        thousand customers."""
        counted, members, outdated = [], [], False
        local_partitions = self.assignment.local_partitions
        mine, version = local_partitions(), self.pipeline.audiences.version
        defined = bool(self.pipeline.audiences)
        for n, (key, stored) in enumerate(self.stored_customers()):
            home, bucket, audiences = summary(key, stored, self.partitions)
            counted.append((home, bucket))
            members.extend((home, name) for name in audiences)
            outdated = outdated or (home in mine and CustomerState.audiences_outdated(
                stored, version, defined))
            if n % 4096 == 4095:
                await asyncio.sleep(0)
        self.sizes.recount(counted, local_partitions())
        self.audience_sizes.recount(members, local_partitions())
        if self.settings.audiences_file and outdated:
            self.audiences_wanted.set()

    # -- the passes -----------------------------------------------------------------------
    async def queue_control(self, op: dict[str, Any], work: Iterable[tuple[int, bytes]],
                            rate: float, sent: Counter) -> None:
        """Queue ``op`` for customers ``(partition, key)``: one control message per chunk
        of a partition's customers, at most ``rate`` customers a second, counted in
        ``sent``."""
        app, batches = self.app, self.batches
        pace = Pace(rate, hold=self.input_lags)
        chunks: dict[int, list[bytes]] = defaultdict(list)

        async def send(partition: int, keys: list[bytes]) -> None:
            """One message for ``keys`` (handed over: held until the message is
            processed); it names the batch, not the customers (stream_app/worker/control.py)."""
            if partition not in self.assignment.local_partitions():
                return  # revoked meanwhile: its next owner re-judges its customers
            n = len(keys)
            batch = batches.add(partition, keys)
            value = orjson.dumps({**op, "worker": batches.worker, "batch": batch, "n": n})
            await self.control_topic.send(key=f"{batches.worker}:{batch}".encode(),
                                          value=value, partition=partition)
            sent.inc(n)
            await pace.sent(n)

        try:
            for partition, key in work:
                if app.should_stop:
                    return  # shutting down: a restarted worker re-scores and re-sweeps anyway
                chunk = chunks[partition]
                chunk.append(key)
                if len(chunk) >= CONTROL_CHUNK:
                    chunks[partition] = []  # the full list goes with its message
                    await send(partition, chunk)
            for partition, chunk in chunks.items():
                if chunk and not app.should_stop:
                    await send(partition, chunk)
        except NotReady:
            if not app.should_stop:  # the producer stopped before this task did
                raise

    def input_lags(self) -> bool:
        """Whether more than :data:`HOLD_LAG` input messages wait: background work holds
        back (up to a second per control message) so that events come first."""
        return sum(self.assignment.lags().values()) > HOLD_LAG

    def stored_customers(self) -> Iterator[tuple[bytes, bytes]]:
        """``(key, state)`` of every stored customer: the keys are listed up front and each
        state is read when its turn comes (a list of every state would stay for a pass)."""
        return self.customers.items()

    def customers_of(self, homes: set[int], wanted: Callable[[bytes], bool] | None = None
                     ) -> Iterator[tuple[int, bytes]]:
        """``(input partition, key)`` of the stored customers of the partitions ``homes``
        whose state ``wanted`` accepts (default: all)."""
        for key, stored in self.stored_customers():
            if wanted is None or wanted(stored):
                home = home_and_bucket(key, stored, self.partitions)[0]
                if home in homes:
                    yield home, key

    def rescore_work(self, model: SegmentModel) -> Iterator[tuple[int, bytes]]:
        """Customers to re-score with ``model``: those the index says it would move, and
        every customer of a partition not fully indexed yet (just assigned here)."""
        mine = self.assignment.local_partitions()
        fresh = mine - self.indexed
        movers = self.index.movers(model, self.settings.segment_rejudge_margin,
                                   mine & self.indexed)
        self.metrics.rescore_checked.inc(len(self.index))
        self.indexed.update(fresh)
        yield from movers
        if fresh:
            yield from self.customers_of(fresh)

    async def rescore(self) -> None:
        """After a model update marked for it: re-score the local customers it would move,
        rate-limited, at most one pass per RESCORE_MIN_INTERVAL_S (with the newest model)."""
        settings, pipeline, wanted = self.settings, self.pipeline, self.rescore_wanted
        while True:
            await wanted.wait()
            await self.catch_up.wait()
            started = time.monotonic()
            wanted.clear()
            if pipeline.model is not None:
                await self.queue_control({"op": "rescore", "model": pipeline.model.version},
                                         self.rescore_work(pipeline.model),
                                         settings.rescore_rate, self.metrics.rescores)
            if not wanted.is_set():
                self.metrics.rescore_waiting.set(0)
            await asyncio.sleep(max(0.0, settings.rescore_min_interval_s
                                    - (time.monotonic() - started)))

    async def sweep(self) -> None:
        """Queue customers whose windows slid because their partition's event time passed
        a UTC midnight (one re-evaluation per active customer per event-time day); not
        while the records held at the assignment are being read (the next tick does)."""
        if not self.catch_up.done.is_set():
            return
        schedule = self.schedule
        mine = self.assignment.local_partitions()
        for partition in [p for p in schedule.watermarks if p not in mine]:
            schedule.drop_partition(partition)
        for p in sorted(mine):
            if p in schedule.watermarks:  # one pass per partition: its own watermark
                work = ((p, key) for key in schedule.pop_due(p))
                await self.queue_control({"op": "sweep", "at": schedule.watermarks[p]}, work,
                                         self.settings.sweep_rate, self.metrics.sweeps)
        self.metrics.sweep_pending.set(schedule.pending())

    def audience_work(self, version: str) -> Iterator[tuple[int, bytes]]:
        """Local customers last judged by other audience definitions than ``version``."""
        defined = bool(self.pipeline.audiences)
        return self.customers_of(self.assignment.local_partitions(),
                                 lambda stored: CustomerState.audiences_outdated(
                                     stored, version, defined))

    async def judge_audiences_again(self) -> None:
        """After the definitions changed, and after a rebalance that brought customers
        judged by other definitions: queue those local customers, rate-limited
        (RESCORE_RATE)."""
        while True:
            await self.audiences_wanted.wait()
            await self.catch_up.wait()
            self.audiences_wanted.clear()
            version = self.pipeline.audiences.version
            await self.queue_control({"op": "audiences", "version": version},
                                     self.audience_work(version), self.settings.rescore_rate,
                                     self.metrics.audience_reevaluations)
