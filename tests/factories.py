"""Builders shared by the tests: input messages, synthetic shop histories, pipeline
settings and a two-segment model, and :class:`Customer`, which feeds one customer's
messages through a :class:`~stream_app.core.pipeline.CustomerPipeline`."""

from __future__ import annotations

import dataclasses
import random
import time

import orjson
from jsonschema import Draft7Validator, FormatChecker

from stream_app.config import Settings
from stream_app.core.features import DAY_MS, HOUR_MS
from stream_app.core.pipeline import CustomerPipeline, Outcome
from stream_app.core.schemas import load_schema
from stream_app.core.state import CustomerState
from stream_app.model.segmentation import FeatureTransform, SegmentLearner, SegmentModel
from stream_app.tools.generator import GeneratedEvent, SyntheticShop

# -- pipeline messages and customers ------------------------------------------------------

D = 20_000  # a UTC day number (2024-10-04)
T0 = D * DAY_MS + 10 * HOUR_MS
MIN_MS = 60_000
SPEC = "orders_30d:log1p,views_7d:log1p"
CHANGE_SCHEMA = Draft7Validator(load_schema("segment-change.schema.json"),
                                format_checker=FormatChecker())
TOPICS = {"click": "clickstream", "purchase": "purchases", "profile": "customer-profiles"}


def settings(**overrides) -> Settings:
    """Immediate moves (no minimum history, no debounce) unless a test says otherwise."""
    return dataclasses.replace(Settings(), **{"segment_features": SPEC, "segments_k": 2,
                                              "segment_min_events": 1,
                                              "segment_confirmations": 1,
                                              "segment_margin": 0.15,
                                              "segment_rejudge_margin": 0.15, **overrides})


def learn_model(version: int = 1, spec: str = SPEC, vectors=None) -> SegmentModel:
    """Two clusters: customers who buy (3-5 orders in 30 days) and who only browse."""
    transform = FeatureTransform(spec)
    learner = SegmentLearner(transform, k=2, warmup=40, seed=1)
    rng = random.Random(5)
    if vectors is None:
        vectors = [{"orders_30d": 0 if i % 2 else rng.randrange(3, 6),
                    "views_7d": rng.randrange(0, 10)} for i in range(40)]
    for features in vectors:
        learner.learn_one(transform.vector(features, {}))
    assert learner.ready
    return learner.snapshot(version)


def segment_of(model: SegmentModel, **features) -> int:
    raw = FeatureTransform(model.spec).vector({"orders_30d": 0, "views_7d": 0, **features}, {})
    return model.assign(raw, None)[0]


def browser_and_buyer(model: SegmentModel) -> tuple[int, int]:
    browser, buyer = segment_of(model, views_7d=1), segment_of(model, orders_30d=3)
    assert browser != buyer
    return browser, buyer


def click_msg(customer: str, ts: int, n: int, event_type: str = "page_view", **extra) -> bytes:
    return orjson.dumps({"event_id": f"{customer}-c{n}", "customer_id": customer, "ts": ts,
                         "event_type": event_type, **extra})


def purchase_msg(customer: str, ts: int, n: int, amount: float = 50.0, **extra) -> bytes:
    return orjson.dumps({"event_id": f"{customer}-o{n}", "customer_id": customer, "ts": ts,
                         "order_id": f"{customer}-order-{n}", "amount": amount, **extra})


def profile_msg(customer: str, ts: int, **attributes) -> bytes:
    return orjson.dumps({"customer_id": customer, "ts": ts, **attributes})


class Customer:
    """Feeds one customer's messages through a pipeline, keeping the stored state."""

    def __init__(self, pipeline: CustomerPipeline, customer_id: str = "c1") -> None:
        self.pipeline = pipeline
        self.id = customer_id
        self.stored: bytes | None = None
        self.offset = 0

    def send(self, kind: str, value: bytes, key: bytes | None = None) -> Outcome:
        self.offset += 1
        out = self.pipeline.process(kind, self.id.encode() if key is None else key, value,
                                    self.stored, TOPICS[kind], 0, self.offset)
        if out.state is not None:
            self.stored = out.state
        return out

    def click(self, ts: int, n: int, event_type: str = "page_view", **extra) -> Outcome:
        return self.send("click", click_msg(self.id, ts, n, event_type, **extra))

    def buy(self, ts: int, n: int, amount: float = 50.0, **extra) -> Outcome:
        return self.send("purchase", purchase_msg(self.id, ts, n, amount, **extra))

    def profile(self, ts: int, **attributes) -> Outcome:
        return self.send("profile", profile_msg(self.id, ts, **attributes))

    def sweep(self, at: int) -> Outcome:
        assert self.stored is not None
        out = self.pipeline.sweep(self.id, self.stored, at)
        if out.state is not None:
            self.stored = out.state
        return out

    def rescore(self, cause_id: str | None = None) -> Outcome:
        assert self.stored is not None
        out = self.pipeline.rescore(self.id, self.stored, cause_id)
        if out.state is not None:
            self.stored = out.state
        return out

    @property
    def state(self) -> CustomerState:
        assert self.stored is not None
        return CustomerState.from_bytes(self.stored)

    @property
    def features(self) -> dict:
        s = self.state
        return s.window.features(s.clock)


def change_of(out: Outcome) -> dict:
    assert out.change is not None
    change = orjson.loads(out.change)
    errors = [e.message for e in CHANGE_SCHEMA.iter_errors(change)]
    assert not errors, errors
    assert out.trigger == change["trigger"]
    return change


def buyer_customer(pipeline: CustomerPipeline, model: SegmentModel) -> Customer:
    """A customer with three orders on day D, in the buyers' segment."""
    c = Customer(pipeline, "buyer")
    for n in range(3):
        c.buy(T0 + n * 10 * MIN_MS, n, 20.0)
    assert c.state.segment == browser_and_buyer(model)[1]
    return c


# -- synthetic shop histories -------------------------------------------------------------


def shop_history(customers: int, events: int, seed: int, step_ms: int = 300_000
                 ) -> tuple[SyntheticShop, list[GeneratedEvent]]:
    """A synthetic shop and ``events`` of its events, ending now, ``step_ms`` of event time
    apart."""
    now = int(time.time() * 1000)
    shop = SyntheticShop(customers, seed=seed, start_ms=now - events * step_ms, step_ms=step_ms)
    return shop, list(shop.events(events))


def shop_events(customers: int, events: int, seed: int, step_ms: int = 300_000
                ) -> list[GeneratedEvent]:
    """The events of :func:`shop_history`."""
    return shop_history(customers, events, seed, step_ms)[1]


def as_triples(events: list[GeneratedEvent]) -> list[tuple[str, bytes, bytes]]:
    """``(kind, key, value)`` of each event (the kind names the input topic)."""
    return [(e.kind, e.key, e.value) for e in events]
