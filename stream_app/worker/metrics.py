"""Prometheus metrics of a worker (one registry per process, served at ``/metrics``).

Names follow Prometheus conventions: a ``stream_app_`` prefix, ``_total`` counters, base
units (seconds). Label values are bounded: topics, event types, reasons, triggers,
segment ids (at most ``SEGMENTS_K``) and audience names (at most 256); never customer ids
or personal attributes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Prometheus text format (aiohttp adds the charset itself).
CONTENT_TYPE = "text/plain; version=0.0.4"


class Metrics:
    """All metrics of one worker process."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "stream_app_"
        self.events = Counter(p + "events_consumed_total", "Input messages consumed.",
                              ["topic", "type"], registry=r)
        self.invalid = Counter(p + "invalid_events_total",
                               "Input messages rejected, by reason (conflicting_duplicate: an "
                               "event_id already applied, with other content).",
                               ["reason"], registry=r)
        self.dlq = Counter(p + "dlq_messages_total", "Messages written to the dead-letter topic.",
                           registry=r)
        self.duplicates = Counter(p + "duplicate_events_total",
                                  "Redelivered events dropped by event_id (same content; "
                                  "other content is rejected as conflicting_duplicate).",
                                  registry=r)
        self.late = Counter(p + "late_events_total",
                            "Events older than every window: counted in lifetime totals only.",
                            registry=r)
        self.erasures = Counter(p + "erasures_total",
                                "Erasure requests applied, by result: erased (the customer's "
                                "state deleted) or unknown (nothing stored).", ["result"],
                                registry=r)
        self.excluded = Counter(p + "consent_excluded_events_total",
                                "Clicks and purchases of customers who withdrew consent to "
                                "segmentation (not kept).", registry=r)
        self.changes = Counter(p + "segment_changes_total", "Segment-change events published.",
                               ["trigger"], registry=r)
        self.moves = Counter(p + "segment_moves_total",
                             "Changes of customers who already had a segment (churn).",
                             registry=r)
        self.flaps = Counter(p + "segment_flaps_total",
                             "Changes back to the segment just left within 5 evaluations, "
                             "from a segment still active (leaving a retired one is forced).",
                             registry=r)
        self.quality = Gauge(p + "segment_quality",
                             "Quality of the applied model on the learner's customer sample: "
                             "wcss_ratio (vs batch k-means), homogeneity, separation_min, "
                             "separation_mean, silhouette.", ["measure"], registry=r)
        self.processing = Histogram(
            p + "processing_seconds", "Time to process one input message.", registry=r,
            buckets=(1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2, 0.1, 1.0),
        )
        self.latency = Histogram(
            p + "end_to_end_latency_seconds",
            "From the input message's Kafka timestamp to its segment change being sent.",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.gc_pauses = Histogram(
            p + "gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector, by generation (2: the whole heap "
            "not frozen at startup).", ["generation"], registry=r,
            buckets=(1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.customers = Gauge(p + "customers", "Customers in this worker's active partitions.",
                               registry=r)
        self.segment_size = Gauge(p + "segment_size",
                                  "Customers per segment in this worker's active partitions.",
                                  ["segment"], registry=r)
        self.model_version = Gauge(p + "model_version", "Version of the applied segment model.",
                                   registry=r)
        self.model_created = Gauge(p + "model_created_timestamp_seconds",
                                   "When the applied segment model was published (Unix time).",
                                   registry=r)
        self.consumer_lag = Gauge(p + "consumer_lag",
                                  "Messages behind the end of each input partition this worker "
                                  "owns (high watermark − next offset to process).",
                                  ["topic", "partition"], registry=r)
        self.model_updates = Counter(p + "model_updates_total",
                                     "Segment model snapshots applied by this worker.", registry=r)
        self.samples_sent = Counter(p + "learner_samples_sent_total",
                                    "Feature vectors sent to the learner.", registry=r)
        self.samples_learned = Counter(p + "learner_samples_learned_total",
                                       "Feature vectors learned (on the learner worker only).",
                                       registry=r)
        self.learner_restarts = Counter(p + "learner_restarts_total",
                                        "Learner processes that died and were started again "
                                        "(the learner resumed from the newest model).",
                                        registry=r)
        self.state_records = Counter(p + "state_records_total",
                                     "Customer state records written to the changelog (each "
                                     "customer once per flush of the state cache).",
                                     registry=r)
        self.state_record_bytes = Counter(p + "state_record_bytes_total",
                                          "Bytes of those records (keys and values).",
                                          registry=r)
        self.state_dirty = Gauge(p + "state_dirty",
                                 "Customer states written but not yet flushed to the changelog.",
                                 registry=r)
        self.state_dirty_bytes = Gauge(p + "state_dirty_bytes",
                                       "Bytes of the records those states will write.",
                                       registry=r)
        self.sweeps = Counter(p + "sweep_requests_total",
                              "Customers queued for re-evaluation because event time passed.",
                              registry=r)
        self.sweep_pending = Gauge(p + "sweep_pending",
                                   "Customers scheduled for a future time-based re-evaluation.",
                                   registry=r)
        self.rescores = Counter(p + "rescore_requests_total",
                                "Customers queued for re-scoring after a model update.",
                                registry=r)
        self.control_unknown = Counter(
            p + "control_batches_unknown_total",
            "Control messages whose batch of customers this worker does not hold (queued "
            "before a restart or by the partition's previous owner), by outcome: replayed "
            "(read while catching up: the changes they caused are sent again) or skipped.",
            ["outcome"], registry=r)
        self.rescore_waiting = Gauge(p + "rescore_waiting",
                                     "1 while a model update waits for its re-scoring pass "
                                     "(RESCORE_MIN_INTERVAL_S) or the pass is being queued.",
                                     registry=r)
        self.rescore_checked = Counter(p + "rescore_checked_total",
                                       "Customers checked by the vectorised pass after a model "
                                       "update (only those it would move are re-scored).",
                                       registry=r)

        self.audience_changes = Counter(p + "audience_changes_total",
                                        "Audience enter/exit events published, by audience "
                                        "(at most 256 names, from the definitions file) and "
                                        "action.", ["audience", "action"], registry=r)
        self.audience_members = Gauge(p + "audience_members",
                                      "Customers in each audience in this worker's active "
                                      "partitions.", ["audience"], registry=r)
        self.audiences_defined = Gauge(p + "audiences_defined",
                                       "Audiences in the applied definitions.", registry=r)
        self.audience_reloads = Counter(p + "audience_reloads_total",
                                        "Reads of a changed definitions file, by result: "
                                        "applied, or rejected (the previous ones stay).",
                                        ["result"], registry=r)
        for result in ("applied", "rejected"):  # exported at 0 before the first reload
            self.audience_reloads.labels(result)
        self.audience_reevaluations = Counter(p + "audience_reevaluation_requests_total",
                                              "Stored customers queued to be judged again "
                                              "after the audience definitions changed.",
                                              registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def scrape(url: str, timeout: float = 10.0) -> dict[str, float]:
    """Every sample of the Prometheus exposition at ``url``, summed over its labels, by
    sample name (what a worker's ``/metrics`` says, in one dict)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = resp.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals
