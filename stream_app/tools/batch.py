"""Batch recomputation of every customer feature from a plain list of events.

This module is a deliberately independent, straightforward implementation of the feature
definitions: it shares no code with the streaming path (no imports from other
``stream_app`` modules) so that ``stream-app verify`` can use it to check a running worker.

Events are raw input documents (dicts as JSON-decoded from the input topics) in arrival
order, possibly of mixed kinds:

* a document with a non-null ``order_id`` is a purchase,
* otherwise a document with a non-null ``event_type`` is a click,
* otherwise it is a profile update.

Per customer, in arrival order:

* a click or purchase whose ``event_id`` was already accepted for that customer is a
  duplicate and is dropped entirely: a *conflicting duplicate* when its content (the
  fields the features read, see :func:`_content`) differs from the accepted copy's (the
  worker sends it to the DLQ as ``conflicting_duplicate``), an honest one otherwise;
* ``as_of`` is the largest ``ts`` of the accepted clicks and purchases;
* an accepted click (purchase) older than the newest accepted click (purchase) before it
  minus the allowed lateness is *late* (lateness is judged within each stream: Kafka
  orders a customer's clicks and its purchases, but not the two against each other): a
  late purchase only counts in the lifetime totals (``orders_total``, ``revenue_total``,
  ``first_order_ts``, ``last_order_ts``), a late click counts nowhere;
* N-day windows at evaluation time ``T`` hold the on-time events whose UTC day satisfies
  ``day(T) - N < day(ts) <= day(T)`` (``views_24h`` uses UTC hours the same way);
* profile updates replace the attributes they carry (an explicit null clears one), last
  writer wins by event time.

Examples
--------
>>> customers = recompute([
...     {"event_id": "e1", "customer_id": "c1", "ts": "2026-11-23T22:15:00+01:00",
...      "event_type": "page_view", "session_id": "s1", "channel": "app"},
...     {"event_id": "p1", "customer_id": "c1", "ts": "2026-11-23T22:30:00Z",
...      "order_id": "o1", "amount": 19.99, "items": [{"quantity": 2}]},
... ])
>>> f = customers["c1"].features()
>>> f["orders_total"], f["revenue_total"], f["views_24h"], f["night_share_30d"]
(1, 19.99, 1, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "DAY_MS",
    "FEATURE_NAMES",
    "HOUR_MS",
    "PROFILE_FIELDS",
    "BatchCustomer",
    "event_kind",
    "parse_ts",
    "recompute",
]

#: Milliseconds in a day and in an hour.
DAY_MS = 86_400_000
HOUR_MS = 3_600_000

#: Default allowed lateness (1 hour).
DEFAULT_LATENESS_MS = 3_600_000

#: The features returned by :meth:`BatchCustomer.features`, in this order.
FEATURE_NAMES: tuple[str, ...] = (
    "orders_total",
    "revenue_total",
    "first_order_ts",
    "last_order_ts",
    "orders_30d",
    "revenue_30d",
    "orders_90d",
    "revenue_90d",
    "avg_order_value_90d",
    "days_since_last_order",
    "discount_share_90d",
    "distinct_categories_90d",
    "views_24h",
    "views_7d",
    "sessions_7d",
    "searches_7d",
    "add_to_cart_7d",
    "cart_abandon_rate_7d",
    "events_30d",
    "night_share_30d",
    "app_share_30d",
)

#: Profile attributes kept by :attr:`BatchCustomer.profile`.
PROFILE_FIELDS: tuple[str, ...] = ("age", "income", "region", "city", "gender")

_NIGHT_HOURS = frozenset({22, 23, 0, 1, 2, 3, 4, 5})
_VIEW_TYPES = frozenset({"page_view", "product_view"})
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_ts(value: Any) -> tuple[int, int]:
    """Parse an event timestamp into ``(epoch_ms, local_hour)``.

    Parameters
    ----------
    value : str or int
        ISO-8601 date-time with a zone offset or ``Z`` (the local hour is the hour written
        in the string, i.e. in its own offset), or integer epoch milliseconds (read as UTC).

    Returns
    -------
    tuple of int
        Epoch milliseconds (sub-millisecond digits are truncated) and the local hour 0-23.

    Raises
    ------
    ValueError
        For a string that is not an ISO-8601 date-time with a zone (an upper-case ``Z``, no
        surrounding spaces), a float that is not a whole number, or a value of another type
        (booleans included). These are the worker's rules (found by tests/integration/test_fuzz.py).

    Examples
    --------
    >>> parse_ts("2026-11-23T23:30:00+02:00")
    (1795469400000, 23)
    >>> parse_ts("2026-11-23T21:30:00.250Z")
    (1795469400250, 21)
    >>> parse_ts(1795469400000)
    (1795469400000, 21)
    >>> parse_ts("2026-11-23T21:30:00")
    Traceback (most recent call last):
    ...
    ValueError: timestamp without a zone offset: '2026-11-23T21:30:00'
    """
    if isinstance(value, bool):
        raise ValueError(f"not a timestamp: {value!r}")
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)  # JSON 1767225600000.0 is the same instant
    if isinstance(value, int):
        return value, (value // HOUR_MS) % 24
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    text = value
    if text[-1:] == "Z":
        # datetime.fromisoformat only accepts a trailing Z from Python 3.11 on.
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"timestamp without a zone offset: {value!r}")
    delta = moment - _EPOCH
    epoch_ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    return epoch_ms, moment.hour


def event_kind(doc: dict) -> str:
    """Infer the kind of an input document: ``"purchase"``, ``"click"`` or ``"profile"``.

    Examples
    --------
    >>> event_kind({"order_id": "o1", "event_type": "page_view"})
    'purchase'
    >>> event_kind({"event_type": "search"})
    'click'
    >>> event_kind({"age": 40})
    'profile'
    """
    if doc.get("order_id") is not None:
        return "purchase"
    if doc.get("event_type") is not None:
        return "click"
    return "profile"


def _cents(amount: Any) -> int:
    """Integer cents of an amount in currency units (null counts 0)."""
    if amount is None:
        return 0
    return round(amount * 100)


def _is_app(channel: Any) -> bool:
    return isinstance(channel, str) and channel.strip().lower() == "app"


@dataclass(frozen=True)
class _Purchase:
    ts: int
    local_hour: int
    cents: int
    discounted: bool
    categories: frozenset[str]
    items: int
    app: bool
    late: bool


@dataclass(frozen=True)
class _Click:
    ts: int
    local_hour: int
    event_type: str
    session_id: str | None
    app: bool


def _channel(channel: Any) -> str | None:
    """A channel as compared: trimmed, lower case, None when absent or blank."""
    return channel.strip().lower() or None if isinstance(channel, str) else None


def _content(doc: dict, kind: str, ts: int, local_hour: int) -> tuple:
    """What makes two copies of a click or purchase (same ``event_id``) the same event:
    the fields the features read, normalised (so key order, spacing, ``10`` vs ``10.0``
    and ``"App"`` vs ``"app"`` do not matter): kind, instant, local hour, event type,
    channel, session, categories, amount and discount in cents, item count. Fields the
    features do not read (``order_id``, ``product_id``, ``price``, ``query``,
    ``currency``) are not content.

    Examples
    --------
    >>> a = {"event_id": "p", "ts": 0, "order_id": "o", "amount": 10, "channel": " App"}
    >>> _content(a, "purchase", 0, 0) == _content({**a, "amount": 10.0, "channel": "app",
    ...                                            "order_id": "x"}, "purchase", 0, 0)
    True
    >>> _content(a, "purchase", 0, 0) == _content({**a, "amount": 9999}, "purchase", 0, 0)
    False
    """
    if kind == "purchase":
        return (kind, ts, local_hour, "purchase", _channel(doc.get("channel")), None,
                tuple(sorted(_purchase_categories(doc))), _cents(doc.get("amount")),
                _cents(doc.get("discount")), _item_count(doc))
    category = doc.get("category")
    return (kind, ts, local_hour, str(doc.get("event_type")), _channel(doc.get("channel")),
            doc.get("session_id") or None, (category,) if category else (), 0, 0, 0)


def _purchase_categories(doc: dict) -> frozenset[str]:
    found = set()
    category = doc.get("category")
    if isinstance(category, str) and category:
        found.add(category)
    items = doc.get("items")
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                category = item.get("category")
                if isinstance(category, str) and category:
                    found.add(category)
    return frozenset(found)


def _item_count(doc: dict) -> int:
    items = doc.get("items")
    if not isinstance(items, list) or not items:
        return 1
    total = 0
    for item in items:
        quantity = item.get("quantity") if isinstance(item, dict) else None
        total += 1 if quantity is None else int(quantity)
    return total


@dataclass
class BatchCustomer:
    """The accepted events of one customer and the features computed from them.

    Build it with :func:`recompute` (or call :meth:`add` with each document in arrival
    order).

    Attributes
    ----------
    customer_id : str
        The customer.
    as_of : int
        Largest ``ts`` (epoch ms) of the accepted clicks and purchases; 0 if none.
    profile : dict
        Latest profile attributes (only the attributes currently set).
    accepted : int
        Number of accepted (non-duplicate) clicks and purchases, late ones included.
    late : int
        Number of accepted clicks and purchases that were late.
    duplicates : int
        Number of clicks and purchases dropped as duplicates (conflicting ones included).
    conflicts : int
        Number of those duplicates whose content differed from the accepted copy's.
    excluded : bool
        Consent to segmentation withdrawn (``consent.segmentation: false`` in the newest
        profile update that stated it): everything before it is forgotten, and clicks and
        purchases are dropped until an update with ``segmentation: true``.
    """

    customer_id: str
    lateness_ms: int = DEFAULT_LATENESS_MS
    as_of: int = 0
    profile: dict = field(default_factory=dict)
    profile_ts: int | None = None
    accepted: int = 0
    late: int = 0
    duplicates: int = 0
    conflicts: int = 0
    excluded: bool = False
    _seen: dict = field(default_factory=dict, repr=False)  # event_id -> _content
    _newest: dict = field(default_factory=dict, repr=False)
    _purchases: list = field(default_factory=list, repr=False)
    _clicks: list = field(default_factory=list, repr=False)

    def add(self, doc: dict) -> str:
        """Apply one input document (the next in arrival order).

        Returns
        -------
        str
            What happened: ``"accepted"``, ``"late"``, ``"duplicate"`` or
            ``"conflicting_duplicate"`` (the ``event_id`` again, with other content) for
            clicks and purchases (``"excluded"`` without consent); ``"profile"``,
            ``"excluded"`` or
            ``"stale_profile"`` for profile updates.

        Examples
        --------
        >>> c = BatchCustomer("c1")
        >>> c.add({"event_id": "a", "customer_id": "c1", "ts": 10 * 3_600_000,
        ...        "event_type": "search"})
        'accepted'
        >>> c.add({"event_id": "a", "customer_id": "c1", "ts": 10 * 3_600_000,
        ...        "event_type": "search"})
        'duplicate'
        >>> c.add({"event_id": "a", "customer_id": "c1", "ts": 10 * 3_600_000,
        ...        "event_type": "add_to_cart"})
        'conflicting_duplicate'
        >>> c.add({"event_id": "b", "customer_id": "c1", "ts": 8 * 3_600_000,
        ...        "event_type": "search"})
        'late'
        """
        kind = event_kind(doc)
        ts, local_hour = parse_ts(doc.get("ts"))
        if kind == "profile":
            return self._add_profile(doc, ts)
        if self.excluded:
            return "excluded"
        event_id = doc.get("event_id")
        if event_id is not None:
            content = _content(doc, kind, ts, local_hour)
            seen = self._seen.get(event_id)
            if seen is not None:
                self.duplicates += 1
                if seen != content:
                    self.conflicts += 1
                    return "conflicting_duplicate"
                return "duplicate"
            self._seen[event_id] = content
        self.accepted += 1
        newest = self._newest.get(kind, 0)  # lateness is judged within each stream
        late = ts < newest - self.lateness_ms
        self._newest[kind] = max(newest, ts)
        self.as_of = max(self.as_of, ts)
        if late:
            self.late += 1
        app = _is_app(doc.get("channel"))
        if kind == "purchase":
            discount = doc.get("discount")
            self._purchases.append(_Purchase(
                ts=ts,
                local_hour=local_hour,
                cents=_cents(doc.get("amount")),
                discounted=_cents(discount) > 0,
                categories=_purchase_categories(doc),
                items=_item_count(doc),
                app=app,
                late=late,
            ))
        elif not late:
            session = doc.get("session_id")
            self._clicks.append(_Click(
                ts=ts,
                local_hour=local_hour,
                event_type=str(doc.get("event_type")),
                session_id=session if isinstance(session, str) and session else None,
                app=app,
            ))
        return "late" if late else "accepted"

    def _add_profile(self, doc: dict, ts: int) -> str:
        if self.profile_ts is not None and ts < self.profile_ts:
            return "stale_profile"
        consent = doc.get("consent")
        segmentation = consent.get("segmentation") if isinstance(consent, dict) else None
        if segmentation is False or (self.excluded and segmentation is not True):
            fresh = BatchCustomer(self.customer_id, self.lateness_ms)
            self.__dict__.update(fresh.__dict__)
            self.excluded, self.profile_ts = True, ts
            return "excluded"
        self.excluded = False
        self.profile_ts = ts
        for name in PROFILE_FIELDS:
            if name in doc:
                if doc[name] is None:
                    self.profile.pop(name, None)
                else:
                    self.profile[name] = doc[name]
        return "profile"

    @property
    def has_activity(self) -> bool:
        """Whether at least one click or purchase was accepted."""
        return self.accepted > 0

    def features(self, at: int | None = None) -> dict:
        """Every feature evaluated at event time ``at``.

        Parameters
        ----------
        at : int, optional
            Evaluation time in epoch ms; defaults to :attr:`as_of`. It may be later than
            :attr:`as_of` (windows then slide forward) but not earlier.

        Returns
        -------
        dict
            The features named in :data:`FEATURE_NAMES`, in that order: counts as ``int``,
            money (currency units) and ratios as ``float``, ``first_order_ts`` /
            ``last_order_ts`` as epoch ms ``int`` and ``days_since_last_order`` as ``float``
            (all three ``None`` without any purchase).

        Raises
        ------
        ValueError
            If ``at`` is earlier than :attr:`as_of`.

        Examples
        --------
        >>> c = recompute([{"event_id": "p", "customer_id": "c", "ts": 0,
        ...                 "order_id": "o", "amount": 10}])["c"]
        >>> c.features()["orders_30d"], c.features(at=30 * DAY_MS)["orders_30d"]
        (1, 0)
        >>> c.features(at=3 * DAY_MS)["days_since_last_order"]
        3.0
        """
        t = self.as_of if at is None else at
        if t < self.as_of:
            raise ValueError(f"cannot evaluate at {t}, before as_of {self.as_of}")
        today = t // DAY_MS
        this_hour = t // HOUR_MS

        def in_days(ts: int, n: int) -> bool:
            return today - n < ts // DAY_MS <= today

        orders_total = len(self._purchases)
        revenue_total = sum(p.cents for p in self._purchases)
        purchase_ts = [p.ts for p in self._purchases]
        first_order_ts = min(purchase_ts) if purchase_ts else None
        last_order_ts = max(purchase_ts) if purchase_ts else None

        on_time = [p for p in self._purchases if not p.late]
        p30 = [p for p in on_time if in_days(p.ts, 30)]
        p90 = [p for p in on_time if in_days(p.ts, 90)]
        p7 = [p for p in on_time if in_days(p.ts, 7)]
        c30 = [c for c in self._clicks if in_days(c.ts, 30)]
        c7 = [c for c in self._clicks if in_days(c.ts, 7)]

        revenue_90d = sum(p.cents for p in p90)
        orders_90d = len(p90)
        categories: set[str] = set()
        for p in p90:
            categories |= p.categories

        add_to_cart_7d = sum(1 for c in c7 if c.event_type == "add_to_cart")
        items_7d = sum(p.items for p in p7)
        abandon = (max(0, add_to_cart_7d - items_7d) / add_to_cart_7d
                   if add_to_cart_7d else 0.0)

        mix = [(e.local_hour, e.app) for e in (*p30, *c30)]
        night = sum(1 for hour, _ in mix if hour in _NIGHT_HOURS)
        app = sum(1 for _, is_app in mix if is_app)

        return {
            "orders_total": orders_total,
            "revenue_total": revenue_total / 100,
            "first_order_ts": first_order_ts,
            "last_order_ts": last_order_ts,
            "orders_30d": len(p30),
            "revenue_30d": sum(p.cents for p in p30) / 100,
            "orders_90d": orders_90d,
            "revenue_90d": revenue_90d / 100,
            "avg_order_value_90d": revenue_90d / orders_90d / 100 if orders_90d else 0.0,
            "days_since_last_order": (
                None if last_order_ts is None else (t - last_order_ts) / DAY_MS),
            "discount_share_90d": (
                sum(1 for p in p90 if p.discounted) / orders_90d if orders_90d else 0.0),
            "distinct_categories_90d": len(categories),
            "views_24h": sum(1 for c in self._clicks if c.event_type in _VIEW_TYPES
                             and this_hour - 24 < c.ts // HOUR_MS <= this_hour),
            "views_7d": sum(1 for c in c7 if c.event_type in _VIEW_TYPES),
            "sessions_7d": len({c.session_id for c in c7 if c.session_id is not None}),
            "searches_7d": sum(1 for c in c7 if c.event_type == "search"),
            "add_to_cart_7d": add_to_cart_7d,
            "cart_abandon_rate_7d": abandon,
            "events_30d": len(mix),
            "night_share_30d": night / len(mix) if mix else 0.0,
            "app_share_30d": app / len(mix) if mix else 0.0,
        }


def recompute(events: Iterable[dict],
              lateness_ms: int = DEFAULT_LATENESS_MS) -> dict[str, BatchCustomer]:
    """Replay input documents in arrival order and group them by ``customer_id``.

    Parameters
    ----------
    events : iterable of dict
        Raw input documents (clicks, purchases and profile updates, mixed) in arrival order.
    lateness_ms : int, default 3_600_000
        Allowed lateness behind a customer's ``as_of``.

    Returns
    -------
    dict of str to BatchCustomer
        Every customer seen, including those with only profile updates.

    Raises
    ------
    ValueError
        For a document without a ``customer_id`` or with an unparseable ``ts``.

    Examples
    --------
    >>> out = recompute([{"customer_id": "a", "ts": 5, "age": 30},
    ...                  {"customer_id": "b", "ts": 7, "event_id": "x",
    ...                   "event_type": "search"}])
    >>> sorted(out), out["a"].profile, out["a"].as_of, out["b"].as_of
    (['a', 'b'], {'age': 30}, 0, 7)
    """
    customers: dict[str, BatchCustomer] = {}
    for position, doc in enumerate(events):
        customer_id = doc.get("customer_id")
        if customer_id is None:
            raise ValueError(f"event #{position} has no customer_id: {doc!r}")
        customer = customers.get(customer_id)
        if customer is None:
            customer = customers[customer_id] = BatchCustomer(customer_id, lateness_ms)
        try:
            customer.add(doc)
        except ValueError as exc:
            raise ValueError(f"event #{position}: {exc}") from None
    return customers
