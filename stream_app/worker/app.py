"""The worker's Faust app: :func:`create_app` declares it, its topics and its table, and
assembles the services that hold the agents, tasks, timers and pages.

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

The services, each in its own module with explicit collaborators:
:class:`~stream_app.worker.processing.Processor` (agent ``process``; the outcome's effects,
in the order of stream_app/core/effects.py, go to
:class:`~stream_app.worker.sink.WorkerSink`),
:class:`~stream_app.worker.model_service.ModelService` (the model feed, agent ``learn``,
snapshots, audience definitions), :class:`~stream_app.worker.rejudge.Rejudge`
(re-scoring, sweeps, audience passes, catch-up, control messages),
:class:`~stream_app.worker.gauges.Gauges` and :class:`~stream_app.worker.views.Views`
(the HTTP pages).
"""

from __future__ import annotations

import asyncio

from stream_app.config import Settings
from stream_app.core.pipeline import CustomerPipeline
from stream_app.model.assignments import AssignmentIndex
from stream_app.web.segment_map import RecentChanges
from stream_app.worker import patches
from stream_app.worker.assignment import Assignment
from stream_app.worker.broker import TANSU_FETCH_MAX_WAIT_MS, faust_broker_options
from stream_app.worker.catalogue import SegmentCatalogue
from stream_app.worker.collector import CollectorPauses
from stream_app.worker.connectivity import KAFKA_RETRY_BACKOFF_MS
from stream_app.worker.customer_store import CustomerStore
from stream_app.worker.direct_topic import DirectTopic
from stream_app.worker.gauges import Gauges
from stream_app.worker.logs import logging_config
from stream_app.worker.metrics import Metrics
from stream_app.worker.model_service import ModelService
from stream_app.worker.options import pipeline_options
from stream_app.worker.processing import Processor
from stream_app.worker.rejudge import Rejudge
from stream_app.worker.segmentation_app import InboundMonitor, SegmentationApp
from stream_app.worker.sink import WorkerSink
from stream_app.worker.sizes import SegmentSizes
from stream_app.worker.sweep import SweepSchedule
from stream_app.worker.views import Views


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
        # Faust's per-event statistics are for that stats page: not kept (2.5 % of the loop).
        Monitor=InboundMonitor,
        **faust_broker_options(tansu, settings.single_record_batches),
    )
    metrics = Metrics()
    CollectorPauses(metrics.gc_pauses).install()
    pipeline = CustomerPipeline(pipeline_options(settings))

    # -- topics ---------------------------------------------------------------------------
    kinds = {topic: kind for kind, topic in settings.consumed_topics.items()}
    inputs = app.topic(*kinds)
    control_topic = app.topic(settings.control_topic)
    samples_topic = app.topic(settings.samples_topic)
    model_topic = app.topic(settings.segment_model_topic)
    catalogue_topic = app.topic(settings.segment_catalogue_topic)

    # -- tables and the worker's memory ----------------------------------------------------
    table = app.Table("customers", partitions=partitions, key_type=bytes, value_type=bytes,
                      options=settings.table_options())
    #: The only way to the table: states cached, flushed to the changelog once per flush.
    customers = CustomerStore(table, metrics, flush_interval_s=settings.state_flush_interval_s,
                              max_dirty=settings.state_cache_size)
    #: Customers per segment and partition: counted from ``customers`` after every
    #: rebalance, adjusted by each move (stream_app/worker/sizes.py).
    sizes: SegmentSizes[int] = SegmentSizes()
    #: Members per audience and partition, counted the same way.
    audience_sizes: SegmentSizes[str] = SegmentSizes()
    #: Local customers' vectors and segments at their last evaluation.
    index = AssignmentIndex()
    schedule = SweepSchedule()
    recent_changes = RecentChanges()  # the last changes this worker published (the map)
    #: The partitions assigned here, and how far their inputs are read.
    assignment = Assignment(app, settings.clickstream_topic, kinds)
    rescore_wanted = asyncio.Event()  # a re-scoring pass is due
    audiences_wanted = asyncio.Event()  # a pass over the local customers' audiences is due

    # -- the services ---------------------------------------------------------------------
    models = ModelService(settings=settings, pipeline=pipeline, metrics=metrics,
                          model_topic=model_topic, rescore_wanted=rescore_wanted,
                          audiences_wanted=audiences_wanted)
    feed = app.model_feed = models.feed
    catalogue = SegmentCatalogue(app=app, settings=settings, topic=catalogue_topic)
    models.listeners.append(catalogue.on_model)
    rejudge = Rejudge(app=app, settings=settings, partitions=partitions, pipeline=pipeline,
                      customers=customers, control_topic=control_topic, metrics=metrics,
                      assignment=assignment, index=index, schedule=schedule, sizes=sizes,
                      audience_sizes=audience_sizes, rescore_wanted=rescore_wanted,
                      audiences_wanted=audiences_wanted)
    # The per-event sends go to the producer directly (stream_app/worker/direct_topic.py).
    sink = WorkerSink(customers=customers,
                      changes_topic=DirectTopic(app, settings.segment_changes_topic),
                      audience_topic=DirectTopic(app, settings.audience_changes_topic),
                      dlq_topic=DirectTopic(app, settings.dlq_topic),
                      samples_topic=DirectTopic(app, settings.samples_topic),
                      metrics=metrics, pipeline=pipeline,
                      index=index, schedule=schedule, sizes=sizes,
                      audience_sizes=audience_sizes, recent_changes=recent_changes,
                      forget=rejudge.forget_customer)
    gauges = Gauges(metrics=metrics, pipeline=pipeline, sizes=sizes,
                    audience_sizes=audience_sizes, assignment=assignment)
    views = Views(app=app, settings=settings, pipeline=pipeline, customers=customers,
                  feed=feed, metrics=metrics, gauges=gauges, assignment=assignment,
                  index=index, audience_sizes=audience_sizes, recent_changes=recent_changes,
                  catalogue=catalogue.history)
    catalogue.sizes = views.segment_totals
    processor = Processor(pipeline=pipeline, customers=customers, kinds=kinds, sink=sink,
                          rejudge=rejudge, schedule=schedule, metrics=metrics,
                          assignment=assignment, feed=feed,
                          batch_size=settings.input_batch_size,
                          batch_wait_s=settings.input_batch_wait_ms / 1000)

    # The agents, tasks, timers, signals and pages of each service.
    models.register(app, samples_topic)
    catalogue.register(app)
    processor.register(app, inputs)
    rejudge.register(app)
    gauges.register(app)
    views.register(app)
    return app
