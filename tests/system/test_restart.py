"""A restarted worker recovers customer state and the model from Kafka, not from memory."""

from __future__ import annotations

import time

from stream_app.tools.generator import SyntheticShop
from tests.conftest import metric_sum, produce, wait_for

STEP_MS = 600_000


def test_restarted_worker_resumes_state_and_model(make_worker, broker):
    first = make_worker(SEGMENTS_K=6).start()
    now = int(time.time() * 1000)
    shop = SyntheticShop(100, seed=21, start_ms=now - 4000 * STEP_MS, step_ms=STEP_MS)
    events = list(shop.events(4000))
    before, after = events[:2500], events[2500:]
    produce(broker.bootstrap_servers, [(first.topics[e.kind], e.key, e.value) for e in before])
    wait_for(lambda: metric_sum(first.metrics(), "stream_app_events_consumed_total") == 2500,
             120, "the first part to be consumed")
    wait_for(lambda: first.get("/segments")[1]["unassigned"] == 0 and
             first.get("/segments")[1]["model_version"] >= 1, 60, "a model and assignments")
    previous: list[tuple[float, ...]] = [()]

    def settled() -> bool:  # the learner and re-scoring are done: nothing moves any more
        m = first.metrics()
        now = tuple(metric_sum(m, name) for name in (
            "stream_app_model_version", "stream_app_segment_changes_total",
            "stream_app_learner_samples_learned_total", "stream_app_rescore_requests_total"))
        done = now == previous[0] and metric_sum(m, "stream_app_rescore_waiting") == 0
        previous[0] = now
        return done

    wait_for(settled, 90, "the model and the assignments to settle", interval=2.0)
    customers = sorted(shop.planted)[:20]
    documents = {c: first.get(f"/customers/{c}")[1] for c in customers}
    version_before = first.get("/segments")[1]["model_version"]
    seen_before = first.get("/model")[1]["samples_seen"]
    assert seen_before > 0
    assert first.stop() == 0  # SIGTERM: a clean exit

    # A new process with an empty data directory: everything comes back from Kafka.
    second = make_worker(SEGMENTS_K=6).start()
    wait_for(lambda: second.get("/ready")[0] == 200, 60, "the restarted worker to be ready")
    assert second.get("/segments")[1]["model_version"] >= version_before
    # Labels describe the applied model's centres: a newer version may word them anew.
    labels = second.get("/model")[1]["labels"]
    for c in customers:
        status, doc = second.get(f"/customers/{c}")
        assert status == 200 and doc["segment_label"] == labels[doc["segment"]]
        assert ({**doc, "segment_label": None}
                == {**documents[c], "segment_label": None}), (doc, documents[c])

    produce(broker.bootstrap_servers, [(second.topics[e.kind], e.key, e.value) for e in after])
    wait_for(lambda: metric_sum(second.metrics(), "stream_app_events_consumed_total") == 1500,
             120, "the second part to be consumed")
    wait_for(lambda: second.get("/segments")[1]["model_version"] > version_before, 60,
             "a newer model version from the resumed learner")
    # The learner resumed from a snapshot at least as new as the one read before the stop:
    # once it has learned everything and published, its count is that snapshot's plus all
    # it learned since (a learner started afresh would count only the latter).
    def resumed() -> bool:
        learned = metric_sum(second.metrics(), "stream_app_learner_samples_learned_total")
        status, body = second.get("/model")
        return status == 200 and body["samples_seen"] >= seen_before + learned > learned

    wait_for(resumed, 60, "a model counting the resumed learner's samples")


def test_sigterm_during_a_rescoring_pass_exits_cleanly(make_worker, broker):
    # A slow re-scoring pass (5 customers a second) is still sending control messages when
    # SIGTERM arrives: the worker must stop the pass, not crash on the stopped producer.
    worker = make_worker(SEGMENTS_K=4, RESCORE_RATE=5).start()
    now = int(time.time() * 1000)
    shop = SyntheticShop(120, seed=5, start_ms=now - 3000 * STEP_MS, step_ms=STEP_MS)
    produce(broker.bootstrap_servers,
            [(worker.topics[e.kind], e.key, e.value) for e in shop.events(3000)])
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_rescore_requests_total") > 0,
             120, "a re-scoring pass to start", interval=0.2)
    assert metric_sum(worker.metrics(), "stream_app_rescore_requests_total") < 100
    assert worker.stop() == 0, worker.log()
