"""The explicit options of the pure parts, and the one place that fills them from the
settings (``stream_app.worker.options``); the subscriptions' defaults, which the client
reads without the settings, agree with the settings' variables and defaults."""

from __future__ import annotations

import dataclasses

import pytest

from stream_app import config
from stream_app.client import subscribe as client
from stream_app.config import Settings
from stream_app.core.pipeline import CustomerPipeline, PipelineOptions
from stream_app.core.state import CustomerState
from stream_app.model.options import CLUSTERERS, LearnerOptions
from stream_app.model.segmentation import SegmentLearner, learner_for
from stream_app.worker.options import learner_options, pipeline_options

#: A setting of every field an option is read from, none at its default.
CHANGED = Settings(
    app_id="options-app", segment_features="orders_90d:log1p,app_share_30d:identity:0.5",
    segment_margin=0.3, segment_rejudge_margin=0.1, segment_confirmations=3,
    segment_min_events=5, allowed_lateness_s=120.0, learn_sample_rate=7.0,
    learn_sample_interval_hours=2.0, max_message_bytes=4096, max_future_skew_s=60.0,
    event_ts_min="1990-01-01", pseudonym_key="s3cret", segments_k=4,
    model_warmup_samples=50, kmeans_halflife=0.1, model_seed=9, model_sample_customers=300,
    model_refine_every=2000, rescore_min_moved=0.05, segment_clusterer="clustream",
    segment_min_share=0.01,
)


def test_every_option_differs_from_its_default_in_the_changed_settings():
    defaults = Settings()
    for options in (pipeline_options, learner_options):
        changed = dataclasses.asdict(options(CHANGED))
        default = dataclasses.asdict(options(defaults))
        assert [name for name in changed if changed[name] == default[name]] == []


def test_pipeline_options_come_from_their_settings():
    options = pipeline_options(CHANGED)
    assert options == PipelineOptions(
        app_id="options-app", features=CHANGED.segment_features, margin=0.3,
        rejudge_margin=0.1, confirmations=3, min_events=5, lateness_s=120.0, sample_rate=7.0,
        sample_interval_hours=2.0, max_message_bytes=4096, max_future_skew_s=60.0,
        min_ts_ms=631_152_000_000, pseudonym_key="s3cret")
    pipeline = CustomerPipeline(options)
    assert (pipeline.margin, pipeline.rejudge_margin, pipeline.return_margin) == (0.3, 0.1, 0.6)
    assert (pipeline.confirmations, pipeline.min_events, pipeline.lateness_ms) == (3, 5, 120_000)
    assert pipeline.transform.spec == CHANGED.segment_features
    assert (pipeline.decoder.max_message_bytes, pipeline.decoder.max_future_skew_ms,
            pipeline.decoder.min_ts_ms) == (4096, 60_000, 631_152_000_000)
    assert pipeline.customer_key(b"c1") != b"c1"  # pseudonymised with the key


def test_the_pseudonym_key_is_not_in_the_options_repr():
    assert "s3cret" not in repr(pipeline_options(CHANGED))
    assert "app_id='options-app'" in repr(pipeline_options(CHANGED))


def test_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        pipeline_options(Settings()).margin = 0.1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        learner_options(Settings()).k = 3  # type: ignore[misc]


def test_learner_options_come_from_their_settings():
    options = learner_options(CHANGED)
    assert options == LearnerOptions(
        features=CHANGED.segment_features, k=4, warmup=50, halflife=0.1, seed=9, sample=300,
        refine_every=2000, rescore_share=0.05, clusterer="clustream", min_share=0.01)
    learner = learner_for(options)
    assert (learner.k, learner.warmup, learner.seed, learner.clusterer) == (4, 50, 9, "clustream")
    assert (learner.refine_every, learner.rescore_share, learner.min_share) == (2000, 0.05, 0.01)
    assert learner.sample.capacity == 300
    assert learner.transform.spec == CHANGED.segment_features


def test_a_resumed_learner_takes_the_snapshots_features_and_k_and_the_options_rest():
    options = learner_options(dataclasses.replace(Settings(), segments_k=2,
                                                  segment_features="app_share_30d",
                                                  model_warmup_samples=10, model_seed=3))
    learner = learner_for(options)
    for i in range(10):
        learner.learn_one([float(i % 2)])
    snapshot = learner.snapshot(version=1)
    other = dataclasses.replace(options, k=5, features="orders_90d", seed=4, sample=77)
    resumed = learner_for(other, snapshot)
    assert isinstance(resumed, SegmentLearner)
    assert (resumed.k, resumed.names, resumed.seed) == (2, ("app_share_30d",), 4)
    assert resumed.sample.capacity == 77


def test_the_clusterers_are_defined_once_in_the_model():
    assert config.CLUSTERERS is CLUSTERERS
    with pytest.raises(ValueError, match="SEGMENT_CLUSTERER"):
        Settings.from_env({"SEGMENT_CLUSTERER": "dbscan"})


def test_a_pipeline_runs_on_options_written_out_without_settings():
    options = PipelineOptions(
        app_id="hand-made", features="orders_90d:log1p,views_7d:log1p", margin=0.45,
        rejudge_margin=0.2, confirmations=2, min_events=1, lateness_s=3600.0,
        sample_rate=500.0, sample_interval_hours=1.0, max_message_bytes=1000,
        max_future_skew_s=86_400.0, min_ts_ms=0, pseudonym_key="")
    pipeline = CustomerPipeline(options)
    out = pipeline.process("click", b"c1", b'{"customer_id": "c1", "event_id": "e1",'
                           b' "event_type": "page_view", "ts": 1700000000000}', None,
                           "clickstream", 0, 0)
    assert out.reason is None and CustomerState.from_bytes(out.state).clock == 1700000000000
    oversized = pipeline.process("click", b"c1", b" " * 1001, None, "clickstream", 0, 1)
    assert oversized.reason == "oversized" and b'"hand-made"' in oversized.dlq


@pytest.mark.parametrize(("default", "field"), [
    (client.DEFAULT_SERVERS, "kafka_bootstrap_servers"),
    (client.DEFAULT_SEGMENT_CHANGES_TOPIC, "segment_changes_topic"),
    (client.DEFAULT_AUDIENCE_CHANGES_TOPIC, "audience_changes_topic"),
])
def test_the_subscriptions_defaults_are_the_settings(default, field):
    name, value = default
    assert Settings.env_names()[field] == name
    assert getattr(Settings(), field) == value


def test_subscriptions_read_their_defaults_from_the_environment_when_called(monkeypatch):
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "SEGMENT_CHANGES_TOPIC", "AUDIENCE_CHANGES_TOPIC"):
        monkeypatch.delenv(name, raising=False)
    plain = client.subscribe()
    assert (plain.source.bootstrap_servers, plain.topic) == (["127.0.0.1:9092"], "segment-changes")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092, k2:9092")
    monkeypatch.setenv("SEGMENT_CHANGES_TOPIC", "changes-x")
    monkeypatch.setenv("AUDIENCE_CHANGES_TOPIC", "")  # empty: the default, as for a worker
    changes, audiences = client.subscribe(), client.subscribe_audiences()
    assert changes.source.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert (changes.topic, audiences.topic) == ("changes-x", "audience-changes")
    explicit = client.subscribe("k3:9092", topic="mine")
    assert (explicit.source.bootstrap_servers, explicit.topic) == (["k3:9092"], "mine")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", ",")
    with pytest.raises(ValueError, match="no bootstrap servers"):
        client.subscribe()
