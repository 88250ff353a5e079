"""The Faust wiring: topics, tables, agents, tasks and web views, in one place.

Data flow (every arrow is a Kafka topic; ``p`` is the customer's partition)::

    clickstream ──────┐
    purchases ────────┼──▶ agent ``process`` ──▶ table ``customers`` (feature window, segment)
    customer-profiles ┤      │  (CustomerPipeline)   segment sizes (counted, see sizes.py)
    customer-erasure ─┤      │                       (erasure: deleted, tombstone)
    control ──────────┘      ├──▶ segment-changes   (customer moved, left, or was erased)
         ▲              ├──▶ stream-app-dlq          (bad input, with reason)
         │              └──▶ <app>-model-samples    (sampled vectors, 1 partition)
         │                          │
         │              agent ``learn`` (one worker: River StandardScaler | KMeans)
         │                          │
         │                          ▼
         │              <app>-segment-model (versioned JSON snapshots)
         │                          │
         │        task ``follow_model`` on every worker: apply newest snapshot
         ├───────── task ``rescore``: after a model moved, re-score the local customers
         │                         it would move (AssignmentIndex; all, for a first model)
         └───────── timer ``sweep``: after event time passed midnight, re-evaluate

The agents are thin: they move bytes between Kafka, the tables and
:class:`~stream_app.core.pipeline.CustomerPipeline`, and count what happened.
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
from stream_app.core.effects import apply, effects_of
from stream_app.core.pipeline import CustomerPipeline, Outcome
from stream_app.core.state import CustomerState
from stream_app.model.assignments import AssignmentIndex
from stream_app.model.segmentation import (
    SegmentModel,
)
from stream_app.web.segment_map import (
    RecentChanges,
)
from stream_app.worker import patches
from stream_app.worker.assignment import Assignment
from stream_app.worker.broker import TANSU_FETCH_MAX_WAIT_MS, faust_broker_options
from stream_app.worker.catch_up import CatchUp
from stream_app.worker.connectivity import KAFKA_RETRY_BACKOFF_MS
from stream_app.worker.control import ControlBatches, last_control_causes
from stream_app.worker.gauges import Gauges
from stream_app.worker.logs import logging_config
from stream_app.worker.metrics import Metrics
from stream_app.worker.model_service import ModelService
from stream_app.worker.options import pipeline_options
from stream_app.worker.pacing import Pace
from stream_app.worker.segmentation_app import SegmentationApp
from stream_app.worker.sink import WorkerSink
from stream_app.worker.sizes import SegmentSizes, home_and_bucket, summary
from stream_app.worker.sweep import SweepSchedule
from stream_app.worker.views import Views

log = logging.getLogger("stream_app")

#: Customers per control message (a re-scoring or sweep pass sends one message per chunk of
#: a partition's customers, not one per customer; small enough that the events queued
#: behind one wait ~25 ms).
CONTROL_CHUNK = 64
#: Re-judgement passes wait after a rebalance until the assigned partitions are read up to
#: where they ended at the assignment (stream_app/worker/catch_up.py), at most this long; the
#: positions are looked at every CATCH_UP_POLL_S.
CATCH_UP_MAX_WAIT_S = 30.0
CATCH_UP_POLL_S = 0.2
CATCH_UP_ENDS_WAIT_S = 10.0  # for the end offsets, at each rebalance


def create_app(settings: Settings, partitions: int | None = None) -> SegmentationApp:
    """Build the worker's Faust app; ``partitions`` is the resolved input partition count."""
    partitions = partitions or settings.topic_partitions
    tansu = settings.embedded_broker
    # The worker's one install of its patches of Faust, aiokafka and aiohttp internals
    # (stream_app/worker/patches.py): the seek after a rebalance with the flow stopped
    # (seek.py), no echo or traceback of a malformed request (http_guard.py), calm retries
    # in an outage (connectivity.py), and Tansu's short fetch wait (broker.py).
    patches.install(fetch_max_wait_ms=TANSU_FETCH_MAX_WAIT_MS if tansu else None,
                    retry_backoff_ms=KAFKA_RETRY_BACKOFF_MS)
    app = SegmentationApp(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers],
        store=settings.table_store,
        datadir=settings.data_dir,
        topic_partitions=partitions,
        topic_replication_factor=settings.topic_replication,
        topic_disable_leader=True,
        key_serializer="raw",
        value_serializer="raw",
        web_port=settings.web_port,
        web_host=settings.web_host,
        web_bind=settings.web_bind,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        # Faust's repaired Cython fast paths (stream iterator, conductor): 7 % less CPU per
        # event in the naive benchmark agent (README, Performance).
        cython_optimizations=True,
        broker_commit_interval=settings.commit_interval_s,
        logging_config=logging_config(settings.log_level, settings.log_format),
        # Faust's own pages would show table contents (customers) and internals without
        # authentication: the worker serves only the views declared below.
        web_tables_enabled=False, web_router_enabled=False, web_graph_enabled=False,
        web_stats_enabled=False,
        **faust_broker_options(tansu, settings.single_record_batches),
    )
    metrics = Metrics()
    pipeline = CustomerPipeline(pipeline_options(settings))

    # -- topics ---------------------------------------------------------------------------
    kinds = {topic: kind for kind, topic in settings.consumed_topics.items()}
    inputs = app.topic(*kinds)
    control_topic = app.topic(settings.control_topic)
    changes_topic = app.topic(settings.segment_changes_topic)
    audience_topic = app.topic(settings.audience_changes_topic)
    dlq_topic = app.topic(settings.dlq_topic)
    samples_topic = app.topic(settings.samples_topic)
    model_topic = app.topic(settings.segment_model_topic)

    # -- tables ---------------------------------------------------------------------------
    customers = app.Table("customers", partitions=partitions, key_type=bytes, value_type=bytes,
                          options=settings.table_options())
    #: Customers per segment and partition: counted from ``customers`` after every
    #: rebalance, adjusted by each move (stream_app/worker/sizes.py).
    sizes = SegmentSizes()
    #: Members per audience and partition, counted the same way.
    audience_sizes: SegmentSizes[str] = SegmentSizes()

    # -- the model every worker applies, the learner, the audience definitions -----------
    rescore_wanted = asyncio.Event()  # a re-scoring pass is due
    audiences_wanted = asyncio.Event()  # a pass over the local customers' audiences is due
    models = ModelService(settings=settings, pipeline=pipeline, metrics=metrics,
                          model_topic=model_topic, rescore_wanted=rescore_wanted,
                          audiences_wanted=audiences_wanted)
    models.register(app, samples_topic)
    feed = app.model_feed = models.feed

    schedule = SweepSchedule()
    #: Local customers' vectors and segments at their last evaluation, and the partitions
    #: whose customers are all in it (a full pass since they were assigned here).
    index = AssignmentIndex()
    indexed: set[int] = set()
    #: Whether the records the partitions held at their assignment are read: only then
    #: does the worker queue re-judgements itself (re-scoring, sweeps, audience passes), so
    #: that the replay after a crash re-sends what the crash lost before anything newer
    #: about the same customers is decided (stream_app/worker/catch_up.py).
    catch_up = CatchUp(CATCH_UP_MAX_WAIT_S)
    #: Customers whose last changes were sent again while catching up (first_touch).
    restated: set[bytes] = set()
    #: The customers of the control messages queued here and not processed yet: the
    #: messages name no customer (stream_app/worker/control.py).
    batches = ControlBatches()
    #: While catching up: per partition, the customers whose last change a control message
    #: caused, by the cause's digest (built at the partition's first control message whose
    #: batch is not held here, dropped when the catch-up is done; see ``control``).
    replay_causes: dict[int, dict[int, list[bytes]]] = {}
    #: The partitions assigned here, and how far their inputs are read.
    assignment = Assignment(app, settings.clickstream_topic, kinds)
    processed, seeked = assignment.processed, assignment.seeked

    def on_seek(starts: dict[Any, int]) -> None:
        seeked.update(starts)
        catch_up.reached(starts, time.monotonic())

    app.on_seek = on_seek

    # -- agents ---------------------------------------------------------------------------
    #: Where the effects of an outcome land (stream_app/core/effects.py: the order).
    recent_changes = RecentChanges()  # the last changes this worker published (the map)
    sink = WorkerSink(customers=customers, changes_topic=changes_topic,
                      audience_topic=audience_topic, dlq_topic=dlq_topic,
                      samples_topic=samples_topic, metrics=metrics, pipeline=pipeline,
                      index=index, schedule=schedule, sizes=sizes,
                      audience_sizes=audience_sizes, recent_changes=recent_changes,
                      forget=lambda key, partition: forget_customer(key, partition))

    async def publish(out: Outcome, message: Any, key: bytes | None,
                      own_event: bool = True) -> None:
        """Store, schedule, count and send what processing ``message`` gave for customer
        ``key`` (table key; ``own_event``: the message's own customer, not one of a control
        message)."""
        await apply(effects_of(out, key, message.partition,
                               message.timestamp if own_event else None), sink)

    def first_touch(key: bytes) -> bool:
        """Whether to send ``key``'s last changes again before its message: its first one
        while the worker reads what its partitions held at their assignment
        (CustomerPipeline.restate: a crash may have lost them, and the replay re-sends
        them only while they are the customer's last)."""
        if catch_up.done.is_set():
            if restated:
                restated.clear()
            if replay_causes:
                replay_causes.clear()
            return False
        if key in restated:
            return False
        restated.add(key)
        return True

    def control(message: Any) -> Iterator[tuple[bytes, Outcome]]:
        """Work queued by this app on stored customers of the message's partition (see
        ``schemas/control``): ``(customer key, outcome)`` for each. The message names its
        batch, whose customers this worker holds (stream_app/worker/control.py). The cause of a
        move names the request and the message, so a redelivered message re-sends the
        changes it made (a crash may have lost them after their state was stored): a
        batch this worker does not hold, read while catching up, re-sends the last
        changes of the customers whose last change it caused (:func:`caused_by`); after
        the catch-up it is skipped (the partition's customers are re-judged anyway)."""
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
            replayed = caused_by(message.partition, cause)
            metrics.control_unknown.labels("replayed" if replayed is not None
                                           else "skipped").inc()
            # The work itself is done again by a pass over the partition, which is not
            # indexed here yet: every customer of it is re-scored (and so scheduled for
            # its sweeps), or judged by the current audience definitions.
            if name == "audiences":
                audiences_wanted.set()
            else:
                rescore_wanted.set()
                metrics.rescore_waiting.set(1)
            for key in replayed or ():
                stored = customers.get(key)
                if stored is not None and first_touch(key):
                    yield key, pipeline.restate(key.decode(), stored)
            return
        for key in keys:
            stored = customers.get(key)
            if stored is None:
                continue
            if first_touch(key):
                yield key, pipeline.restate(key.decode(), stored)
            if name == "rescore":
                yield key, pipeline.rescore(key.decode(), stored, cause)
            elif name == "sweep":
                yield key, pipeline.sweep(key.decode(), stored, at, cause)
            elif name == "audiences":
                yield key, pipeline.reevaluate_audiences(key.decode(), stored, cause)

    def caused_by(partition: int, cause: str) -> list[bytes] | None:
        """While catching up: the customers of ``partition`` whose last segment or
        audience change ``cause`` caused (None once caught up). The first call for a
        partition reads its customers' states once (only after a restart or a rebalance
        that brought control messages queued elsewhere)."""
        if catch_up.done.is_set():
            replay_causes.clear()
            return None
        causes = replay_causes.get(partition)
        if causes is None:
            causes = replay_causes[partition] = {}
            for key, stored in stored_customers():
                if home_and_bucket(key, stored, partitions)[0] == partition:
                    for digest in last_control_causes(stored):
                        causes.setdefault(digest, []).append(key)
        return causes.get(event_digest(cause), [])

    def forget_customer(key: bytes, partition: int) -> None:
        """Drop an erased customer, or one that withdrew consent, from what the worker
        keeps in memory: the assignment index (the examples), the map's recent changes,
        the sweep schedule, pending control batches and the catch-up's sets
        (docs/privacy.md)."""
        index.forget(key)
        recent_changes.forget(key)
        schedule.forget(partition, key)
        batches.forget(key)
        restated.discard(key)
        for keys in replay_causes.get(partition, {}).values():
            if key in keys:
                keys.remove(key)

    @app.agent(inputs)
    async def process(stream: faust.StreamT) -> None:
        """Every input message, in partition order: update the customer, emit changes.

        Not before the worker knows the newest model: a redelivered event that caused a
        customer's last change re-sends it only with a model (and an event evaluated
        without one gets no segment until the first re-scoring)."""
        observe = metrics.processing.observe
        await feed.caught_up.wait()
        async for event in stream.events():
            started = time.perf_counter()
            message = event.message
            processed[message.tp] = message.offset
            kind = kinds[message.topic]
            key = message.key
            if kind == "control":
                for customer, out in control(message):
                    await publish(out, message, customer, own_event=False)
                observe(time.perf_counter() - started)
                continue
            customer = pipeline.customer_key(key) if key else None  # pseudonymised
            stored = customers.get(customer) if customer else None
            if stored is not None and first_touch(customer):
                await publish(pipeline.restate(customer.decode(errors="replace"), stored),
                              message, customer, own_event=False)
            for out in pipeline.process_message(kind, key, message.value, stored,
                                                message.topic, message.partition,
                                                message.offset,
                                                _timestamp_ms(message.timestamp)):
                metrics.events.labels(message.topic, out.event_type or "invalid").inc()
                if out.event_ts is not None and kind in ("click", "purchase"):
                    schedule.observe(message.partition, out.event_ts)
                await publish(out, message, customer)
            observe(time.perf_counter() - started)

    # -- background tasks -----------------------------------------------------------------
    async def queue_control(op: dict[str, Any], work: Iterable[tuple[int, bytes]],
                            rate: float, sent: Counter) -> None:
        """Queue ``op`` for customers ``(partition, key)``: one control message per chunk
        of a partition's customers, at most ``rate`` customers a second, counted in
        ``sent``."""
        pace = Pace(rate)
        chunks: dict[int, list[bytes]] = defaultdict(list)

        async def send(partition: int, keys: list[bytes]) -> None:
            """One message for ``keys`` (handed over: held until the message is
            processed); it names the batch, not the customers (stream_app/worker/control.py)."""
            if partition not in assignment.local_partitions():
                return  # revoked meanwhile: its next owner re-judges its customers
            n = len(keys)
            batch = batches.add(partition, keys)
            value = orjson.dumps({**op, "worker": batches.worker, "batch": batch, "n": n})
            await control_topic.send(key=f"{batches.worker}:{batch}".encode(), value=value,
                                     partition=partition)
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

    @app.on_partitions_revoked.connect
    async def forget_revoked(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
        catch_up.rebalancing()
        restated.clear()
        gone = {tp.partition for tp in revoked}
        indexed.difference_update(gone)
        index.drop_partitions(gone)
        batches.drop_partitions(gone)  # their messages go to the next owner, who skips them
        for partition in gone:
            replay_causes.pop(partition, None)
        for tp in revoked:
            if tp.topic in kinds:
                assignment.revoked(tp)
                with contextlib.suppress(KeyError):  # KeyError: never measured
                    metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    def stored_customers() -> Iterator[tuple[bytes, bytes]]:
        """``(key, state)`` of every stored customer: the keys are listed up front and each
        state is read when its turn comes (a list of every state would stay for a pass)."""
        for key in list(customers.keys()):
            stored = customers.get(key)
            if stored is not None:
                yield key, stored

    def customers_of(homes: set[int], wanted: Callable[[bytes], bool] | None = None
                     ) -> Iterator[tuple[int, bytes]]:
        """``(input partition, key)`` of the stored customers of the partitions ``homes``
        whose state ``wanted`` accepts (default: all)."""
        for key, stored in stored_customers():
            if wanted is None or wanted(stored):
                home = home_and_bucket(key, stored, partitions)[0]
                if home in homes:
                    yield home, key

    def rescore_work(model: SegmentModel) -> Iterator[tuple[int, bytes]]:
        """Customers to re-score with ``model``: those the index says it would move, and
        every customer of a partition not fully indexed yet (just assigned here)."""
        mine = assignment.local_partitions()
        fresh = mine - indexed
        movers = index.movers(model, settings.segment_rejudge_margin, mine & indexed)
        metrics.rescore_checked.inc(len(index))
        indexed.update(fresh)
        yield from movers
        if fresh:
            yield from customers_of(fresh)

    @app.task
    async def rescore() -> None:
        """After a model update marked for it: re-score the local customers it would move,
        rate-limited, at most one pass per RESCORE_MIN_INTERVAL_S (with the newest model)."""
        while True:
            await rescore_wanted.wait()
            await catch_up.wait()
            started = time.monotonic()
            rescore_wanted.clear()
            if pipeline.model is not None:
                await queue_control({"op": "rescore", "model": pipeline.model.version},
                                    rescore_work(pipeline.model),
                                    settings.rescore_rate, metrics.rescores)
            if not rescore_wanted.is_set():
                metrics.rescore_waiting.set(0)
            await asyncio.sleep(max(0.0, settings.rescore_min_interval_s
                                    - (time.monotonic() - started)))

    @app.timer(interval=settings.sweep_interval_s)
    async def sweep() -> None:
        """Queue customers whose windows slid because their partition's event time passed
        a UTC midnight (one re-evaluation per active customer per event-time day); not
        while the records held at the assignment are being read (the next tick does)."""
        if not catch_up.done.is_set():
            return
        mine = assignment.local_partitions()
        for partition in [p for p in schedule.watermarks if p not in mine]:
            schedule.drop_partition(partition)
        for p in sorted(mine):
            if p in schedule.watermarks:  # one pass per partition: its own watermark
                work = ((p, key) for key in schedule.pop_due(p))
                await queue_control({"op": "sweep", "at": schedule.watermarks[p]}, work,
                                    settings.sweep_rate, metrics.sweeps)
        metrics.sweep_pending.set(schedule.pending())

    def audience_work(version: str) -> Iterator[tuple[int, bytes]]:
        """Local customers last judged by other audience definitions than ``version``."""
        defined = bool(pipeline.audiences)
        return customers_of(assignment.local_partitions(),
                            lambda stored: CustomerState.audiences_outdated(
                                stored, version, defined))

    @app.task
    async def judge_audiences_again() -> None:
        """After the definitions changed, and after a rebalance that brought customers
        judged by other definitions: queue those local customers, rate-limited
        (RESCORE_RATE)."""
        while True:
            await audiences_wanted.wait()
            await catch_up.wait()
            audiences_wanted.clear()
            version = pipeline.audiences.version
            await queue_control({"op": "audiences", "version": version}, audience_work(version),
                                settings.rescore_rate, metrics.audience_reevaluations)

    @app.on_rebalance_complete.connect
    async def note_assignment_ends(app: faust.App, **kwargs: Any) -> None:
        """The end offsets of the assigned input and control partitions, to be read up to
        before re-judgements are queued (an unreachable broker: not waited for)."""
        try:
            ends = await asyncio.wait_for(app.consumer.highwaters(*assignment.inputs()),
                                          CATCH_UP_ENDS_WAIT_S)
        except Exception as exc:  # any failure: do not hold the passes back
            log.warning("end offsets of the assigned partitions unknown (%r): re-judgements "
                        "do not wait for their records", exc)
            ends = {}
        catch_up.assigned(ends, time.monotonic())

    @app.task
    async def follow_catch_up() -> None:
        """Tell ``catch_up`` the positions of the partitions it waits for."""
        while True:
            await asyncio.sleep(CATCH_UP_POLL_S)
            if catch_up.done.is_set():
                continue
            catch_up.reached({tp: processed[tp] + 1 for tp in catch_up.pending()
                              if tp in processed}, time.monotonic())

    @app.on_rebalance_complete.connect
    async def count_segments(app: faust.App, **kwargs: Any) -> None:
        """Count the owned partitions' customers per segment and audience (tables
        recovered, streams not resumed yet), and see whether any of them was judged by
        other audience definitions (elsewhere); yields to the event loop every few
        thousand customers."""
        counted, members, outdated = [], [], False
        mine, version = assignment.local_partitions(), pipeline.audiences.version
        defined = bool(pipeline.audiences)
        for n, (key, stored) in enumerate(stored_customers()):
            home, bucket, audiences = summary(key, stored, partitions)
            counted.append((home, bucket))
            members.extend((home, name) for name in audiences)
            outdated = outdated or (home in mine and CustomerState.audiences_outdated(
                stored, version, defined))
            if n % 4096 == 4095:
                await asyncio.sleep(0)
        sizes.recount(counted, assignment.local_partitions())
        audience_sizes.recount(members, assignment.local_partitions())
        if settings.audiences_file and outdated:
            audiences_wanted.set()

    gauges = Gauges(metrics=metrics, pipeline=pipeline, sizes=sizes,
                    audience_sizes=audience_sizes, assignment=assignment)
    gauges.register(app)
    Views(app=app, settings=settings, pipeline=pipeline, customers=customers, feed=feed,
          metrics=metrics, gauges=gauges, assignment=assignment, index=index,
          audience_sizes=audience_sizes, recent_changes=recent_changes).register(app)
    return app


def _timestamp_ms(timestamp: float | None) -> int | None:
    return None if timestamp is None else int(timestamp * 1000)
