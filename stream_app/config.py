"""Configuration: one frozen :class:`Settings` read from environment variables.

Every setting has an environment variable (the name in :data:`ENV`), a default, and a
meaning documented in the README's configuration reference. The CLI's options write
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
#: time of day, channel) count half. The README's Segmentation section has the figures on
#: both workloads behind it.
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

    kafka_bootstrap_servers: str = field(
        default="127.0.0.1:9092", metadata={"env": "KAFKA_BOOTSTRAP_SERVERS"}
    )
    app_id: str = field(default="stream-app", metadata={"env": "STREAM_APP_ID"})
    clickstream_topic: str = field(default="clickstream", metadata={"env": "CLICKSTREAM_TOPIC"})
    purchases_topic: str = field(default="purchases", metadata={"env": "PURCHASES_TOPIC"})
    profiles_topic: str = field(default="customer-profiles", metadata={"env": "PROFILES_TOPIC"})
    segment_changes_topic: str = field(
        default="segment-changes", metadata={"env": "SEGMENT_CHANGES_TOPIC"}
    )
    dlq_topic: str = field(default="stream-app-dlq", metadata={"env": "DLQ_TOPIC"})
    #: Named, rule-defined audiences (YAML or JSON, schemas/audiences.schema.json; empty:
    #: none). Re-read when the file changes, every ``audiences_reload_s`` seconds.
    audiences_file: str = field(default="", metadata={"env": "AUDIENCES_FILE"})
    audiences_reload_s: float = field(default=5.0, metadata={"env": "AUDIENCES_RELOAD_S"})
    #: Output topic of audience enter/exit events (schemas/audience-change.schema.json).
    audience_changes_topic: str = field(
        default="audience-changes", metadata={"env": "AUDIENCE_CHANGES_TOPIC"}
    )
    #: Right to be forgotten: a message keyed by a customer id erases the customer.
    erasure_topic: str = field(default="customer-erasure", metadata={"env": "ERASURE_TOPIC"})
    #: Secret of the keyed hash that replaces customer ids at ingestion (empty: ids kept).
    pseudonym_key: str = field(default="", metadata={"env": "PSEUDONYM_KEY"})
    #: Bearer token the customer endpoints require (empty: they are open, which the worker
    #: allows only on a loopback ``web_bind`` unless ``api_open``; see :meth:`exposure_problem`).
    api_token: str = field(default="", metadata={"env": "API_TOKEN"})
    #: Opt-out: serve customer data without a token on a non-loopback address (only behind
    #: a trusted gateway that authenticates the callers itself).
    api_open: bool = field(default=False, metadata={"env": "API_OPEN"})
    model_topic: str = field(default="", metadata={"env": "SEGMENT_MODEL_TOPIC"})
    web_port: int = field(default=6066, metadata={"env": "WEB_PORT"})
    web_host: str = field(default="127.0.0.1", metadata={"env": "WEB_HOST"})
    #: Address the HTTP server binds: loopback by default (docs/security.md).
    web_bind: str = field(default="127.0.0.1", metadata={"env": "WEB_BIND"})
    segments_k: int = field(default=32, metadata={"env": "SEGMENTS_K"})
    data_dir: str = field(default="./data", metadata={"env": "DATA_DIR"})
    topic_partitions: int = field(default=4, metadata={"env": "TOPIC_PARTITIONS"})
    topic_replication: int = field(default=1, metadata={"env": "TOPIC_REPLICATION"})
    table_store: str = field(default="memory://", metadata={"env": "TABLE_STORE"})
    #: RocksDB memory per table partition (Faust's defaults: 3 × 64 MB memtables and a 2 GB
    #: block cache each, so RSS grows with the state up to gigabytes per partition).
    rocksdb_write_buffer_mb: int = field(default=8, metadata={"env": "ROCKSDB_WRITE_BUFFER_MB"})
    rocksdb_block_cache_mb: int = field(default=32, metadata={"env": "ROCKSDB_BLOCK_CACHE_MB"})
    embedded_broker: bool = field(default=False, metadata={"env": "STREAM_APP_EMBEDDED_BROKER"})
    #: ``auto``: one record per producer batch on the embedded broker (Tansu reports a wrong
    #: end offset after a multi-record batch, which truncates changelog recovery), normal
    #: batches elsewhere; ``on``/``off`` force it.
    producer_batching: str = field(default="auto", metadata={"env": "PRODUCER_BATCHING"})
    segment_features: str = field(
        default=DEFAULT_SEGMENT_FEATURES, metadata={"env": "SEGMENT_FEATURES"}
    )
    segment_clusterer: str = field(default="kmeans", metadata={"env": "SEGMENT_CLUSTERER"})
    segment_margin: float = field(default=0.45, metadata={"env": "SEGMENT_MARGIN"})
    #: The margin of moves not caused by the customer's own events (model updates, the
    #: passage of time, profile updates).
    segment_rejudge_margin: float = field(default=0.2,
                                          metadata={"env": "SEGMENT_REJUDGE_MARGIN"})
    segment_confirmations: int = field(default=2, metadata={"env": "SEGMENT_CONFIRMATIONS"})
    #: Clicks in the last 90 days that place a customer who never bought (one purchase
    #: always places).
    segment_min_events: int = field(default=3, metadata={"env": "SEGMENT_MIN_EVENTS"})
    #: Least share of the customers a segment may hold: smaller ones are revived where
    #: the largest segment is split, under a new id (0: no minimum).
    segment_min_share: float = field(default=0.005, metadata={"env": "SEGMENT_MIN_SHARE"})
    kmeans_halflife: float = field(default=0.005, metadata={"env": "KMEANS_HALFLIFE"})
    model_seed: int = field(default=42, metadata={"env": "MODEL_SEED"})
    model_warmup_samples: int = field(default=0, metadata={"env": "MODEL_WARMUP_SAMPLES"})
    model_sample_customers: int = field(default=5000, metadata={"env": "MODEL_SAMPLE_CUSTOMERS"})
    model_refine_every: int = field(default=0, metadata={"env": "MODEL_REFINE_EVERY"})
    model_publish_interval: float = field(
        default=5.0, metadata={"env": "MODEL_PUBLISH_INTERVAL"}
    )
    learn_sample_rate: float = field(default=500.0, metadata={"env": "LEARN_SAMPLE_RATE"})
    learn_sample_interval_hours: float = field(
        default=1.0, metadata={"env": "LEARN_SAMPLE_INTERVAL_HOURS"}
    )
    rescore_rate: float = field(default=500.0, metadata={"env": "RESCORE_RATE"})
    rescore_min_moved: float = field(default=0.02, metadata={"env": "RESCORE_MIN_MOVED"})
    rescore_min_interval_s: float = field(default=30.0,
                                          metadata={"env": "RESCORE_MIN_INTERVAL_S"})
    allowed_lateness_s: float = field(default=3600.0, metadata={"env": "ALLOWED_LATENESS_S"})
    sweep_interval_s: float = field(default=10.0, metadata={"env": "SWEEP_INTERVAL_S"})
    sweep_rate: float = field(default=500.0, metadata={"env": "SWEEP_RATE"})
    max_message_bytes: int = field(default=1_000_000, metadata={"env": "MAX_MESSAGE_BYTES"})
    max_future_skew_s: float = field(default=86_400.0, metadata={"env": "MAX_FUTURE_SKEW_S"})
    #: Earliest accepted event time: an ISO-8601 date or date-time, UTC unless it has a zone.
    #: The default takes any real history, not a ts in seconds sent as ms (January 1970).
    event_ts_min: str = field(default="1980-01-01", metadata={"env": "EVENT_TS_MIN"})
    log_level: str = field(default="info", metadata={"env": "LOG_LEVEL"})
    #: ``text`` (human-readable) or ``json`` (one JSON object per line, for log shippers).
    log_format: str = field(default="text", metadata={"env": "LOG_FORMAT"})
    #: Seconds between offset commits (Faust's ``broker_commit_interval``).
    commit_interval_s: float = field(default=2.8, metadata={"env": "COMMIT_INTERVAL_S"})
    #: ``GET /ready`` answers 503 while the worker's input lag exceeds this many messages.
    ready_max_lag: int = field(default=10_000, metadata={"env": "READY_MAX_LAG"})
    #: Seconds a stop (SIGTERM) may take; then the worker exits with status 75 without the
    #: final commit (the broker is unreachable, say). See :mod:`stream_app.worker.connectivity`.
    shutdown_timeout_s: float = field(default=20.0, metadata={"env": "SHUTDOWN_TIMEOUT_S"})

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
