"""What happens to one message, with no Faust import: the body of the worker's agents.

:class:`CustomerPipeline` takes a raw input message and the customer's stored state and
returns an :class:`Outcome`: the new state to store, and the messages to send (segment
change, learner sample, dead letter). The Faust agents only move bytes between Kafka,
the tables and this class, so everything here is unit-tested without a broker, and the
benchmark can drive the same code from a plain consumer.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from stream_app.core.audiences import AudienceChange, AudienceSet
from stream_app.core.changes import SegmentChange, dead_letter
from stream_app.core.explain import (
    change_history,
    explain_audiences,
    explain_placement,
    segment_summary,
)
from stream_app.core.features import HOUR_MS
from stream_app.core.privacy import Pseudonymiser
from stream_app.core.state import CONFLICT, DUPLICATE, CustomerState, event_digest
from stream_app.core.validation import Event, EventDecoder, InvalidEvent
from stream_app.model.segmentation import FeatureTransform, SegmentModel

UNASSIGNED = -1
#: The segment-size bucket of customers who withdrew consent to segmentation.
EXCLUDED = -2
#: A move back to the segment a customer just left, within this many evaluations, is a flap.
FLAP_EVALUATIONS = 5
#: Moves that need SEGMENT_CONFIRMATIONS consecutive wins and SEGMENT_MARGIN: one odd event
#: is no new behaviour. A model update, a profile change or the passage of time moves a
#: customer at once, by SEGMENT_REJUDGE_MARGIN: they re-read the customer rather than
#: react to noise (time passing changes features one way only), re-scoring passes are
#: rare and may be the last evaluation a quiet customer gets, and a customer held where it
#: was placed long ago drifts from its segment (a lapsing buyer's recency grows).
DEBOUNCED = frozenset({"event"})
#: Sweeps (time passing) sample a customer again once the time since its last sample is a
#: quarter of the time since its last event: ``log1p`` of the days since an order then moves
#: by at most about 0.22 between two samples, and a customer idle for months is sampled
#: once a month, not every day.
SWEEP_SAMPLE_SHARE = 4
#: How many features a segment change names as the reasons for the move.
REASONS = 3
#: Triggers of a customer leaving segmentation: its last changes are sent before the state
#: is deleted or reduced (a replay would decide the same again, see stream_app/core/effects.py).
LEAVING = frozenset({"erasure", "consent"})
#: The DLQ reason (and ``stream_app_invalid_events_total`` label) of a click or purchase
#: whose ``event_id`` the customer's state remembers with other content (see
#: ``CustomerState.admit``): not applied, as a copy would not be, but not silently either.
CONFLICTING_DUPLICATE = "conflicting_duplicate"
CONFLICT_DETAIL = (
    "event_id already applied for this customer with other content (ts, event_type, "
    "amount, discount, items, channel, session_id or category); this event was not "
    "applied: a producer reusing event ids? Send the event again under a new event_id "
    "if it is a different event")


@dataclass(slots=True)
class Outcome:
    """Result of processing one message (all fields optional)."""

    state: bytes | None = None
    change: bytes | None = None
    trigger: str | None = None
    sample: bytes | None = None
    dlq: bytes | None = None
    reason: str | None = None
    duplicate: bool = False
    late: bool = False
    #: The customer returned to the segment it left within FLAP_EVALUATIONS evaluations,
    #: from a segment that is still active (leaving a retired one is forced).
    flap: bool = False
    #: Segment bookkeeping: ``(old, new)`` with ``UNASSIGNED`` for no segment, ``EXCLUDED``
    #: for no consent, ``old`` None for a customer seen for the first time and ``new`` None
    #: for one erased.
    moved: tuple[int | None, int | None] | None = None
    #: Event time of the message (the customer's clock for rescore and sweep).
    event_ts: int | None = None
    event_type: str | None = None
    #: When the customer should be swept again as time passes (event time; None: nothing
    #: changes any more, see ``FeatureWindow.next_change``), and its clock (the event time
    #: its features are evaluated at).
    sweep_at: int | None = None
    clock: int = 0
    #: The model-space vector the customer was just evaluated with, and its segment after
    #: the evaluation (for :class:`~stream_app.model.assignments.AssignmentIndex`).
    vector: list[float | None] | None = None
    segment: int | None = None
    #: Delete the customer's stored state (erasure).
    erase: bool = False
    #: The customer is excluded from segmentation (no consent): nothing of the event kept.
    excluded: bool = False
    #: Audience enter/exit messages: ``(audience, action, JSON)``, and their trigger.
    audience_changes: list[tuple[str, str, bytes]] | None = None
    audience_trigger: str | None = None
    #: Membership bookkeeping: ``(audience, action)`` of new changes (not of re-sent ones).
    audience_moves: list[tuple[str, str]] | None = None

    @property
    def sweep_again(self) -> bool:
        """Whether the customer is to be swept again (at :attr:`sweep_at`)."""
        return self.sweep_at is not None

    def keep_time(self, state: CustomerState) -> None:
        """Record ``state``'s clock and when time passing will next change it."""
        self.clock = state.clock
        self.sweep_at = state.window.next_change(state.clock)


class TokenBucket:
    """At most ``rate`` tokens a second, bursts up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True, kw_only=True)
class PipelineOptions:
    """What :class:`CustomerPipeline` decides with: limits of valid events, the feature
    vector, the rules that move a customer between segments, and sampling for the learner.

    Plain values, no environment: the worker and the tools fill them from their settings
    (``stream_app.worker.options.pipeline_options``); the setting each comes from there is
    named in parentheses. ``repr`` leaves out the pseudonym key.

    Parameters
    ----------
    app_id
        Names the application in the dead letters it writes (``STREAM_APP_ID``).
    features
        Feature specification of the clustering vector: ``name[:transform[:weight]]``
        items separated by commas (``SEGMENT_FEATURES``, see
        :class:`~stream_app.model.segmentation.FeatureTransform`); a model with another
        specification is applied with its own.
    margin
        Hysteresis of moves caused by the customer's own events: another segment's centre
        must be closer than ``(1 - margin)`` times the distance to the current one
        (``SEGMENT_MARGIN``). Going straight back to the segment just left (within
        ``FLAP_EVALUATIONS`` evaluations) takes twice the margin, at most 0.9.
    rejudge_margin
        The margin of moves not caused by the customer's own events: model updates, time
        passing, profile updates (``SEGMENT_REJUDGE_MARGIN``).
    confirmations
        Consecutive evaluations a move caused by the customer's own events must win
        (``SEGMENT_CONFIRMATIONS``).
    min_events
        Clicks in the last 90 days that place a customer who never bought; one purchase
        always places, and values below 1 count as 1 (``SEGMENT_MIN_EVENTS``).
    lateness_s
        Seconds an event may be older than the customer's newest event and still land in
        its window bucket (``ALLOWED_LATENESS_S``).
    sample_rate
        At most this many vectors a second go to the learner (``LEARN_SAMPLE_RATE``).
    sample_interval_hours
        A customer is sampled at most once per this much of its event time, and not in its
        first interval (``LEARN_SAMPLE_INTERVAL_HOURS``).
    max_message_bytes
        Larger input messages are dead letters (``MAX_MESSAGE_BYTES``).
    max_future_skew_s
        Events stamped further than this ahead of the wall clock are dead letters
        (``MAX_FUTURE_SKEW_S``).
    min_ts_ms
        Events stamped before this instant (epoch milliseconds) are dead letters
        (``EVENT_TS_MIN``).
    pseudonym_key
        Secret of the keyed hash that replaces customer ids at ingestion; empty keeps the
        ids (``PSEUDONYM_KEY``).
    """

    app_id: str
    features: str
    margin: float
    rejudge_margin: float
    confirmations: int
    min_events: int
    lateness_s: float
    sample_rate: float
    sample_interval_hours: float
    max_message_bytes: int
    max_future_skew_s: float
    min_ts_ms: int
    pseudonym_key: str = field(repr=False)


class CustomerPipeline:
    """Validation → de-duplication → feature window → segment assignment → outputs,
    decided with ``options`` (:class:`PipelineOptions`)."""

    def __init__(self, options: PipelineOptions) -> None:
        self.options = options
        self.decoder = EventDecoder(options.max_message_bytes, options.max_future_skew_s,
                                    min_ts_ms=options.min_ts_ms)
        self.transform = FeatureTransform(options.features)
        self.margin = options.margin
        #: Margin of moves not caused by the customer's own events (see DEBOUNCED).
        self.rejudge_margin = options.rejudge_margin
        #: Margin to return to the segment just left, within FLAP_EVALUATIONS evaluations.
        self.return_margin = min(0.9, 2 * options.margin)
        self.confirmations = options.confirmations
        self.min_events = max(1, options.min_events)
        self.model: SegmentModel | None = None
        self._model_transform = self.transform
        self._samples = TokenBucket(options.sample_rate)
        self._sample_interval_ms = int(options.sample_interval_hours * HOUR_MS)
        self.lateness_ms = int(options.lateness_s * 1000)
        self.pseudonyms = Pseudonymiser(options.pseudonym_key)
        self.audiences = AudienceSet.empty()

    def customer_key(self, key: bytes) -> bytes:
        """The table key of the customer whose Kafka key is ``key`` (its pseudonym when
        pseudonymisation is on)."""
        return self.pseudonyms.key(key)

    def use_model(self, model: SegmentModel) -> None:
        """Assign with ``model`` from now on (newer versions only)."""
        if self.model is not None and model.version <= self.model.version:
            return
        self.model = model
        self._model_transform = (
            self.transform if model.spec == self.transform.spec else FeatureTransform(model.spec)
        )

    def use_audiences(self, audiences: AudienceSet) -> None:
        """Judge audience membership with ``audiences`` from now on (customers already
        stored are judged again by :meth:`reevaluate_audiences`, or at their next update)."""
        self.audiences = audiences

    # -- input events --------------------------------------------------------------------
    def process(self, kind: str, key: bytes | None, value: bytes | None,
                stored: bytes | None, topic: str, partition: int, offset: int,
                timestamp: int | None = None) -> Outcome:
        """Process a message holding one event (``kind``: click, purchase, profile)."""
        outs = self.process_message(kind, key, value, stored, topic, partition, offset,
                                    timestamp)
        if len(outs) != 1:
            raise ValueError(f"the message holds {len(outs)} events; use process_message")
        return outs[0]

    def process_message(self, kind: str, key: bytes | None, value: bytes | None,
                        stored: bytes | None, topic: str, partition: int, offset: int,
                        timestamp: int | None = None) -> list[Outcome]:
        """Process a message from an input topic: one event, or a JSON array of events of
        the key's customer, applied in order. One outcome per event; the customer's new
        state is on the last outcome that changed it (one table write per message).

        ``key`` is the message's Kafka key (the customer id) and ``stored`` the state kept
        under :meth:`customer_key` of it; an ``erasure`` message gives one outcome that
        says to delete that state."""
        pseudonyms = self.pseudonyms

        def rejected(exc: InvalidEvent, raw: bytes | None) -> Outcome:
            # With a pseudonym key: no raw id in the key, the value or the detail.
            dlq_key, dlq_value, detail, redaction = pseudonyms.dead_letter_parts(
                key, raw, exc.detail)
            return Outcome(reason=exc.reason, dlq=dead_letter(
                exc.reason, detail, topic, partition, offset, timestamp, dlq_key, dlq_value,
                self.options.app_id, redaction,
                None if redaction is None or raw is None else len(raw)))

        try:
            events = self.decoder.decode_all(kind, key, value, f"{topic}/{partition}/{offset}")
        except InvalidEvent as exc:
            return [rejected(exc, value)]
        state = CustomerState.from_bytes(stored) if stored is not None else CustomerState()
        state.partition = partition
        outs: list[Outcome] = []
        last: Outcome | None = None  # the latest outcome that changed the state
        for position, ev in enumerate(events):
            if isinstance(ev, InvalidEvent):  # an element of an array: the DLQ gets the element
                outs.append(rejected(ev, orjson.dumps(ev.element)))
                continue
            if pseudonyms.enabled:
                ev.customer_id = pseudonyms.pseudonym(ev.customer_id)
            if ev.kind == "erasure":
                outs.append(self._erase(ev, state if stored is not None else None))
                return outs  # an erasure message holds one request
            out = Outcome(event_ts=ev.ts, event_type=ev.event_type)
            outs.append(out)
            if self._apply(ev, state, out, first=stored is None and last is None):
                last = out
            elif out.reason == CONFLICTING_DUPLICATE:  # a rejection, with the event's JSON
                raw = (orjson.dumps(orjson.loads(value or b"")[position]) if _is_array(value)
                       else value)
                outs[-1] = rejected(InvalidEvent(CONFLICTING_DUPLICATE, CONFLICT_DETAIL), raw)
        if last is not None:
            last.state = state.to_bytes()
            last.keep_time(state)
        return outs

    def _apply(self, ev: Event, state: CustomerState, out: Outcome, first: bool) -> bool:
        """Apply one valid event to ``state`` (``first``: of a customer not stored yet);
        False if it changed nothing (a duplicate, or an older profile update)."""
        if ev.kind == "profile":
            if self._resent(state, out, ev.customer_id, ev.event_id, ev.ts):
                # The update that caused the last changes, redelivered: the changes again.
                # Not counted as a duplicate: profile updates are not de-duplicated by id
                # (last writer wins), and other redelivered updates are not counted either.
                return False
            if ev.ts < state.profile_ts:
                out.late = True  # an older update than the one applied: nothing changes
                return False
            if ev.ts == state.profile_ts and not state.excluded and state.holds(ev.profile):
                # The update applied last, again (a replay): nothing changes, nothing to
                # judge again (a newer model would make it a move caused by a replay).
                return False
            if ev.consent is False or (state.excluded and ev.consent is not True):
                self._exclude(ev, state, out, first)
                return True
            state.excluded = False
            state.update_profile(ev.profile, ev.ts)
            trigger = "profile"
        else:
            if state.excluded:
                out.excluded = True  # no consent: the behaviour is not kept
                return False
            admitted = state.admit(ev.event_id, ev.ts, ev.kind == "purchase", self.lateness_ms,
                                   ev.content_digest())
            if admitted == CONFLICT:
                # The id with other content: a producer reusing ids, not a redelivery. Not
                # applied (nothing changes, nothing is re-sent); process_message makes it
                # a dead letter.
                out.reason = CONFLICTING_DUPLICATE
                return False
            # The cause of the last changes is recognised by itself: a replay may bring it
            # back later than the lateness that bounds the remembered ids.
            resent = self._resent(state, out, ev.customer_id, ev.event_id, ev.ts)
            if admitted == DUPLICATE:
                out.duplicate = True
                return False
            if resent:  # applied, no longer remembered: as late as any click that old
                out.late = True
                return False
            out.late = not state.window.apply(ev, self.lateness_ms)
            if out.late and ev.kind == "click":
                # Nothing changed (a late purchase still counts in the lifetime totals), so
                # nothing to judge again: a replay of old clicks after a crash must not move
                # the customer before the cause of its last change comes again and re-sends it.
                return False
            trigger = "event"
        if first:
            out.moved = (None, UNASSIGNED)
        self._evaluate(state, out, trigger, ev.event_id, ev)
        return True

    # -- leaving segmentation --------------------------------------------------------------
    def _exclude(self, ev: Event, state: CustomerState, out: Outcome, first: bool) -> None:
        """Consent to segmentation withdrawn: keep nothing but that, leave the segment."""
        previous, was_excluded = state.segment, state.excluded
        if not was_excluded:
            self._leave_audiences(state, out, ev.customer_id, "consent", ev.event_id,
                                  ev.ts or state.clock)
            out.change = self._leaving(ev.customer_id, state, ev.ts or state.clock, "consent",
                                       ev.event_id)
            out.trigger = "consent" if out.change is not None else None
            out.sample = self._forget_sample(ev.customer_id)
            out.moved = (None if first else UNASSIGNED if previous is None else previous,
                         EXCLUDED)
        out.excluded = True
        state.exclude(ev.ts)

    def _erase(self, ev: Event, state: CustomerState | None) -> Outcome:
        """Right to be forgotten: the stored state is to be deleted (``state`` None: there
        is none), with a last segment change (``segment: null``) when there was one."""
        out = Outcome(event_ts=ev.ts or None, event_type="erasure", erase=state is not None)
        if state is None:
            return out
        previous = (EXCLUDED if state.excluded else
                    UNASSIGNED if state.segment is None else state.segment)
        out.moved = (previous, None)
        self._leave_audiences(state, out, ev.customer_id, "erasure", ev.event_id,
                              ev.ts or state.clock)
        out.change = self._leaving(ev.customer_id, state, ev.ts or state.clock, "erasure",
                                   ev.event_id)
        out.trigger = "erasure" if out.change is not None else None
        out.sample = self._forget_sample(ev.customer_id)
        return out

    def _leaving(self, customer_id: str, state: CustomerState, ts: int, trigger: str,
                 cause_id: str) -> bytes | None:
        """The last segment change of a customer leaving segmentation (None if it had no
        segment to leave)."""
        previous = state.segment
        if previous is None:
            return None
        model = self.model
        label = model.labels[previous] if model is not None and previous < model.k else None
        return SegmentChange(
            customer_id=customer_id, previous_segment=previous, segment=None,
            segment_label=None, previous_segment_label=label,
            model_version=state.model_version, ts=ts, trigger=trigger, cause_id=cause_id,
            features={},
        ).to_json()

    @staticmethod
    def _forget_sample(customer_id: str) -> bytes:
        """The learner's instruction to drop the customer's vector from its sample."""
        return orjson.dumps({"forget": member_pseudonym(customer_id)})

    # -- re-evaluation without a new event -----------------------------------------------
    def rescore(self, customer_id: str, stored: bytes, cause_id: str | None = None) -> Outcome:
        """Re-evaluate a stored customer against the current model (``model_update``).

        ``cause_id`` names the request (default ``model:<current version>``); when the
        request that caused the customer's last change comes again, that change is sent
        again instead (see :meth:`_restated`)."""
        state = CustomerState.from_bytes(stored)
        out = Outcome()
        if state.excluded:
            return out
        if cause_id is None:
            cause_id = f"model:{self.model.version if self.model else 0}"
        if self._resent(state, out, customer_id, cause_id, state.clock):
            return out
        if self._evaluate(state, out, "model_update", cause_id, None, customer_id):
            out.state = state.to_bytes()
        out.event_ts = state.clock
        out.keep_time(state)
        return out

    def sweep(self, customer_id: str, stored: bytes, at: int,
              cause_id: str | None = None) -> Outcome:
        """Let time pass to ``at`` (event time) for a customer with no newer event.

        Windows slide, so features may change; a resulting move has trigger ``inactivity``.
        ``cause_id`` names the request (default ``sweep:<at>``), as for :meth:`rescore`.
        """
        state = CustomerState.from_bytes(stored)
        out = Outcome()
        if state.excluded:
            return out
        cause_id = cause_id or f"sweep:{at}"
        if self._resent(state, out, customer_id, cause_id, state.clock):
            pass
        elif at > state.clock:
            state.evaluated_at = at
            self._evaluate(state, out, "inactivity", cause_id, None, customer_id)
            out.state = state.to_bytes()
        out.event_ts = state.clock
        out.keep_time(state)
        return out

    def restate(self, customer_id: str, stored: bytes) -> Outcome:
        """The customer's last segment change and last audience changes, sent again (the
        same ``event_id``s), whatever message comes for it first after a rebalance.

        A crash can lose the changes it made after its last commit, after the state that
        records them was stored. The replay re-sends a change when its cause comes again
        (:meth:`_restated`), but only while that change is still the customer's last: an
        event of the customer on another input topic, processed before the replay reached
        the cause, could move it first (tests/system/test_recovery.py, a survivor taking over a
        killed worker's partitions). So the worker re-sends them at the customer's first
        message while it reads what its partitions held at their assignment
        (stream_app/worker/catch_up.py); subscribers drop the copies by ``event_id``.
        """
        state = CustomerState.from_bytes(stored)
        out = Outcome()
        if state.excluded:
            return out
        if state.last_change is not None:
            self._resend_change(state, out, customer_id, state.last_change[0], state.clock)
        if state.last_audience is not None:
            self._resend_audiences(state, out, customer_id)
        return out

    def reevaluate_audiences(self, customer_id: str, stored: bytes, cause_id: str) -> Outcome:
        """Judge a stored customer's audiences again with the current definitions (trigger
        ``definitions``: they were reloaded). ``cause_id`` names the request, as for
        :meth:`rescore`."""
        state = CustomerState.from_bytes(stored)
        out = Outcome()
        if state.excluded or self._restated_audiences(state, out, customer_id,
                                                      event_digest(cause_id)):
            return out
        features = state.window.features(state.clock)
        if self._judge_audiences(state, out, features, "definitions", cause_id, state.clock,
                                 customer_id):
            out.state = state.to_bytes()
        out.event_ts = state.clock
        out.keep_time(state)
        return out

    def _evaluate(self, state: CustomerState, out: Outcome, trigger: str, cause_id: str,
                  ev: Event | None, customer_id: str | None = None) -> bool:
        """Assign ``state`` a segment and judge its audiences; fill ``out.change``,
        ``out.sample`` and ``out.audience_changes``; True if the state changed."""
        features = state.window.features(state.clock)
        moved = self._assign(state, out, trigger, cause_id, ev, features, customer_id)
        if not self.audiences and not state.audiences:
            return moved  # no audiences defined, none to leave
        who = ev.customer_id if ev is not None else customer_id or ""
        judged = self._judge_audiences(state, out, features, trigger, cause_id,
                                       ev.ts if ev is not None else state.clock, who)
        return moved or judged

    def _assign(self, state: CustomerState, out: Outcome, trigger: str, cause_id: str,
                ev: Event | None, features: dict[str, float | None],
                customer_id: str | None = None) -> bool:
        """Assign ``state`` a segment; fill ``out.change``/``out.sample``; True if moved."""
        # The learner sees customers as they are after their events and as time passes
        # (a lapsing buyer's recency grows), never as a profile alone made them.
        if ev is not None and ev.kind != "profile":
            sampled = self._wants_sample(state, ev.ts, self._sample_interval_ms)
        else:  # swept: the longer ago its last event, the slower its vector changes
            idle = state.clock - state.window.as_of
            sampled = trigger == "inactivity" and self._wants_sample(
                state, state.clock, max(self._sample_interval_ms, idle // SWEEP_SAMPLE_SHARE))
        if sampled:
            vector = self.transform.vector(features, state.profile)
            who = ev.customer_id if ev is not None else customer_id or ""
            out.sample = orjson.dumps({"spec": self.transform.spec, "x": vector,
                                       "member": member_pseudonym(who)})
        model = self.model
        if model is None or not self.placeable(state):
            return False  # no model yet, or too little behaviour to judge
        raw = self._model_transform.vector(features, state.profile)
        margin = self.margin if trigger in DEBOUNCED else self.rejudge_margin
        segment, distances = model.assign(raw, state.segment, margin)
        out.vector = raw
        previous = state.segment
        # Going back to the segment just left, soon after, is a flap, and needs a wider
        # margin (flap damping). Leaving a retired segment is forced, so a return from one
        # is neither damped nor a flap: no margin could have kept the customer there.
        may_flap = model.is_active(previous) and state.evaluations < FLAP_EVALUATIONS
        if (may_flap and segment == state.left_segment
                and not model.clearly_closer(distances, previous, segment, self.return_margin)):
            segment = previous
        if segment == previous:
            state.pending = None
        elif (previous is not None and model.is_active(previous) and trigger in DEBOUNCED
              and self.confirmations > 1):
            # Debounce: a customer moves only when the same new segment wins `confirmations`
            # evaluations in a row (one odd event, or one jitter of the model, is no move);
            # a customer of a retired segment moves at once.
            if state.pending == segment:
                state.pending_count += 1
            else:
                state.pending, state.pending_count = segment, 1
            if state.pending_count < self.confirmations:
                segment = previous
        state.model_version = model.version
        state.evaluations += 1
        out.segment = segment
        if segment == previous:
            return False
        state.pending = None
        if previous is not None:
            out.flap = may_flap and segment == state.left_segment
            state.left_segment = previous
        state.evaluations = 0
        state.segment = segment
        ts = ev.ts if ev is not None else state.clock
        state.last_change = [event_digest(cause_id), trigger, previous, ts]
        why = reasons(model, raw, previous, segment, decided_values(model, features, state))
        state.remember_change(ts, trigger, previous, segment, model.version,
                              [reason["feature"] for reason in why])
        out.change = self._change(model, ev.customer_id if ev is not None else customer_id or "",
                                  features, state, raw, distances, previous, trigger, cause_id,
                                  ts, why)
        out.trigger = trigger
        out.moved = (None if out.moved is not None else
                     (UNASSIGNED if previous is None else previous), segment)
        return True

    # -- audiences -----------------------------------------------------------------------
    def _segment_label(self, segment: int | None) -> str | None:
        model = self.model
        if model is None or segment is None or not 0 <= segment < model.k:
            return None
        return model.labels[segment]

    def audience_attributes(self, state: CustomerState, features: dict[str, float | None]
                            ) -> dict[str, object]:
        """What audience conditions see of a customer: features, profile and segment."""
        segment = state.segment
        return {**features, **state.profile, "segment": segment,
                "segment_label": self._segment_label(segment)}

    def _judge_audiences(self, state: CustomerState, out: Outcome,
                         features: dict[str, float | None], trigger: str, cause_id: str,
                         ts: int, customer_id: str) -> bool:
        """Judge the customer's audiences with its features, profile and segment; fill
        ``out.audience_changes``; True if the state changed (memberships or version)."""
        audiences = self.audiences
        after = audiences.memberships(self.audience_attributes(state, features), state.audiences)
        judged_before = state.audiences_version == audiences.version
        state.audiences_version = audiences.version
        entered, exited = audiences.changes(state.audiences, after)
        if not entered and not exited:
            return not judged_before
        state.audiences = after
        moves = [[name, "exit"] for name in exited] + [[name, "enter"] for name in entered]
        self._announce_audiences(state, out, customer_id, moves, trigger, cause_id, ts)
        return True

    def _leave_audiences(self, state: CustomerState, out: Outcome, customer_id: str,
                         trigger: str, cause_id: str, ts: int) -> None:
        """The customer leaves every audience (erased, or consent withdrawn)."""
        if state.audiences:
            moves = [[name, "exit"] for name in state.audiences]
            state.audiences = []
            self._announce_audiences(state, out, customer_id, moves, trigger, cause_id, ts)

    def _announce_audiences(self, state: CustomerState, out: Outcome, customer_id: str,
                            moves: list[list[str]], trigger: str, cause_id: str,
                            ts: int) -> None:
        state.last_audience = [event_digest(cause_id), trigger, ts, moves]
        out.audience_moves = [(name, action) for name, action in moves]
        self._audience_messages(state, out, customer_id, moves, trigger, cause_id, ts)

    def _audience_messages(self, state: CustomerState, out: Outcome, customer_id: str,
                           moves: list[list[str]], trigger: str, cause_id: str | int,
                           ts: int) -> None:
        segment = state.segment
        label = self._segment_label(segment)
        version = state.audiences_version or self.audiences.version
        out.audience_changes = [
            (name, action, AudienceChange(
                customer_id=customer_id, audience=name, action=action, ts=ts, trigger=trigger,
                cause_id=cause_id, definitions_version=version, segment=segment,
                segment_label=label).to_json())
            for name, action in moves]
        out.audience_trigger = trigger

    def _resent(self, state: CustomerState, out: Outcome, customer_id: str, cause_id: str,
                ts: int) -> bool:
        """:meth:`_restated` and :meth:`_restated_audiences`: True if ``cause_id`` caused the
        customer's last segment change or last audience changes (those are sent again)."""
        cause = event_digest(cause_id)  # as the state keeps it
        segment = self._restated(state, out, customer_id, cause, ts)
        audiences = self._restated_audiences(state, out, customer_id, cause)
        return segment or audiences

    def _restated_audiences(self, state: CustomerState, out: Outcome, customer_id: str,
                            cause: int) -> bool:
        """If the cause with digest ``cause`` caused the customer's last audience changes, it
        came again: send them again (same ``event_id``s), as :meth:`_restated` does for
        segment changes."""
        last = state.last_audience
        if last is None or last[0] != cause:
            return False
        self._resend_audiences(state, out, customer_id)
        return True

    def _resend_audiences(self, state: CustomerState, out: Outcome, customer_id: str) -> None:
        """The messages of the customer's last audience changes, again."""
        assert state.last_audience is not None
        cause, trigger, ts, moves = state.last_audience
        self._audience_messages(state, out, customer_id, moves, trigger, cause, ts)

    @staticmethod
    def _change(model: SegmentModel, customer_id: str, features: dict[str, float | None],
                state: CustomerState, raw: list[float | None], distances: np.ndarray,
                previous: int | None, trigger: str, cause_id: str | int, ts: int,
                why: list[dict[str, object]] | None = None) -> bytes:
        """The segment change that put ``state`` in its segment (from ``previous``);
        ``why``: its :func:`reasons` when already found."""
        segment = state.segment
        assert segment is not None
        decided = decided_values(model, features, state)
        return SegmentChange(
            customer_id=customer_id,
            previous_segment=previous,
            segment=segment,
            segment_label=model.labels[segment],
            previous_segment_label=(
                model.labels[previous] if previous is not None and previous < model.k else None
            ),
            model_version=model.version,
            ts=ts,
            trigger=trigger,
            cause_id=cause_id,
            features=decided,
            distance=round(float(distances[segment]), 6),
            extra={"reasons": why if why is not None
                   else reasons(model, raw, previous, segment, decided)},
        ).to_json()

    def _restated(self, state: CustomerState, out: Outcome, customer_id: str, cause: int,
                  ts: int) -> bool:
        """If the cause with digest ``cause`` (an event, or a re-scoring or sweep request)
        caused the customer's last change, it came again: send that change again
        (:meth:`_resend_change`), in case a crash lost it after the state that records it
        was stored, and return True."""
        if state.last_change is None or state.last_change[0] != cause:
            return False
        return self._resend_change(state, out, customer_id, cause, ts)

    def _resend_change(self, state: CustomerState, out: Outcome, customer_id: str,
                       cause: int, ts: int) -> bool:
        """The customer's last change, again: the same ``event_id`` (made from the digest
        ``cause`` of its cause), the same move and time, features as they are now;
        subscribers drop the copy by ``event_id``. ``ts`` is the change's time for states
        stored before it was kept. False if there is no model, or the segment is not one
        of the model's."""
        model = self.model
        if (state.last_change is None or model is None or state.segment is None
                or state.segment >= model.k):
            return False
        _, trigger, previous, ts = (*state.last_change, ts)[:4]
        features = state.window.features(state.clock)
        raw = self._model_transform.vector(features, state.profile)
        _, distances = model.assign(raw, state.segment, self.margin)
        out.change = self._change(model, customer_id, features, state, raw, distances, previous,
                                  trigger, cause, ts)
        out.trigger = trigger
        return True

    def explain(self, stored: bytes) -> dict[str, Any]:
        """Why the customer whose stored state is ``stored`` is where it is: its segment in
        plain terms, its place among the segments (:func:`explain_placement`; None before
        it can be placed), its last changes, and every audience clause by clause."""
        state = CustomerState.from_bytes(stored)
        model = self.model
        features = state.window.features(state.clock)
        placement, why_not = None, None
        if state.excluded:
            why_not = "consent to segmentation withdrawn"
        elif model is None:
            why_not = "no model yet"
        elif not self.placeable(state):
            why_not = (f"too little behaviour: a purchase, or {self.min_events} clicks in "
                       "90 days, places a customer")
        else:
            raw = self._model_transform.vector(features, state.profile)
            placement = explain_placement(
                model, raw, decided_values(model, features, state), state.segment,
                margin=self.margin, confirmations=self.confirmations, pending=state.pending,
                pending_count=state.pending_count)
        attributes = self.audience_attributes(state, features)
        return {
            "segment_detail": segment_summary(model, state.segment) if model else None,
            "placement": placement,
            "not_placed_because": why_not,
            "changes": change_history(state.changes, model),
            "audience_conditions": explain_audiences(self.audiences, attributes,
                                                     state.audiences),
        }

    def audience_view(self, stored: bytes) -> tuple[dict[str, object], list[str]] | None:
        """A stored customer as audience conditions see it, and the audiences it is in
        (what a preview judges); None when its consent to segmentation is withdrawn."""
        state = CustomerState.from_bytes(stored)
        if state.excluded:
            return None
        return (self.audience_attributes(state, state.window.features(state.clock)),
                state.audiences)

    def placeable(self, state: CustomerState) -> bool:
        """Whether the customer has behaviour enough to be placed in a segment: one
        purchase ever, or ``SEGMENT_MIN_EVENTS`` clicks in the last 90 days (a profile
        alone never places). A one-time buyer is placed at its purchase: on a real shop
        about half the customers never buy again, and they are the ones second-purchase
        and win-back campaigns are for."""
        window = state.window
        return window.orders_total > 0 or window.event_count() >= self.min_events

    def _wants_sample(self, state: CustomerState, ts: int, interval_ms: int) -> bool:
        """Sample a customer at its first event, then at most once per ``interval_ms`` of
        its event time (the learner keeps each customer's newest vector, so a one-time
        buyer is learned as it is), within the rate limit."""
        if state.sampled_at and ts - state.sampled_at < interval_ms:
            return False
        if not self._samples.take():
            return False
        state.sampled_at = ts
        return True


def _is_array(value: bytes | None) -> bool:
    """Whether a decoded message is a JSON array (its first non-blank byte is ``[``)."""
    return value is not None and value.lstrip()[:1] == b"["


def member_pseudonym(customer_id: str) -> str:
    """The learner's name for a customer: a 64-bit hash, so the samples topic carries no
    customer id while the learner can still keep one (newest) vector per customer.

    >>> member_pseudonym("c-1") == member_pseudonym("c-1") != member_pseudonym("c-2")
    True
    """
    return hashlib.blake2b(customer_id.encode(), digest_size=8, person=b"stream-app").hexdigest()


def decided_values(model: SegmentModel, features: Mapping[str, float | None],
                   state: CustomerState) -> dict[str, object]:
    """The values of the model's features for a customer: its features and profile."""
    return {name: features.get(name, state.profile.get(name)) for name in model.features}


def reasons(model: SegmentModel, raw: list[float | None], previous: int | None, segment: int,
            values: dict[str, object]) -> list[dict[str, object]]:
    """The features that brought the customer closer to ``segment`` than to ``previous``
    (to the population average on a first assignment), strongest first.

    Each reason gives the feature's value, the customer's z-score and the segment centre's.
    """
    z = model.scale(raw)
    centre = model.centres[segment]
    before = (model.centres[previous] if previous is not None and previous < model.k
              else np.zeros_like(centre))
    gain = (z - before) ** 2 - (z - centre) ** 2  # in the weighted space that decided
    plain_z, plain_centre = model.z_scores(z), model.z_scores(centre)
    out = []
    for j in (-gain).argsort()[:REASONS]:
        if gain[j] <= 0:
            break
        name = model.features[j]
        out.append({"feature": name, "value": values.get(name),
                    "z": round(float(plain_z[j]), 3),
                    "segment_z": round(float(plain_centre[j]), 3)})
    return out
