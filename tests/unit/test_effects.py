"""stream_app/core/effects.py: the order of an outcome's effects, and the worker's sink
(stream_app/worker/sink.py) doing what ``publish`` in stream_app/worker/app.py did before
the seam (the expected call sequences below are read off that code)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream_app.core.effects import (
    Counted,
    DeadLetter,
    DeleteState,
    Effect,
    MoveSegment,
    PutState,
    SendAudienceChanges,
    SendChange,
    SendSample,
    apply,
    apply_sync,
    effects_of,
    effects_of_batch,
    leaves,
)
from stream_app.core.pipeline import Outcome
from stream_app.worker import patches
from stream_app.worker.customer_store import CustomerStore
from stream_app.worker.processing import Processor
from stream_app.worker.sink import BatchSink, WorkerSink

KEY = b"k1"


def kinds(effects: list[Effect]) -> list[str]:
    return [type(e).__name__ for e in effects]


def normal() -> Outcome:
    return Outcome(state=b"state", change=b"change", trigger="event", sample=b"sample",
                   moved=(0, 1), event_type="click", sweep_at=123, vector=[1.0, 2.0],
                   segment=1, audience_changes=[("vip", "enter", b"aud")],
                   audience_trigger="event", audience_moves=[("vip", "enter")])


def test_a_normal_change_goes_after_the_state():
    effects = effects_of(normal(), KEY, 2, 1700.0)
    assert kinds(effects) == ["PutState", "IndexVector", "ScheduleSweep", "MoveSegment",
                              "MoveAudiences", "SendSample", "SendChange",
                              "SendAudienceChanges"]
    assert effects[0] == PutState(KEY, 2, b"state", False)
    assert effects[6] == SendChange(KEY, b"change", "event", False, (0, 1), False, 1700.0)
    assert effects[7] == SendAudienceChanges(KEY, [("vip", "enter", b"aud")], False)


def test_a_leaving_change_goes_before_the_state():
    out = Outcome(state=b"state", excluded=True, change=b"left", trigger="consent",
                  moved=(1, -2), event_type="profile", sample=b'{"forget":"m"}',
                  audience_changes=[("vip", "exit", b"aud")], audience_trigger="consent",
                  audience_moves=[("vip", "exit")])
    effects = effects_of(out, KEY, 0)
    assert kinds(effects) == ["SendChange", "SendAudienceChanges", "PutState",
                              "MoveSegment", "MoveAudiences", "SendSample"]
    assert effects[0].leaving and effects[1].leaving  # type: ignore[union-attr]
    assert effects[2] == PutState(KEY, 0, b"state", True)  # excluded: forget the traces


def test_a_dead_letter_is_the_only_effect():
    out = Outcome(dlq=b"bad", reason="schema", duplicate=True, state=b"never")
    assert effects_of(out, None, 4) == [DeadLetter(None, b"bad", "schema")]


def test_an_erasure_announces_then_deletes():
    out = Outcome(erase=True, change=b"erased", trigger="erasure", moved=(1, None),
                  event_type="erasure", sample=b'{"forget":"m"}')
    effects = effects_of(out, KEY, 3)
    assert effects == [Counted(False, False, False, "erased"),
                       SendChange(KEY, b"erased", "erasure", True, (1, None), False, None),
                       DeleteState(KEY, 3), MoveSegment(3, 1, None),
                       SendSample(b'{"forget":"m"}')]
    unknown = Outcome(event_type="erasure")
    assert effects_of(unknown, KEY, 3) == [Counted(False, False, False, "unknown")]


def test_counters_only_when_set():
    assert kinds(effects_of(Outcome(state=b"s"), KEY, 0)) == ["PutState"]
    out = Outcome(duplicate=True, late=True, excluded=True, event_type="purchase")
    assert effects_of(out, KEY, 0) == [Counted(True, True, True, None)]
    profile = Outcome(excluded=True, event_type="profile")  # a profile is not counted
    assert effects_of(profile, KEY, 0) == []


def test_a_batch_keeps_each_customers_order():
    a, b = b"a", b"b"
    gone = Outcome(erase=True, change=b"x", trigger="erasure", event_type="erasure")
    batch = [(normal(), a, 0, None), (gone, b, 1, None), (normal(), a, 0, 5.0)]
    effects = effects_of_batch(batch)
    singly: list[Effect] = []
    for out, key, partition, ts in batch:
        singly += effects_of(out, key, partition, ts)
    assert effects == singly
    n, m = len(effects_of(normal(), a, 0)), len(effects_of(gone, b, 1))
    assert len(effects) == 2 * n + m
    assert kinds(effects[:n]) == kinds(effects[n + m:]) == kinds(effects_of(normal(), a, 0))
    assert kinds(effects[n:n + m]) == ["Counted", "SendChange", "DeleteState"]
    assert effects[-2].timestamp == 5.0  # type: ignore[union-attr]


class Recording:
    """A sink (sync and async) that writes down every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        io = {"dead_letter", "send_change", "send_audience_changes", "put_state",
              "delete_state", "send_sample"}

        async def later(effect: Any) -> None:
            self.calls.append((name, effect))

        def now(effect: Any) -> None:
            self.calls.append((name, effect))

        return later if name in io and self.asynchronous else now

    asynchronous = True


def test_apply_and_apply_sync_call_the_same_methods_in_order():
    effects = effects_of(normal(), KEY, 2) + effects_of(
        Outcome(erase=True, change=b"x", trigger="erasure", event_type="erasure"), KEY, 2)
    asynchronous, synchronous = Recording(), Recording()
    synchronous.asynchronous = False
    asyncio.run(apply(effects, asynchronous))
    apply_sync(effects, synchronous)
    assert asynchronous.calls == synchronous.calls
    assert [effect for _, effect in asynchronous.calls] == effects
    assert [name for name, _ in asynchronous.calls] == [
        "put_state", "index_vector", "schedule_sweep", "move_segment", "move_audiences",
        "send_sample", "send_change", "send_audience_changes", "count", "send_change",
        "delete_state"]
    with pytest.raises(TypeError):
        apply_sync([("not", "an effect")], synchronous)  # type: ignore[list-item]


# -- the worker's sink against what publish did -------------------------------------------

class Log(list):
    """What the worker did, in order."""


class Sent:
    def __init__(self, log: Log, what: str) -> None:
        self.log, self.what = log, what

    def __await__(self) -> Any:
        self.log.append(("acked", self.what))
        return iter(())


class Topic:
    def __init__(self, log: Log, name: str) -> None:
        self.log, self.name = log, name

    async def send(self, key: Any = None, value: Any = None) -> Sent:
        self.log.append(("send", self.name, key, value))
        return Sent(self.log, f"{self.name}:{value!r}")


class Metric:
    def __init__(self, log: Log, name: str) -> None:
        self.log, self.name = log, name

    def labels(self, *labels: Any) -> Metric:
        return Metric(self.log, f"{self.name}{list(labels)}")

    def inc(self, n: int = 1) -> None:
        self.log.append(("inc", self.name))

    def observe(self, value: float) -> None:
        self.log.append(("observe", self.name))


class Metrics:
    def __init__(self, log: Log) -> None:
        self.log = log

    def __getattr__(self, name: str) -> Metric:
        return Metric(self.log, name)


class Thing:
    """Index, schedule, sizes, recent changes: every call written down."""

    def __init__(self, log: Log, name: str) -> None:
        self.log, self.name = log, name

    def __getattr__(self, method: str) -> Any:
        return lambda *args: self.log.append((f"{self.name}.{method}", *args))


class Pipeline:
    class model:  # stands for a SegmentModel
        spec = "spec"


#: What publish's forget_customer did, in its order (batches and catch-up sets: ``forget``).
FORGOTTEN = [("index.forget", KEY), ("recent.forget", KEY), ("schedule.forget", 2, KEY),
             ("forget", KEY, 2)]


def worker_sink(log: Log, monkeypatch: pytest.MonkeyPatch) -> WorkerSink:
    async def write_through(table: Any, key: Any, value: Any, partition: int) -> None:
        log.append(("write", key, value, partition))

    monkeypatch.setattr(patches, "write_through", write_through)
    monkeypatch.setattr("time.time", lambda: 2000.0)
    store = CustomerStore({}, Metrics(Log()), flush_interval_s=5.0,  # type: ignore[arg-type]
                          max_dirty=100)
    return WorkerSink(
        customers=store, changes_topic=Topic(log, "changes"),
        audience_topic=Topic(log, "audiences"), dlq_topic=Topic(log, "dlq"),
        samples_topic=Topic(log, "samples"), metrics=Metrics(log),  # type: ignore[arg-type]
        pipeline=Pipeline(), index=Thing(log, "index"),  # type: ignore[arg-type]
        schedule=Thing(log, "schedule"), sizes=Thing(log, "sizes"),  # type: ignore[arg-type]
        audience_sizes=Thing(log, "audience_sizes"),  # type: ignore[arg-type]
        recent_changes=Thing(log, "recent"),  # type: ignore[arg-type]
        forget=lambda key, partition: log.append(("forget", key, partition)))


def run(out: Outcome, monkeypatch: pytest.MonkeyPatch, timestamp: float | None = None
        ) -> Log:
    log = Log()
    asyncio.run(apply(effects_of(out, KEY, 2, timestamp), worker_sink(log, monkeypatch)))
    return log


def test_the_worker_sink_does_what_publish_did_for_a_normal_change(monkeypatch):
    assert run(normal(), monkeypatch, timestamp=1999.5) == [
        ("write", KEY, b"state", 2),
        ("index.record", KEY, 2, "spec", [1.0, 2.0], 1),
        ("schedule.schedule_at", 2, KEY, 123),
        ("sizes.move", 2, 0, 1),
        ("audience_sizes.move", 2, None, "vip"),
        ("send", "samples", None, b"sample"), ("inc", "samples_sent"),
        ("send", "changes", KEY, b"change"), ("inc", "changes['event']"),
        ("recent.record", 2000.0, KEY, (0, 1), "event"),
        ("inc", "moves"), ("observe", "latency"),
        ("send", "audiences", KEY, b"aud"), ("inc", "audience_changes['vip', 'enter']"),
    ]


def test_the_worker_sink_does_what_publish_did_for_an_erasure(monkeypatch):
    out = Outcome(erase=True, change=b"erased", trigger="erasure", moved=(1, None),
                  event_type="erasure", sample=b"forget",
                  audience_changes=[("vip", "exit", b"a1"), ("big", "exit", b"a2")],
                  audience_trigger="erasure", audience_moves=[("vip", "exit")])
    assert run(out, monkeypatch, timestamp=1999.0) == [
        ("inc", "erasures['erased']"),
        ("send", "changes", KEY, b"erased"), ("acked", "changes:b'erased'"),
        ("inc", "changes['erasure']"),
        ("recent.record", 2000.0, None, (1, None), "erasure"),  # not named on the map
        ("observe", "latency"),
        ("send", "audiences", KEY, b"a1"), ("send", "audiences", KEY, b"a2"),
        ("acked", "audiences:b'a1'"), ("inc", "audience_changes['vip', 'exit']"),
        ("acked", "audiences:b'a2'"), ("inc", "audience_changes['big', 'exit']"),
        ("write", KEY, None, 2), *FORGOTTEN,
        ("sizes.move", 2, 1, None),
        ("audience_sizes.move", 2, "vip", None),
        ("send", "samples", None, b"forget"), ("inc", "samples_sent"),
    ]


def test_the_worker_sink_does_what_publish_did_for_a_dead_letter_and_a_consent(monkeypatch):
    assert run(Outcome(dlq=b"bad", reason="json"), monkeypatch) == [
        ("inc", "invalid['json']"), ("send", "dlq", KEY, b"bad"), ("inc", "dlq")]
    consent = Outcome(state=b"s", excluded=True, change=b"left", trigger="consent",
                      moved=(0, -2), flap=True, event_type="profile")
    assert run(consent, monkeypatch) == [
        ("send", "changes", KEY, b"left"), ("acked", "changes:b'left'"),
        ("inc", "changes['consent']"), ("recent.record", 2000.0, None, (0, -2), "consent"),
        ("inc", "flaps"),
        ("write", KEY, b"s", 2), *FORGOTTEN, ("sizes.move", 2, 0, -2)]


# -- the batched path ----------------------------------------------------------------------

def test_the_batch_sink_writes_the_states_of_changed_customers_before_the_batch_sends(
        monkeypatch):
    log = Log()
    sink = worker_sink(log, monkeypatch)
    batch = BatchSink(sink)
    quiet = Outcome(state=b"quiet", event_type="click")  # no change: its state stays cached
    apply_sync(effects_of(normal(), KEY, 2, 1999.5), batch)
    apply_sync(effects_of(quiet, b"k2", 1), batch)
    assert not any(entry[0] in ("send", "write") for entry in log)  # nothing sent yet
    assert sink.customers.get(KEY) == b"state" and sink.customers.get(b"k2") == b"quiet"
    asyncio.run(batch.drain())
    sends = [entry for entry in log if entry[0] in ("send", "write")]
    assert sends == [("write", KEY, b"state", 2), ("send", "changes", KEY, b"change"),
                     ("send", "audiences", KEY, b"aud"), ("send", "samples", None, b"[sample]")]
    assert sink.customers.dirty == {b"k2": (b"quiet", 1)}  # until the next flush
    assert batch.sends == [] and batch.flush_first == set()


def test_the_batch_sink_refuses_a_leaving_outcome(monkeypatch):
    gone = Outcome(erase=True, change=b"erased", trigger="erasure", moved=(1, None),
                   event_type="erasure")
    assert leaves(gone) and not leaves(normal())
    with pytest.raises(ValueError, match="leaving"):
        apply_sync(effects_of(gone, KEY, 2), BatchSink(worker_sink(Log(), monkeypatch)))


def test_a_customers_second_change_in_a_batch_waits_for_the_first(monkeypatch):
    """A replay re-sends only a customer's last change: the first change of a batch leaves
    (after the state that records it) before the second is applied."""
    log = Log()
    sink = worker_sink(log, monkeypatch)
    processor = Processor(pipeline=None, customers=sink.customers, kinds={},  # type: ignore[arg-type]
                          sink=sink, rejudge=None, schedule=None,  # type: ignore[arg-type]
                          metrics=None, assignment=None, feed=None,  # type: ignore[arg-type]
                          batch_size=10, batch_wait_s=0.01)
    first = Outcome(state=b"s1", change=b"c1", trigger="event", moved=(None, 1))
    quiet = Outcome(state=b"s2", event_type="click")
    second = Outcome(state=b"s3", change=b"c2", trigger="event", moved=(1, 2))
    other = Outcome(state=b"o1", change=b"o", trigger="event", moved=(None, 1))
    outcomes = [(first, KEY, None), (quiet, KEY, None), (other, b"k2", None),
                (second, KEY, None)]
    asyncio.run(processor.apply(outcomes, 2))
    asyncio.run(processor.batch.drain())
    io = [entry[:3] for entry in log if entry[0] in ("send", "write")]
    assert sorted(io[:2]) == [("write", KEY, b"s2"), ("write", b"k2", b"o1")]
    assert io[2:] == [("send", "changes", KEY), ("send", "changes", b"k2"),
                      ("write", KEY, b"s3"), ("send", "changes", KEY)]
    assert [entry[3] for entry in log if entry[:2] == ("send", "changes")] == [
        b"c1", b"o", b"c2"]
