"""What an :class:`~stream_app.core.pipeline.Outcome` makes happen, in the order it must.

:func:`effects_of` turns an outcome into a short list of typed effects (NamedTuples: one
small tuple each, no per-effect dict) and :func:`apply` (or :func:`apply_sync`) hands them,
in that order, to a :class:`Sink`: the worker's (stream_app/worker/sink.py: table, topics,
metrics, index, schedule, sizes) or the local loop's (stream_app/tools/local_loop.py: a dict,
the learner). The ordering rule lives here once:

* a **leaving** change (its trigger in :data:`~stream_app.core.pipeline.LEAVING`: erasure,
  consent withdrawn) is sent, and waited for, *before* the state is stored or deleted: a
  replay after a crash decides the same again, and the customer is never left stored
  without its leaving announced;
* every **other** change, audience change and sample goes *after* the state that decided
  it: a replay after a crash finds the event applied and re-sends the change (see
  :class:`~stream_app.core.pipeline.CustomerPipeline`).

A dead letter is the outcome's only effect. Effects of several outcomes can be gathered
into one list (:func:`effects_of_batch`, or ``into=``) and applied at once; each
customer's effects keep their order, as the outcomes are taken in order.

>>> from stream_app.core.pipeline import Outcome
>>> out = Outcome(state=b"s", change=b"c", trigger="event", moved=(0, 1))
>>> [type(e).__name__ for e in effects_of(out, b"k", 3)]
['PutState', 'MoveSegment', 'SendChange']
>>> gone = Outcome(erase=True, change=b"c", trigger="erasure", moved=(1, None),
...                event_type="erasure")
>>> [type(e).__name__ for e in effects_of(gone, b"k", 3)]
['Counted', 'SendChange', 'DeleteState', 'MoveSegment']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

from stream_app.core.pipeline import LEAVING, Outcome


class DeadLetter(NamedTuple):
    """Send the rejected input ``value`` to the dead-letter topic; count its ``reason``."""

    key: bytes | None
    value: bytes
    reason: str | None


class Counted(NamedTuple):
    """Counters of the outcome itself (only emitted when one of them is set)."""

    duplicate: bool
    late: bool
    #: A click or purchase of a customer without consent.
    excluded: bool
    #: ``"erased"`` or ``"unknown"`` for an erasure request, else None.
    erasure: str | None


class SendChange(NamedTuple):
    """Send a segment change (``leaving``: and wait until the broker has it), count it and
    note it for the map; ``timestamp`` (epoch seconds of the customer's own message, None
    for re-judgements) is for the latency histogram."""

    key: bytes | None
    change: bytes
    trigger: str | None
    leaving: bool
    moved: tuple[int | None, int | None] | None
    flap: bool
    timestamp: float | None


class SendAudienceChanges(NamedTuple):
    """Send audience enter/exit messages ``(audience, action, JSON)`` (``leaving``: and
    wait until the broker has them), counted per audience and action."""

    key: bytes | None
    changes: list[tuple[str, str, bytes]]
    leaving: bool


class PutState(NamedTuple):
    """Store the customer's new state; ``forget``: the customer is excluded (no consent),
    drop what is kept about it in memory (as for :class:`DeleteState`)."""

    key: bytes | None
    partition: int
    state: bytes
    forget: bool


class DeleteState(NamedTuple):
    """Delete the customer's state (a tombstone) and forget its in-memory traces (index,
    schedule, the map's recent changes, pending batches; docs/privacy.md)."""

    key: bytes | None
    partition: int


class IndexVector(NamedTuple):
    """Record the vector and segment the customer was just evaluated with (the
    :class:`~stream_app.model.assignments.AssignmentIndex`, under the applied model)."""

    key: bytes | None
    partition: int
    vector: list[float | None]
    segment: int


class ScheduleSweep(NamedTuple):
    """Sweep the customer again at event time ``at``."""

    key: bytes | None
    partition: int
    at: int


class MoveSegment(NamedTuple):
    """Move one customer between segment counts (``old`` None: new; ``new`` None: gone)."""

    partition: int
    old: int | None
    new: int | None


class MoveAudiences(NamedTuple):
    """Move one customer into (``"enter"``) or out of audience counts."""

    partition: int
    moves: list[tuple[str, str]]


class SendSample(NamedTuple):
    """Send a sample (a vector, or a ``forget``) to the learner."""

    sample: bytes


Effect = (DeadLetter | Counted | SendChange | SendAudienceChanges | PutState | DeleteState
          | IndexVector | ScheduleSweep | MoveSegment | MoveAudiences | SendSample)


def effects_of(out: Outcome, key: bytes | None, partition: int,
               timestamp: float | None = None, into: list[Effect] | None = None
               ) -> list[Effect]:
    """The effects of ``out`` for customer ``key`` (table key) of input ``partition``, in
    the order they must happen, appended to ``into`` (default: a new list) and returned.

    ``timestamp``: epoch seconds of the customer's own message (the latency of its
    change), None for re-judgements, restated changes and control messages.

    >>> effects_of(Outcome(dlq=b"x", reason="json", duplicate=True), None, 0)
    [DeadLetter(key=None, value=b'x', reason='json')]
    """
    effects: list[Effect] = [] if into is None else into
    add = effects.append
    if out.dlq is not None:
        add(DeadLetter(key, out.dlq, out.reason))
        return effects
    excluded = out.excluded and out.event_type != "profile"  # a click or purchase
    erasure = ("erased" if out.erase else "unknown") if out.event_type == "erasure" else None
    if out.duplicate or out.late or excluded or erasure is not None:
        add(Counted(out.duplicate, out.late, excluded, erasure))
    change = out.change
    leaving = change is not None and out.trigger in LEAVING
    if leaving:  # announced first: a replay decides the same again
        add(SendChange(key, change, out.trigger, True, out.moved, out.flap,  # type: ignore[arg-type]
                       timestamp))
    audience_changes = out.audience_changes
    audiences_leaving = bool(audience_changes) and out.audience_trigger in LEAVING
    if audiences_leaving:
        add(SendAudienceChanges(key, audience_changes, True))  # type: ignore[arg-type]
    if out.erase:
        add(DeleteState(key, partition))
    elif out.state is not None:
        add(PutState(key, partition, out.state, out.excluded))
    if out.vector is not None and out.segment is not None:
        add(IndexVector(key, partition, out.vector, out.segment))
    if out.sweep_at is not None:
        add(ScheduleSweep(key, partition, out.sweep_at))
    if out.moved is not None:
        add(MoveSegment(partition, *out.moved))
    if out.audience_moves is not None:
        add(MoveAudiences(partition, out.audience_moves))
    # After the state that decided them: in the producer, the state's record is first.
    if out.sample is not None:
        add(SendSample(out.sample))
    if change is not None and not leaving:
        add(SendChange(key, change, out.trigger, False, out.moved, out.flap, timestamp))
    if audience_changes and not audiences_leaving:
        add(SendAudienceChanges(key, audience_changes, False))
    return effects


def leaves(out: Outcome) -> bool:
    """Whether ``out`` sends a leaving change (or audience change) *before* its state: its
    effects must be applied in order, each send awaited, not gathered into a batch.

    >>> leaves(Outcome(erase=True, change=b"c", trigger="erasure", event_type="erasure"))
    True
    >>> leaves(Outcome(state=b"s", change=b"c", trigger="event"))
    False
    """
    return ((out.change is not None and out.trigger in LEAVING)
            or (bool(out.audience_changes) and out.audience_trigger in LEAVING))


def effects_of_batch(outcomes: Iterable[tuple[Outcome, bytes | None, int, float | None]]
                     ) -> list[Effect]:
    """One effect list for ``(outcome, key, partition, timestamp)`` taken in order: each
    customer's effects keep the order :func:`effects_of` gives them."""
    effects: list[Effect] = []
    for out, key, partition, timestamp in outcomes:
        effects_of(out, key, partition, timestamp, effects)
    return effects


class Sink(Protocol):
    """Where :func:`apply` carries effects out: the methods that talk to a broker or a
    store are coroutines, the bookkeeping is not (no await per counter)."""

    async def dead_letter(self, effect: DeadLetter) -> None: ...
    async def send_change(self, effect: SendChange) -> None: ...
    async def send_audience_changes(self, effect: SendAudienceChanges) -> None: ...
    async def put_state(self, effect: PutState) -> None: ...
    async def delete_state(self, effect: DeleteState) -> None: ...
    async def send_sample(self, effect: SendSample) -> None: ...
    def count(self, effect: Counted) -> None: ...
    def index_vector(self, effect: IndexVector) -> None: ...
    def schedule_sweep(self, effect: ScheduleSweep) -> None: ...
    def move_segment(self, effect: MoveSegment) -> None: ...
    def move_audiences(self, effect: MoveAudiences) -> None: ...


class SyncSink(Protocol):
    """A :class:`Sink` without coroutines (the local loop), for :func:`apply_sync`."""

    def dead_letter(self, effect: DeadLetter) -> None: ...
    def send_change(self, effect: SendChange) -> None: ...
    def send_audience_changes(self, effect: SendAudienceChanges) -> None: ...
    def put_state(self, effect: PutState) -> None: ...
    def delete_state(self, effect: DeleteState) -> None: ...
    def send_sample(self, effect: SendSample) -> None: ...
    def count(self, effect: Counted) -> None: ...
    def index_vector(self, effect: IndexVector) -> None: ...
    def schedule_sweep(self, effect: ScheduleSweep) -> None: ...
    def move_segment(self, effect: MoveSegment) -> None: ...
    def move_audiences(self, effect: MoveAudiences) -> None: ...


#: The sink method that carries out each kind of effect.
METHODS: dict[type, str] = {
    PutState: "put_state", IndexVector: "index_vector", ScheduleSweep: "schedule_sweep",
    MoveSegment: "move_segment", SendChange: "send_change", SendSample: "send_sample",
    Counted: "count", MoveAudiences: "move_audiences",
    SendAudienceChanges: "send_audience_changes", DeleteState: "delete_state",
    DeadLetter: "dead_letter",
}


def _method(sink: object, effect: Effect) -> Any:
    try:
        return getattr(sink, METHODS[type(effect)])
    except KeyError:
        raise TypeError(f"not an effect: {effect!r}") from None


async def apply(effects: Iterable[Effect], sink: Sink) -> None:
    """Carry ``effects`` out on ``sink``, in order (awaiting only its I/O methods, the
    ones that return an awaitable)."""
    for e in effects:
        done = _method(sink, e)(e)
        if done is not None:
            await done


def apply_sync(effects: Iterable[Effect], sink: SyncSink) -> None:
    """:func:`apply` for a sink without coroutines: the same effects in the same order."""
    for e in effects:
        _method(sink, e)(e)
