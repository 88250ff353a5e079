"""Configuration: one frozen :class:`Settings` read from environment variables.

Every setting has an environment variable (``metadata["env"]``), a default, and a meaning
(``metadata["doc"]``; ``metadata["default_doc"]`` where the default needs words): the
table of docs/configuration.md is generated from them when the docs are built
(docs/hooks/configuration.py). The CLI's options write
these variables before the Faust app is imported, so a worker started as
``KAFKA_BOOTSTRAP_SERVERS=kafka:9092 stream-app worker`` and one started as
``stream-app worker --bootstrap kafka:9092`` are configured identically.

>>> s = Settings.from_env({"SEGMENTS_K": "8", "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092"})
>>> s.segments_k, s.bootstrap_servers
(8, ['k1:9092', 'k2:9092'])
>>> s.input_topics
('clickstream', 'purchases', 'customer-profiles')
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path

from stream_app.model.options import CLUSTERERS

#: Default clustering vector: feature name, transform applied before online scaling, and
#: weight. Recency, frequency and monetary value (RFM, lifetime and 90 days: the retail
#: baseline) count fully; the behavioural traits (price sensitivity, browsing, searching,
#: time of day, channel) count half. docs/segmentation.md has the figures on both
#: workloads behind it.
DEFAULT_SEGMENT_FEATURES = (
    "days_since_last_order:log1p,orders_total:log1p,revenue_total:log1p,orders_90d:log1p,"
    "revenue_90d:log1p,discount_share_90d:identity:0.5,views_7d:log1p:0.5,"
    "searches_7d:log1p:0.5,night_share_30d:identity:0.5,app_share_30d:identity:0.5"
)


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def instant_ms(text: str) -> int:
    """Epoch milliseconds of an ISO-8601 date or date-time, UTC unless it names a zone.

    >>> instant_ms("1980-01-01"), instant_ms("2000-01-01T01:00:00+01:00")
    (315532800000, 946684800000)
    >>> instant_ms("1980-01-01T00:00:00Z")
    315532800000
    """
    value = text.strip()
    if value[-1:] == "Z":  # datetime.fromisoformat only reads a Z from Python 3.11 on
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)  # ValueError when not ISO-8601
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` (an IP address or a host name) stands for is a
    loopback one, so that a server bound to it is reachable from this machine only.

    A wildcard (``0.0.0.0``, ``::``), a LAN address, a name resolving to any non-loopback
    address and a name that does not resolve are not loopback.

    >>> [is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost")]
    [True, True, True, True, True]
    >>> [is_loopback(h) for h in ("0.0.0.0", "::", "", "192.168.1.10", "no-such-host.invalid")]
    [False, False, False, False, False]
    """
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name:
        return False  # aiohttp binds every interface for an empty host
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass  # a host name
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    addresses = {str(info[4][0]).split("%", 1)[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


#: Settings whose values are secrets (masked in ``repr``).
SECRETS = frozenset({"pseudonym_key", "api_token"})


@dataclass(frozen=True)
class Settings:
    """All runtime settings of a worker, with their environment variable names."""

    kafka_bootstrap_servers: str = field(default="127.0.0.1:9092", metadata={
        "env": "KAFKA_BOOTSTRAP_SERVERS",
        "doc": "Kafka bootstrap servers, comma-separated"})
    app_id: str = field(default="stream-app", metadata={
        "env": "STREAM_APP_ID",
        "doc": "Faust app id: consumer group and prefix of internal topics and changelogs"})
    clickstream_topic: str = field(default="clickstream", metadata={
        "env": "CLICKSTREAM_TOPIC",
        "doc": "clickstream input"})
    purchases_topic: str = field(default="purchases", metadata={
        "env": "PURCHASES_TOPIC",
        "doc": "purchases input"})
    profiles_topic: str = field(default="customer-profiles", metadata={
        "env": "PROFILES_TOPIC",
        "doc": "profile input (optional traffic)"})
    segment_changes_topic: str = field(default="segment-changes", metadata={
        "env": "SEGMENT_CHANGES_TOPIC",
        "doc": "output: segment changes"})
    dlq_topic: str = field(default="stream-app-dlq", metadata={
        "env": "DLQ_TOPIC",
        "doc": "output: rejected input with reasons"})
    #: Named, rule-defined audiences (YAML or JSON, schemas/audiences.schema.json; empty:
    #: none). Re-read when the file changes, every ``audiences_reload_s`` seconds.
    audiences_file: str = field(default="", metadata={
        "env": "AUDIENCES_FILE",
        "default_doc": "(none)",
        "doc": "YAML or JSON file of named audiences (`schemas/audiences.schema.json`); a "
               "broken file stops the start (status 2)"})
    audiences_reload_s: float = field(default=5.0, metadata={
        "env": "AUDIENCES_RELOAD_S",
        "doc": "seconds between checks of `AUDIENCES_FILE` for changes; a changed file is "
               "applied without a restart (a broken one is rejected and logged, the applied "
               "definitions stay)"})
    #: Output topic of audience enter/exit events (schemas/audience-change.schema.json).
    audience_changes_topic: str = field(default="audience-changes", metadata={
        "env": "AUDIENCE_CHANGES_TOPIC",
        "doc": "output: audience enter/exit events (see *Audiences*)"})
    #: Output topic of the segment catalogue (schemas/segment-catalogue.schema.json).
    segment_catalogue_topic: str = field(default="segment-catalogue", metadata={
        "env": "SEGMENT_CATALOGUE_TOPIC",
        "doc": "output: one message per segment whose meaning a model version changed "
               "(created, revived, retired, merged, relabelled, moved; see *Segment "
               "catalogue*); one partition, kept forever"})
    #: Right to be forgotten: a message keyed by a customer id erases the customer.
    erasure_topic: str = field(default="customer-erasure", metadata={
        "env": "ERASURE_TOPIC",
        "doc": "right to be forgotten: erasure requests keyed by customer id (co-partitioned "
               "with the inputs; see *Privacy*)"})
    #: Secret of the keyed hash that replaces customer ids at ingestion (empty: ids kept).
    pseudonym_key: str = field(default="", metadata={
        "env": "PSEUDONYM_KEY",
        "default_doc": "empty (off)",
        "doc": "secret of the keyed hash (HMAC-SHA-256) that replaces customer ids at "
               "ingestion; keep it in a secret store, and never change it on a running "
               "deployment (see *Privacy*)"})
    #: Bearer token the customer endpoints require (empty: they are open, which the worker
    #: allows only on a loopback ``web_bind`` unless ``api_open``; see :meth:`exposure_problem`).
    api_token: str = field(default="", metadata={
        "env": "API_TOKEN",
        "default_doc": "empty (open)",
        "doc": "bearer token required by the HTTP endpoints that name customers (see "
               "*Security of the HTTP API*); without one a worker starts only on a loopback "
               "`WEB_BIND` (else status 2) unless `API_OPEN=true`"})
    #: Opt-out: serve customer data without a token on a non-loopback address (only behind
    #: a trusted gateway that authenticates the callers itself).
    api_open: bool = field(default=False, metadata={
        "env": "API_OPEN",
        "doc": "opt-out: serve customer data without a token on a non-loopback `WEB_BIND`; "
               "only behind a trusted gateway that authenticates callers (see *Security of "
               "the HTTP API*)"})
    model_topic: str = field(default="", metadata={
        "env": "SEGMENT_MODEL_TOPIC",
        "default_doc": "`<app id>-segment-model`",
        "doc": "versioned model snapshots (1 partition, compacted)"})
    web_port: int = field(default=6066, metadata={
        "env": "WEB_PORT",
        "doc": "HTTP port (API, `/metrics`)"})
    web_host: str = field(default="127.0.0.1", metadata={
        "env": "WEB_HOST",
        "doc": "host name other workers use to reach this one (set it to the container/host "
               "name in a cluster)"})
    #: Address the HTTP server binds: loopback by default (docs/security.md).
    web_bind: str = field(default="127.0.0.1", metadata={
        "env": "WEB_BIND",
        "doc": "address the HTTP server binds (loopback: this machine only, so workers on "
               "several hosts bind an address the others reach; `0.0.0.0` or a LAN address "
               "needs `API_TOKEN` or `API_OPEN=true`; the Docker image sets `0.0.0.0`)"})
    segments_k: int = field(default=32, metadata={
        "env": "SEGMENTS_K",
        "doc": "number of micro-segments"})
    data_dir: str = field(default="./data", metadata={
        "env": "DATA_DIR",
        "doc": "Faust data directory (table state with RocksDB)"})
    topic_partitions: int = field(default=4, metadata={
        "env": "TOPIC_PARTITIONS",
        "doc": "partitions of topics the worker creates when no input topic exists yet"})
    topic_replication: int = field(default=1, metadata={
        "env": "TOPIC_REPLICATION",
        "doc": "replication factor of topics the worker creates"})
    table_store: str = field(default="memory://", metadata={
        "env": "TABLE_STORE",
        "doc": "`memory://` or `rocksdb://` (production-size state)"})
    #: RocksDB memory per table partition (Faust's defaults: 3 × 64 MB memtables and a 2 GB
    #: block cache each, so RSS grows with the state up to gigabytes per partition).
    rocksdb_write_buffer_mb: int = field(default=8, metadata={
        "env": "ROCKSDB_WRITE_BUFFER_MB",
        "doc": "RocksDB store: size of each of the 2 memtables per table partition (Faust's "
               "default: 3 × 64 MB)"})
    rocksdb_block_cache_mb: int = field(default=32, metadata={
        "env": "ROCKSDB_BLOCK_CACHE_MB",
        "doc": "RocksDB store: block cache per table partition (Faust's default: 2 GB)"})
    embedded_broker: bool = field(default=False, metadata={
        "env": "STREAM_APP_EMBEDDED_BROKER",
        "doc": "apply the Tansu workarounds (set by the demo and tests)"})
    #: ``auto``: one record per producer batch on the embedded broker (Tansu reports a wrong
    #: end offset after a multi-record batch, which truncates changelog recovery), normal
    #: batches elsewhere; ``on``/``off`` force it.
    producer_batching: str = field(default="auto", metadata={
        "env": "PRODUCER_BATCHING",
        "doc": "`auto`: one record per producer batch on the embedded broker (Tansu's "
               "end-offset bug would truncate changelog recovery), normal batches elsewhere; "
               "`on`/`off` force it"})
    segment_features: str = field(default=DEFAULT_SEGMENT_FEATURES, metadata={
        "env": "SEGMENT_FEATURES",
        "default_doc": "see *Segmentation*",
        "doc": "clustering vector: `name[:transform[:weight]]`, comma-separated (`log1p` or "
               "`identity`; weight 1 by default)"})
    segment_clusterer: str = field(default="kmeans", metadata={
        "env": "SEGMENT_CLUSTERER",
        "doc": "River clusterer of the learner: `kmeans`, `streamkmeans` or `clustream` (see "
               "*Segment quality* for how they compare)"})
    segment_margin: float = field(default=0.45, metadata={
        "env": "SEGMENT_MARGIN",
        "doc": "hysteresis: a customer moves only if the new centre is closer than (1 − "
               "margin) × the distance to its current one (a margin of 0.9 to go straight "
               "back to the segment it just left)"})
    #: The margin of moves not caused by the customer's own events (model updates, the
    #: passage of time, profile updates).
    segment_rejudge_margin: float = field(default=0.2, metadata={
        "env": "SEGMENT_REJUDGE_MARGIN",
        "doc": "the same margin for moves not caused by the customer's own events: model "
               "updates, the passage of time, profile updates"})
    segment_confirmations: int = field(default=2, metadata={
        "env": "SEGMENT_CONFIRMATIONS",
        "doc": "an event moves a customer only when the same new segment wins this many "
               "evaluations in a row"})
    #: Clicks in the last 90 days that place a customer who never bought (one purchase
    #: always places).
    segment_min_events: int = field(default=3, metadata={
        "env": "SEGMENT_MIN_EVENTS",
        "doc": "clicks (last 90 days) a customer who never bought needs before its first "
               "assignment; one purchase always places a customer"})
    #: Least share of the customers a segment may hold: smaller ones are revived where
    #: the largest segment is split, under a new id (0: no minimum).
    segment_min_share: float = field(default=0.005, metadata={
        "env": "SEGMENT_MIN_SHARE",
        "doc": "least share of the customers a segment may hold: a smaller one is moved where "
               "the largest segment splits, under a new id (0: no minimum; below 1 / "
               "`SEGMENTS_K`)"})
    kmeans_halflife: float = field(default=0.005, metadata={
        "env": "KMEANS_HALFLIFE",
        "doc": "River KMeans step towards each learned vector"})
    model_seed: int = field(default=42, metadata={
        "env": "MODEL_SEED",
        "doc": "seed of the k-means++ warm start"})
    model_warmup_samples: int = field(default=0, metadata={
        "env": "MODEL_WARMUP_SAMPLES",
        "default_doc": "`20 × K`",
        "doc": "vectors buffered before the first centres are chosen"})
    model_sample_customers: int = field(default=5000, metadata={
        "env": "MODEL_SAMPLE_CUSTOMERS",
        "doc": "customers in the learner's sample (the newest vector of each; refinement and "
               "quality figures)"})
    model_refine_every: int = field(default=0, metadata={
        "env": "MODEL_REFINE_EVERY",
        "default_doc": "`max(1000, 20 × K)`",
        "doc": "learned vectors between two batch refinements"})
    model_publish_interval: float = field(default=5.0, metadata={
        "env": "MODEL_PUBLISH_INTERVAL",
        "doc": "seconds between model snapshots (when something was learned)"})
    learner_process: bool = field(default=True, metadata={
        "env": "LEARNER_PROCESS",
        "doc": "the worker that learns runs the learner in a child process of its own (River's "
               "updates then do not hold the worker's GIL); `false`: in a thread of the "
               "worker (one core, or little memory: the process costs ~100 MB)"})
    learn_sample_rate: float = field(default=500.0, metadata={
        "env": "LEARN_SAMPLE_RATE",
        "doc": "at most this many vectors/s per worker go to the learner (the learner's CPU "
               "is bounded by this, whatever the event rate)"})
    learn_sample_interval_hours: float = field(default=1.0, metadata={
        "env": "LEARN_SAMPLE_INTERVAL_HOURS",
        "doc": "a customer is sampled at most once per this much of its event time (and not "
               "in its first interval)"})
    rescore_rate: float = field(default=500.0, metadata={
        "env": "RESCORE_RATE",
        "doc": "customers/s per worker re-scored after a model update (background work: at "
               "most ~20 % of a worker, so events keep their latency)"})
    rescore_min_moved: float = field(default=0.02, metadata={
        "env": "RESCORE_MIN_MOVED",
        "doc": "a model version asks workers to re-score everybody when at least this share "
               "of the learner's sample changed segment since the last version that did"})
    rescore_min_interval_s: float = field(default=30.0, metadata={
        "env": "RESCORE_MIN_INTERVAL_S",
        "doc": "at most one re-scoring pass per this many seconds (a pass uses the newest "
               "model; the rest of the time goes to events)"})
    allowed_lateness_s: float = field(default=3600.0, metadata={
        "env": "ALLOWED_LATENESS_S",
        "doc": "events up to this much older than the customer's newest event still land in "
               "their window bucket"})
    sweep_interval_s: float = field(default=10.0, metadata={
        "env": "SWEEP_INTERVAL_S",
        "doc": "how often the worker looks for customers whose windows slid (event time "
               "passed a midnight)"})
    sweep_rate: float = field(default=500.0, metadata={
        "env": "SWEEP_RATE",
        "doc": "customers/s per worker re-evaluated by the sweep (background work, as "
               "`RESCORE_RATE`)"})
    max_message_bytes: int = field(default=1_000_000, metadata={
        "env": "MAX_MESSAGE_BYTES",
        "doc": "larger input messages go to the DLQ as `oversized`"})
    max_future_skew_s: float = field(default=86_400.0, metadata={
        "env": "MAX_FUTURE_SKEW_S",
        "doc": "events stamped further in the future go to the DLQ"})
    #: Earliest accepted event time: an ISO-8601 date or date-time, UTC unless it has a zone.
    #: The default takes any real history, not a ts in seconds sent as ms (January 1970).
    event_ts_min: str = field(default="1980-01-01", metadata={
        "env": "EVENT_TS_MIN",
        "doc": "events stamped earlier go to the DLQ (`timestamp_out_of_range`): an ISO-8601 "
               "date or date-time, UTC unless it has a zone; lower it to backfill older "
               "history. The default takes any real history (ISO-8601 or epoch milliseconds) "
               "but not a `ts` in seconds sent as milliseconds (January 1970)"})
    log_level: str = field(default="info", metadata={
        "env": "LOG_LEVEL",
        "doc": "worker log level"})
    #: ``text`` (human-readable) or ``json`` (one JSON object per line, for log shippers).
    log_format: str = field(default="text", metadata={
        "env": "LOG_FORMAT",
        "doc": "`text`, or `json`: one JSON object per line (`time`, `level`, `logger`, "
               "`message`) for log shippers"})
    #: Seconds between offset commits (Faust's ``broker_commit_interval``).
    commit_interval_s: float = field(default=2.8, metadata={
        "env": "COMMIT_INTERVAL_S",
        "doc": "seconds between input offset commits (a clean stop commits too)"})
    #: Seconds a customer's state may stay in the worker's cache before it is written to the
    #: changelog (stream_app/worker/customer_store.py).
    state_flush_interval_s: float = field(default=15.0, metadata={
        "env": "STATE_FLUSH_INTERVAL_S",
        "doc": "seconds a customer's state may stay cached before its changelog record is "
               "written (each customer once per flush; a customer with a change at once); "
               "input messages are acknowledged, and so committed, after that flush: a crash "
               "replays up to this much input. Longer: fewer changelog records per event "
               "(docs/performance.md)"})
    #: Dirty customers that make the state cache flush before its interval.
    state_cache_size: int = field(default=20_000, metadata={
        "env": "STATE_CACHE_SIZE",
        "doc": "customers with unwritten state that make the cache flush early (its memory "
               "bound)"})
    #: Input messages processed as one batch at most (Faust's ``noack_take``).
    input_batch_size: int = field(default=500, metadata={
        "env": "INPUT_BATCH_SIZE",
        "doc": "input messages processed as one batch at most"})
    #: Milliseconds the agent waits for a batch to fill before it processes what it has.
    input_batch_wait_ms: float = field(default=10.0, metadata={
        "env": "INPUT_BATCH_WAIT_MS",
        "doc": "milliseconds the agent waits for a batch to fill (the latency it may add)"})
    #: ``GET /ready`` answers 503 while the worker's input lag exceeds this many messages.
    ready_max_lag: int = field(default=10_000, metadata={
        "env": "READY_MAX_LAG",
        "doc": "`GET /ready` answers 503 while the worker's input lag (messages, summed over "
               "its partitions) is above this"})
    #: Seconds a stop (SIGTERM) may take; then the worker exits with status 75 without the
    #: final commit (the broker is unreachable, say). See :mod:`stream_app.worker.connectivity`.
    shutdown_timeout_s: float = field(default=20.0, metadata={
        "env": "SHUTDOWN_TIMEOUT_S",
        "doc": "seconds a stop (SIGTERM) may take; then the worker exits with status 75 "
               "without the final commit (e.g. while Kafka is unreachable)"})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``environ`` (default: ``os.environ``)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            kind = type(f.default)
            try:
                values[f.name] = _bool(raw) if kind is bool else kind(raw)
            except ValueError as exc:
                raise ValueError(f"{f.metadata['env']}={raw!r}: {exc}") from None
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        """Raise ``ValueError`` naming the variable of the first out-of-range setting."""
        if not 2 <= self.segments_k <= 1024:
            raise ValueError("SEGMENTS_K must be between 2 and 1024")
        if self.topic_partitions < 1:
            raise ValueError("TOPIC_PARTITIONS must be at least 1")
        if not 0.0 <= self.segment_margin < 1.0:
            raise ValueError("SEGMENT_MARGIN must be in [0, 1)")
        if not 0.0 <= self.segment_rejudge_margin < 1.0:
            raise ValueError("SEGMENT_REJUDGE_MARGIN must be in [0, 1)")
        if not 0.0 <= self.segment_min_share * self.segments_k < 1.0:
            raise ValueError("SEGMENT_MIN_SHARE must be at least 0 and below 1 / SEGMENTS_K")
        if not 0.0 < self.kmeans_halflife <= 1.0:
            raise ValueError("KMEANS_HALFLIFE must be in (0, 1]")
        if self.segment_clusterer not in CLUSTERERS:
            raise ValueError(f"SEGMENT_CLUSTERER must be one of {', '.join(CLUSTERERS)}")
        if self.model_sample_customers < 1:
            raise ValueError("MODEL_SAMPLE_CUSTOMERS must be at least 1")
        if self.producer_batching not in ("auto", "on", "off"):
            raise ValueError("PRODUCER_BATCHING must be auto, on or off")
        if self.log_format not in ("text", "json"):
            raise ValueError("LOG_FORMAT must be text or json")
        if self.state_flush_interval_s <= 0 or self.state_cache_size < 1:
            raise ValueError("STATE_FLUSH_INTERVAL_S must be positive and STATE_CACHE_SIZE "
                             "at least 1")
        if self.input_batch_size < 1 or self.input_batch_wait_ms <= 0:
            raise ValueError("INPUT_BATCH_SIZE must be at least 1 and INPUT_BATCH_WAIT_MS "
                             "positive")
        if self.commit_interval_s <= 0:
            raise ValueError("COMMIT_INTERVAL_S must be positive")
        if self.audiences_reload_s <= 0:
            raise ValueError("AUDIENCES_RELOAD_S must be positive")
        if self.rocksdb_write_buffer_mb < 1 or self.rocksdb_block_cache_mb < 1:
            raise ValueError("ROCKSDB_WRITE_BUFFER_MB and ROCKSDB_BLOCK_CACHE_MB must be at "
                             "least 1")
        try:
            ts_min = self.event_ts_min_ms
        except ValueError:
            raise ValueError("EVENT_TS_MIN must be an ISO-8601 date or date-time such as "
                             f"1980-01-01 (UTC unless it has a zone), not {self.event_ts_min!r}"
                             ) from None
        if ts_min > time.time() * 1000:
            raise ValueError(f"EVENT_TS_MIN must be in the past, not {self.event_ts_min!r}")

    def exposure_problem(self) -> str | None:
        """Why a worker with these settings must not start, as one line: it would serve
        customer data (``GET /customers/{id}``, segment examples, ids on the map) without a
        token on an address other machines can reach. None when it may start: a token is
        set, ``WEB_BIND`` is a loopback address, or ``API_OPEN`` opts out of the check.

        Only the ``worker`` command asks (other commands read ``WEB_BIND`` but serve
        nothing), so it is not part of :meth:`check`.

        >>> Settings().exposure_problem() is None  # loopback by default
        True
        >>> Settings(web_bind="0.0.0.0", api_token="s3cret").exposure_problem() is None
        True
        >>> Settings(web_bind="0.0.0.0", api_open=True).exposure_problem() is None
        True
        >>> print(Settings(web_bind="0.0.0.0").exposure_problem())  # doctest: +ELLIPSIS
        API_TOKEN is empty and WEB_BIND=0.0.0.0 is not a loopback address: ... set API_OPEN=true ...
        """
        if self.api_token or self.api_open or is_loopback(self.web_bind):
            return None
        return (f"API_TOKEN is empty and WEB_BIND={self.web_bind} is not a loopback address: "
                "refusing to serve customer data without a token to the network; set "
                "API_TOKEN, or bind WEB_BIND=127.0.0.1, or set API_OPEN=true to serve it "
                "without a token (only behind a trusted gateway)")

    @staticmethod
    def env_names() -> dict[str, str]:
        """Map of field name to environment variable name."""
        return {f.name: f.metadata["env"] for f in fields(Settings)}

    @property
    def event_ts_min_ms(self) -> int:
        """``event_ts_min`` as epoch milliseconds (``ValueError`` when it is not ISO-8601)."""
        return instant_ms(self.event_ts_min)

    @property
    def single_record_batches(self) -> bool:
        """Whether producers send one record per batch (see ``producer_batching``)."""
        if self.producer_batching == "auto":
            return self.embedded_broker
        return self.producer_batching == "off"

    def table_options(self) -> dict[str, int] | None:
        """Store options of a Faust table: RocksDB's memory bounds (a fresh dict each time:
        Faust's store pops keys from it), None for other stores."""
        if not self.table_store.startswith("rocksdb"):
            return None
        mb = 1024 * 1024
        return {"write_buffer_size": self.rocksdb_write_buffer_mb * mb,
                "max_write_buffer_number": 2,
                "block_cache_size": self.rocksdb_block_cache_mb * mb}

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap_servers.split(",") if s.strip()]

    def __repr__(self) -> str:  # secrets never reach a log line or a traceback
        shown = {f.name: ("***" if f.name in SECRETS and getattr(self, f.name) else
                          getattr(self, f.name)) for f in fields(self)}
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def input_topics(self) -> tuple[str, str, str]:
        return (self.clickstream_topic, self.purchases_topic, self.profiles_topic)

    @property
    def kind_topics(self) -> dict[str, str]:
        """Input topic of each kind of event (``click``, ``purchase``, ``profile``)."""
        return {"click": self.clickstream_topic, "purchase": self.purchases_topic,
                "profile": self.profiles_topic}

    @property
    def consumed_topics(self) -> dict[str, str]:
        """Every topic the ``process`` agent reads, by kind (inputs, erasure, control)."""
        return {**self.kind_topics, "erasure": self.erasure_topic, "control": self.control_topic}

    @property
    def segment_model_topic(self) -> str:
        return self.model_topic or f"{self.app_id}-segment-model"

    @property
    def samples_topic(self) -> str:
        """Internal topic: sampled feature vectors, consumed by the single learner."""
        return f"{self.app_id}-model-samples"

    @property
    def control_topic(self) -> str:
        """Internal topic co-partitioned with the inputs: re-scoring requests."""
        return f"{self.app_id}-control"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)
