"""Per-customer feature windows in event time, with no Faust import.

A :class:`FeatureWindow` keeps, for one customer, UTC-day buckets of counters for the
last :data:`RETENTION_DAYS` days, UTC-hour buckets of views for the last 24 hours,
the latest day each session and each purchased category was seen, and lifetime totals.
Features are computed at ``as_of``, the newest event time seen for the customer, so
replaying history yields the same numbers as live traffic.

Window semantics (also in the README): features are evaluated at a time ``T`` (``as_of``,
or later when time passes without events); a window of N days covers the UTC day of ``T``
and the N-1 days before it; ``views_24h`` covers the UTC hour of ``T`` and the 23 hours
before it. Out-of-order events land in their own bucket as long as they are no more than
the allowed lateness older than the customer's newest event *of the same stream*
(clickstream or purchases); later ones are *late*: a late purchase still counts in the
lifetime totals (``orders_total``, ``revenue_total``, ``first_order_ts``,
``last_order_ts``), a late click changes nothing, and neither touches a window.

Lateness is judged per stream because Kafka orders messages within a partition, not
across topics: a worker may read a customer's clicks ahead of its purchases or behind
them, and the result must not depend on that.

>>> from stream_app.core.validation import Event
>>> w = FeatureWindow()
>>> day = 20_000 * DAY_MS
>>> w.apply(Event("purchase", "e1", "c", day + 3_600_000, 1, "purchase",
...               amount_cents=1999, discount_cents=200, quantity=2, categories=("shoes",)))
True
>>> w.apply(Event("click", "e2", "c", day + 7_200_000, 2, "page_view", channel="app"))
True
>>> w.apply(Event("click", "e3", "c", day, 0, "page_view"))  # two hours late
False
>>> f = w.features()
>>> f["orders_30d"], f["revenue_30d"], f["discount_share_90d"], f["views_24h"], f["app_share_30d"]
(1, 19.99, 1.0, 1, 0.5)
"""

from __future__ import annotations

import hashlib
from typing import Any

from stream_app.core.validation import Event

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
#: Day buckets older than this (relative to ``as_of``) are dropped.
RETENTION_DAYS = 90
#: Default allowed lateness: older events (relative to ``as_of``) touch no window.
ALLOWED_LATENESS_MS = HOUR_MS
#: Local hours counted as night: 22:00 to 05:59.
NIGHT_HOURS = frozenset({22, 23, 0, 1, 2, 3, 4, 5})
#: Days after the last order at which a customer whose windows are empty is evaluated
#: again (``days_since_last_order`` still grows; see :meth:`FeatureWindow.next_change`).
RECENCY_CHECKPOINTS = (120, 150, 180, 240, 300, 365, 450, 540, 640, 730)
MAX_CATEGORIES = 64
MAX_SESSIONS = 256

# Counter slots of a day bucket.
(ORDERS, REVENUE, DISCOUNT_ORDERS, ITEMS, VIEWS, SEARCHES, ADD_TO_CART, EVENTS, NIGHT,
 APP) = range(10)
N_COUNTERS = 10

VIEW_TYPES = frozenset({"page_view", "product_view"})

#: Every feature :meth:`FeatureWindow.features` returns, in order.
FEATURE_NAMES = (
    "orders_total", "revenue_total", "first_order_ts", "last_order_ts",
    "orders_30d", "revenue_30d", "orders_90d", "revenue_90d", "avg_order_value_90d",
    "days_since_last_order", "discount_share_90d", "distinct_categories_90d",
    "views_24h", "views_7d", "sessions_7d", "searches_7d", "add_to_cart_7d",
    "cart_abandon_rate_7d", "events_30d", "night_share_30d", "app_share_30d",
)


def session_key(session_id: str) -> str:
    """A short, stable digest of a session id (raw ids are not kept)."""
    return hashlib.blake2b(session_id.encode(), digest_size=8).hexdigest()


class FeatureWindow:
    """Windowed and lifetime behaviour of one customer (see the module docstring)."""

    __slots__ = (
        "as_of",
        "categories",
        "days",
        "first_order_ts",
        "hours",
        "last_order_ts",
        "newest_click",
        "newest_order",
        "orders_total",
        "revenue_total",
        "sessions",
    )

    def __init__(self) -> None:
        self.as_of = 0
        self.newest_click = 0  # newest event time of each stream, for lateness
        self.newest_order = 0
        self.days: dict[int, list[int]] = {}
        self.hours: dict[int, int] = {}
        self.sessions: dict[str, int] = {}
        self.categories: dict[str, int] = {}
        self.orders_total = 0
        self.revenue_total = 0  # cents
        self.first_order_ts: int | None = None
        self.last_order_ts: int | None = None

    # -- updates -------------------------------------------------------------------------
    def apply(self, ev: Event, lateness_ms: int = ALLOWED_LATENESS_MS) -> bool:
        """Add one click or purchase event; return ``False`` if it was late.

        An event older than the newest event of its stream minus ``lateness_ms`` is late:
        it counts in the lifetime totals (purchases) and in no window. Other out-of-order
        events land in their bucket.
        """
        if ev.kind == "purchase":
            self.orders_total += 1
            self.revenue_total += ev.amount_cents
            if self.first_order_ts is None or ev.ts < self.first_order_ts:
                self.first_order_ts = ev.ts
            if self.last_order_ts is None or ev.ts > self.last_order_ts:
                self.last_order_ts = ev.ts
        if ev.kind == "purchase":
            if ev.ts < self.newest_order - lateness_ms:
                return False
            self.newest_order = max(self.newest_order, ev.ts)
        else:
            if ev.ts < self.newest_click - lateness_ms:
                return False
            self.newest_click = max(self.newest_click, ev.ts)
        if ev.ts > self.as_of:
            self.advance(ev.ts)
        day = ev.ts // DAY_MS
        if day <= self.as_of // DAY_MS - RETENTION_DAYS:
            return True  # on time for its stream, but older than every window
        bucket = self.days.get(day)
        if bucket is None:
            bucket = self.days[day] = [0] * N_COUNTERS
        bucket[EVENTS] += 1
        if ev.local_hour in NIGHT_HOURS:
            bucket[NIGHT] += 1
        if ev.channel == "app":
            bucket[APP] += 1
        if ev.kind == "purchase":
            bucket[ORDERS] += 1
            bucket[REVENUE] += ev.amount_cents
            bucket[ITEMS] += ev.quantity
            if ev.discount_cents > 0:
                bucket[DISCOUNT_ORDERS] += 1
            for category in ev.categories:
                if self.categories.get(category, -1) < day:
                    self.categories[category] = day
            if len(self.categories) > MAX_CATEGORIES:
                _drop_oldest(self.categories, MAX_CATEGORIES)
            return True
        etype = ev.event_type
        if etype in VIEW_TYPES:
            bucket[VIEWS] += 1
            hour = ev.ts // HOUR_MS
            if hour > self.as_of // HOUR_MS - 24:
                self.hours[hour] = self.hours.get(hour, 0) + 1
        elif etype == "search":
            bucket[SEARCHES] += 1
        elif etype == "add_to_cart":
            bucket[ADD_TO_CART] += 1
        if ev.session_id:
            key = session_key(ev.session_id)
            if self.sessions.get(key, -1) < day:
                self.sessions[key] = day
                if len(self.sessions) > MAX_SESSIONS:
                    _drop_oldest(self.sessions, MAX_SESSIONS)
        return True

    def advance(self, ts: int) -> None:
        """Move ``as_of`` forward to ``ts`` and drop buckets that fell out of every window."""
        if ts <= self.as_of:
            return
        old_day, self.as_of = self.as_of // DAY_MS, ts
        day = ts // DAY_MS
        if self.hours:
            first_hour = ts // HOUR_MS - 23
            for hour in [h for h in self.hours if h < first_hour]:
                del self.hours[hour]
        if day == old_day:
            return
        horizon = day - RETENTION_DAYS
        for d in [d for d in self.days if d <= horizon]:
            del self.days[d]
        for d in [k for k, v in self.sessions.items() if v <= day - 7]:
            del self.sessions[d]
        for c in [k for k, v in self.categories.items() if v <= horizon]:
            del self.categories[c]

    # -- reads ---------------------------------------------------------------------------
    def features(self, at: int | None = None) -> dict[str, Any]:
        """Every feature of :data:`FEATURE_NAMES` at ``at`` (default and minimum: ``as_of``).

        Money is in currency units.
        """
        at = self.as_of if at is None or at < self.as_of else at
        today = at // DAY_MS
        o30 = r30 = o90 = r90 = d90 = v7 = s7 = a7 = i7 = e30 = n30 = app30 = 0
        for day, c in self.days.items():
            age = today - day
            if age >= 90:
                continue
            o90 += c[ORDERS]
            r90 += c[REVENUE]
            d90 += c[DISCOUNT_ORDERS]
            if age < 30:
                o30 += c[ORDERS]
                r30 += c[REVENUE]
                e30 += c[EVENTS]
                n30 += c[NIGHT]
                app30 += c[APP]
                if age < 7:
                    v7 += c[VIEWS]
                    s7 += c[SEARCHES]
                    a7 += c[ADD_TO_CART]
                    i7 += c[ITEMS]
        first_hour = at // HOUR_MS - 23
        return {
            "orders_total": self.orders_total,
            "revenue_total": self.revenue_total / 100,
            "first_order_ts": self.first_order_ts,
            "last_order_ts": self.last_order_ts,
            "orders_30d": o30,
            "revenue_30d": r30 / 100,
            "orders_90d": o90,
            "revenue_90d": r90 / 100,
            "avg_order_value_90d": r90 / o90 / 100 if o90 else 0.0,
            "days_since_last_order": (
                (at - self.last_order_ts) / DAY_MS if self.last_order_ts is not None
                else None
            ),
            "discount_share_90d": d90 / o90 if o90 else 0.0,
            "distinct_categories_90d": sum(1 for d in self.categories.values() if d > today - 90),
            "views_24h": sum(v for h, v in self.hours.items() if h >= first_hour),
            "views_7d": v7,
            "sessions_7d": sum(1 for d in self.sessions.values() if d > today - 7),
            "searches_7d": s7,
            "add_to_cart_7d": a7,
            "cart_abandon_rate_7d": max(0, a7 - i7) / a7 if a7 else 0.0,
            "events_30d": e30,
            "night_share_30d": n30 / e30 if e30 else 0.0,
            "app_share_30d": app30 / e30 if e30 else 0.0,
        }

    def event_count(self) -> int:
        """Clicks and purchases in the day buckets (the last 90 days of activity)."""
        return sum(c[EVENTS] for c in self.days.values())

    def changes_with_time(self, at: int) -> bool:
        """Whether some feature worth re-evaluating can still change as time passes
        beyond ``at`` (see :meth:`next_change`)."""
        return self.next_change(at) is not None

    def next_change(self, at: int) -> int | None:
        """The event time after ``at`` at which the customer is next worth evaluating
        again as time passes, or None if nothing changes any more.

        While a day bucket is inside the 90-day windows, windowed features change at
        every UTC midnight: the next one. Afterwards only ``days_since_last_order`` still
        grows; it is re-read at the :data:`RECENCY_CHECKPOINTS` (days after the last
        order, spaced as its ``log1p`` transform changes), so a buyer who lapses keeps
        being placed by how long ago it bought, at a cost of ten evaluations over two
        years.

        >>> w = FeatureWindow()
        >>> w.days, w.last_order_ts = {0: [0] * N_COUNTERS}, 0
        >>> w.next_change(5 * HOUR_MS) == DAY_MS
        True
        >>> w.days = {}
        >>> w.next_change(100 * DAY_MS) == 120 * DAY_MS
        True
        >>> w.next_change(RECENCY_CHECKPOINTS[-1] * DAY_MS) is None
        True
        """
        if self.days and max(self.days) > at // DAY_MS - RETENTION_DAYS:
            return (at // DAY_MS + 1) * DAY_MS
        if self.last_order_ts is None:
            return None
        for days in RECENCY_CHECKPOINTS:
            due = self.last_order_ts + days * DAY_MS
            if due > at:
                return due
        return None

    # -- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A compact JSON-ready form (see :meth:`from_dict`)."""
        return {
            "a": self.as_of,
            "nc": self.newest_click,
            "no": self.newest_order,
            "d": [[day, *c] for day, c in self.days.items()],
            "h": [[h, v] for h, v in self.hours.items()],
            "s": self.sessions,
            "c": self.categories,
            "o": self.orders_total,
            "r": self.revenue_total,
            "f": self.first_order_ts,
            "l": self.last_order_ts,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureWindow:
        w = cls()
        w.as_of = data["a"]
        w.newest_click = data["nc"]
        w.newest_order = data["no"]
        w.days = {row[0]: row[1:] for row in data["d"]}
        w.hours = {h: v for h, v in data["h"]}
        w.sessions = dict(data["s"])
        w.categories = dict(data["c"])
        w.orders_total = data["o"]
        w.revenue_total = data["r"]
        w.first_order_ts = data["f"]
        w.last_order_ts = data["l"]
        return w


def _drop_oldest(latest_day: dict[str, int], keep: int) -> None:
    for key, _ in sorted(latest_day.items(), key=lambda kv: kv[1])[: len(latest_day) - keep]:
        del latest_day[key]
