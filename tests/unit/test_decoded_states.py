"""Decoded states kept between a customer's messages (``DecodedStates``) change nothing:
the same messages give the same outcomes as decoding the stored state every time."""

from __future__ import annotations

import random
from pathlib import Path

import orjson

from stream_app.core.audiences import AudienceSet
from stream_app.core.pipeline import CustomerPipeline, Outcome
from stream_app.core.state import CustomerState
from stream_app.model.segmentation import SegmentModel
from stream_app.worker.options import pipeline_options
from tests.factories import TOPICS, learn_model, profile_msg, settings, shop_events

AUDIENCES = Path(__file__).parents[2] / "examples" / "audiences.yaml"
#: Wall-clock fields of the messages (the rest must be equal).
WALL_CLOCK = ("emitted_at", "failed_at")


def moved_model(model: SegmentModel, version: int, shift: float) -> SegmentModel:
    return SegmentModel(version, model.features, model.transforms, model.impute, model.mean,
                        model.std, model.centres + shift, model.labels, model.samples_seen,
                        model.created_at, weights=model.weights)


def comparable(out: Outcome) -> tuple:
    """Everything of an outcome but the wall-clock times in its messages."""
    def message(raw: bytes | None) -> object:
        if raw is None:
            return None
        doc = orjson.loads(raw)
        for name in WALL_CLOCK:
            doc.pop(name, None)
        return doc
    audience = [(name, action, message(raw)) for name, action, raw in out.audience_changes or []]
    return (out.state, message(out.change), out.trigger, out.sample, message(out.dlq),
            out.reason, out.duplicate, out.late, out.flap, out.moved, out.event_ts,
            out.sweep_at, out.clock, out.vector, out.segment, out.erase, out.excluded,
            audience, out.audience_moves)


class Run:
    """One pipeline and its store, fed a script of steps."""

    def __init__(self, decoded_states: int, model: SegmentModel) -> None:
        # No sampling limit: the token bucket runs on the wall clock, not on the events.
        self.pipeline = CustomerPipeline(pipeline_options(settings(learn_sample_rate=1e9)),
                                         decoded_states=decoded_states)
        self.pipeline.use_model(model)
        self.pipeline.use_audiences(AudienceSet.load(AUDIENCES))
        self.store: dict[bytes, bytes] = {}
        self.offset = 0

    def keep(self, key: bytes, outs: list[Outcome]) -> list[tuple]:
        for out in outs:
            if out.erase:
                self.store.pop(key, None)
            elif out.state is not None:
                self.store[key] = out.state
        return [comparable(out) for out in outs]

    def step(self, step: tuple) -> list[tuple]:
        what, key, arg = step
        pipeline, stored = self.pipeline, self.store.get(key)
        if what == "message":
            kind, value = arg
            self.offset += 1
            return self.keep(key, pipeline.process_message(kind, key, value, stored,
                                                           TOPICS.get(kind, "customer-erasure"), 0,
                                                           self.offset))
        if stored is None:
            return []
        if what == "rescore":
            return self.keep(key, [pipeline.rescore(key.decode(), stored)])
        if what == "sweep":
            return self.keep(key, [pipeline.sweep(key.decode(), stored, arg)])
        if what == "restate":
            return self.keep(key, [pipeline.restate(key.decode(), stored)])
        if what == "reevaluate":
            return self.keep(key, [pipeline.reevaluate_audiences(key.decode(), stored, arg)])
        if what == "model":
            pipeline.use_model(arg)
            return []
        raise ValueError(what)


def script(seed: int) -> tuple[list[tuple], SegmentModel]:
    """A shop's events with what a worker meets besides: copies of earlier messages (a
    replay), profile updates withdrawing consent, erasures, a new model and re-scoring,
    sweeps, restatements after a rebalance, audience passes."""
    rng = random.Random(seed)
    events = shop_events(120, 2500, seed=seed)
    model = learn_model()
    newer = moved_model(model, model.version + 1, 0.3)
    steps: list[tuple] = []
    for n, event in enumerate(events):
        steps.append(("message", event.key, (event.kind, event.value)))
        roll = rng.random()
        if roll < 0.08 and n > 10:  # a copy of an earlier message of anybody
            earlier = events[rng.randrange(n)]
            steps.append(("message", earlier.key, (earlier.kind, earlier.value)))
        elif roll < 0.10:
            steps.append(("rescore", event.key, None))
        elif roll < 0.12:
            steps.append(("sweep", event.key, event.ts + rng.randrange(1, 40) * 86_400_000))
        elif roll < 0.13:
            steps.append(("restate", event.key, None))
        elif roll < 0.14:
            steps.append(("reevaluate", event.key, f"definitions:{n}"))
        elif roll < 0.145:
            body = {"customer_id": event.key.decode(), "request_id": f"r{n}"}
            steps.append(("message", event.key, ("erasure", orjson.dumps(body))))
        elif roll < 0.15:
            steps.append(("message", event.key, ("profile", profile_msg(
                event.key.decode(), event.ts + 1, consent={"segmentation": False}))))
        if n == len(events) // 2:
            steps.append(("model", b"", newer))
    return steps, model


def test_kept_states_give_the_outcomes_of_states_decoded_every_time() -> None:
    steps, model = script(seed=11)
    cold, warm = Run(0, model), Run(64, model)  # 64 < 120 customers: entries are evicted
    for n, step in enumerate(steps):
        assert warm.step(step) == cold.step(step), f"step {n}: {step[0]} {step[1]!r}"
    assert warm.store == cold.store
    assert len(cold.pipeline.decoded) == 0 and 0 < len(warm.pipeline.decoded) <= 64
    kinds = {step[0] for step in steps}
    assert kinds == {"message", "rescore", "sweep", "restate", "reevaluate", "model"}


def test_a_state_changed_by_a_message_that_then_fails_is_decoded_again() -> None:
    """The entry is taken before the message is applied: a failure half way leaves no
    half-changed state behind for the next message."""
    model = learn_model()
    run = Run(16, model)
    event = shop_events(1, 3, seed=5)
    for e in event[:2]:
        run.step(("message", e.key, (e.kind, e.value)))
    stored = run.store[event[0].key]
    assert len(run.pipeline.decoded) == 1
    original = run.pipeline._apply

    def failing(ev, state, out, first):  # type: ignore[no-untyped-def]
        state.window.orders_total += 1000  # changed in place, then the failure
        raise RuntimeError("boom")

    run.pipeline._apply = failing  # type: ignore[method-assign]
    try:
        run.step(("message", event[2].key, (event[2].kind, event[2].value)))
    except RuntimeError:
        pass
    else:
        raise AssertionError("the failure did not come through")
    run.pipeline._apply = original  # type: ignore[method-assign]
    assert len(run.pipeline.decoded) == 0
    assert run.store[event[0].key] is stored
    fresh = CustomerState.from_bytes(stored)
    taken = run.pipeline.decoded.take(stored)
    assert taken is not fresh and taken.window.orders_total == fresh.window.orders_total

