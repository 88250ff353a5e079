"""Synthetic shop traffic with planted customer types, so segments have something to find.

Four planted types, a quarter of the customers each:

* ``bargain_hunter`` — searches a lot, small baskets, nearly always with a discount;
* ``big_spender`` — frequent large orders at full price, on the web;
* ``window_shopper`` — browses heavily, fills carts, never buys;
* ``night_app_user`` — shops in the app between 22:00 and 06:00 local time.

Event time advances by a fixed step per event, so a seed gives the same events in any
process (the benchmark and tests rely on that); ``ts`` is ISO-8601 with the shop's zone.

>>> shop = SyntheticShop(customers=8, seed=1, start_ms=1_767_225_600_000, step_ms=60_000)
>>> first = next(iter(shop))
>>> first.kind, first.key == orjson.loads(first.value)["customer_id"].encode()
('profile', True)
>>> len(list(SyntheticShop(8, seed=1, start_ms=0, step_ms=1).events(100)))
100
"""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from heapq import heappop, heappush
from typing import Any

import orjson

TYPES = ("bargain_hunter", "big_spender", "window_shopper", "night_app_user")
CATEGORIES = ("shoes", "dresses", "electronics", "books", "toys", "beauty", "home", "sports",
              "garden", "grocery", "jewelry", "pets")
REGIONS = (("Almaty", "Almaty"), ("Astana", "Astana"), ("Shymkent", "South"),
           ("Karaganda", "Central"))
SHOP_ZONE = timezone(timedelta(hours=5))
SESSION_GAP_MS = 30 * 60_000
NIGHT = frozenset({22, 23, 0, 1, 2, 3, 4, 5})


@dataclass(frozen=True)
class Persona:
    """How one planted type behaves."""

    weight: float  # relative number of events per customer
    actions: tuple[tuple[str, float], ...]  # event kind and probability
    price: float  # median item price
    items: tuple[int, int]  # items per order (min, max)
    discount: float  # probability that an order is discounted
    app: float  # probability of the app channel
    categories: int  # how many categories the customer shops in
    night: bool  # active at night instead of by day
    income: tuple[int, int]
    age: tuple[int, int]


PERSONAS: dict[str, Persona] = {
    "bargain_hunter": Persona(
        1.0, (("search", .30), ("product_view", .30), ("page_view", .08), ("add_to_cart", .12),
              ("remove_from_cart", .04), ("checkout_start", .06), ("purchase", .10)),
        price=12.0, items=(1, 2), discount=0.95, app=0.15, categories=6, night=False,
        income=(15_000, 35_000), age=(20, 45)),
    "big_spender": Persona(
        0.8, (("product_view", .30), ("page_view", .12), ("search", .04), ("add_to_cart", .18),
              ("checkout_start", .14), ("purchase", .22)),
        price=180.0, items=(2, 5), discount=0.03, app=0.05, categories=3, night=False,
        income=(90_000, 250_000), age=(35, 65)),
    "window_shopper": Persona(
        1.6, (("page_view", .45), ("product_view", .40), ("search", .08), ("add_to_cart", .07)),
        price=60.0, items=(1, 1), discount=0.0, app=0.25, categories=8, night=False,
        income=(20_000, 80_000), age=(18, 40)),
    "night_app_user": Persona(
        1.0, (("product_view", .38), ("page_view", .18), ("search", .08), ("add_to_cart", .14),
              ("checkout_start", .10), ("purchase", .12)),
        price=45.0, items=(1, 3), discount=0.35, app=0.97, categories=4, night=True,
        income=(30_000, 90_000), age=(18, 35)),
}


@dataclass(frozen=True, slots=True)
class GeneratedEvent:
    kind: str  # "click", "purchase" or "profile"
    key: bytes
    value: bytes
    planted_type: str
    ts: int


class SyntheticShop:
    """A deterministic stream of events from ``customers`` planted customers."""

    def __init__(self, customers: int, seed: int = 7, start_ms: int | None = None,
                 step_ms: int = 60_000, profiles: bool = True) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.customers = [f"c{seed:02d}-{i:07d}" for i in range(customers)]
        self.planted = {c: TYPES[i % len(TYPES)] for i, c in enumerate(self.customers)}
        self.by_type = {t: [c for c in self.customers if self.planted[c] == t] for t in TYPES}
        self.taste = {c: self.rng.sample(CATEGORIES, PERSONAS[self.planted[c]].categories)
                      for c in self.customers}
        self.start_ms = int(time.time() * 1000) if start_ms is None else start_ms
        self.step_ms = step_ms
        self.profiles = profiles
        self._profiled: set[str] = set()
        self._session: dict[str, tuple[int, int]] = {}
        self._counter = 0

    def __iter__(self) -> Iterator[GeneratedEvent]:
        return self.events()

    def events(self, limit: int | None = None, clock: Callable[[int], int] | None = None
               ) -> Iterator[GeneratedEvent]:
        """Yield events; event ``i`` is stamped ``start_ms + i * step_ms`` unless ``clock``."""
        i = 0
        while limit is None or i < limit:
            ts = clock(i) if clock else self.start_ms + i * self.step_ms
            for event in self._next(ts):
                yield event
                i += 1
                if limit is not None and i >= limit:
                    return

    def _next(self, ts: int) -> list[GeneratedEvent]:
        rng = self.rng
        hour = datetime.fromtimestamp(ts / 1000, SHOP_ZONE).hour
        night = hour in NIGHT
        # Only types that have customers (a shop of three customers lacks some types).
        kinds = [t for t in TYPES if self.by_type[t]]
        weights = [PERSONAS[t].weight * (1.0 if PERSONAS[t].night == night else 0.08)
                   for t in kinds]
        kind = rng.choices(kinds, weights)[0]
        customer = rng.choice(self.by_type[kind])
        out = []
        if self.profiles and customer not in self._profiled:
            self._profiled.add(customer)
            out.append(self._profile(customer, kind, ts))
        out.append(self._action(customer, kind, ts))
        return out

    def _iso(self, ts: int) -> str:
        return datetime.fromtimestamp(ts / 1000, SHOP_ZONE).isoformat(timespec="milliseconds")

    def _event_id(self) -> str:
        self._counter += 1
        return f"g{self.seed}-{self._counter:09d}"

    def _profile(self, customer: str, kind: str, ts: int) -> GeneratedEvent:
        p, rng = PERSONAS[kind], self.rng
        city, region = rng.choice(REGIONS)
        doc = {"event_id": self._event_id(), "customer_id": customer, "ts": self._iso(ts),
               "age": rng.randint(*p.age), "income": rng.randint(*p.income), "region": region,
               "city": city, "gender": rng.choice(("f", "m", "x"))}
        return GeneratedEvent("profile", customer.encode(), orjson.dumps(doc), kind, ts)

    def _session_id(self, customer: str, ts: int) -> str:
        number, last = self._session.get(customer, (0, -SESSION_GAP_MS))
        if ts - last > SESSION_GAP_MS:
            number += 1
        self._session[customer] = (number, ts)
        return f"{customer}-s{number}"

    def _action(self, customer: str, kind: str, ts: int) -> GeneratedEvent:
        p, rng = PERSONAS[kind], self.rng
        action = rng.choices([a for a, _ in p.actions], [w for _, w in p.actions])[0]
        channel = "app" if rng.random() < p.app else rng.choice(("web", "web", "email"))
        category = rng.choice(self.taste[customer])
        price = round(rng.lognormvariate(0, 0.4) * p.price, 2)
        base = {"event_id": self._event_id(), "customer_id": customer, "ts": self._iso(ts),
                "channel": channel}
        if action == "purchase":
            items = [{"product_id": f"p{rng.randrange(5000)}",
                      "category": rng.choice(self.taste[customer]),
                      "price": round(rng.lognormvariate(0, 0.4) * p.price, 2),
                      "quantity": 1}
                     for _ in range(rng.randint(*p.items))]
            total = sum(i["price"] for i in items)
            discount = round(total * rng.uniform(0.1, 0.4), 2) if rng.random() < p.discount else 0
            doc = {**base, "order_id": f"o-{base['event_id']}",
                   "amount": round(total - discount, 2), "discount": discount,
                   "currency": "KZT", "items": items}
            return GeneratedEvent("purchase", customer.encode(), orjson.dumps(doc), kind, ts)
        doc = {**base, "event_type": action, "session_id": self._session_id(customer, ts),
               "category": category}
        if action in ("product_view", "add_to_cart", "remove_from_cart"):
            doc["product_id"] = f"p{rng.randrange(5000)}"
            doc["price"] = price
        if action == "search":
            doc["query"] = f"{category} {rng.choice(('sale', 'new', 'best', 'cheap'))}"
        return GeneratedEvent("click", customer.encode(), orjson.dumps(doc), kind, ts)


#: Longest interval between two progress reports of :func:`produce` (seconds).
PROGRESS_EVERY_S = 0.5


async def produce(bootstrap_servers: list[str], topics: dict[str, str],
                  events: Iterator[GeneratedEvent], rate: float | None,
                  on_sent: Callable[[int], None] | None = None) -> int:
    """Send ``events`` (kind → topic via ``topics``) at ``rate`` events/s (None: flat out).

    Returns the number of messages sent; all are acknowledged when it returns.
    ``on_sent(n)`` is told the number acknowledged so far every 500 messages and at least
    every :data:`PROGRESS_EVERY_S` (a progress bar). Raises
    :class:`~stream_app.client.kafka.BrokerUnreachable` when no broker answers.
    """
    from aiokafka import AIOKafkaProducer

    from stream_app.client.kafka import start_client
    from stream_app.worker.pacing import Pace

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5,
                                max_batch_size=256 * 1024)
    await start_client(producer, bootstrap_servers)  # BrokerUnreachable: one clear line
    pace = Pace(rate)
    told = time.monotonic()
    try:
        pending = []
        for event in events:
            pending.append(await producer.send(topics[event.kind], event.value, key=event.key))
            await pace.sent()
            if pace.count % 500 == 0 or (on_sent and time.monotonic() - told
                                         >= PROGRESS_EVERY_S):
                await asyncio.gather(*pending)
                pending.clear()
                if on_sent:
                    on_sent(pace.count)
                    told = time.monotonic()
        await asyncio.gather(*pending)
        if on_sent:
            on_sent(pace.count)
    finally:
        await producer.stop()
    return pace.count


# --------------------------------------------------------------------------------------
# A realistic retail workload: heavy-tailed repeat buying over a long history.

#: Lifecycle classes of :class:`RetailShop` customers, by their planned number of orders.
RETAIL_TYPES = ("one_time", "occasional", "regular", "loyal")
#: Relative popularity of the categories (a customer's few categories are drawn by it).
CATEGORY_POPULARITY = {"grocery": 3.0, "beauty": 2.0, "home": 2.0, "dresses": 1.5,
                       "shoes": 1.5, "electronics": 1.2, "books": 1.0, "toys": 1.0,
                       "sports": 1.0, "pets": 0.8, "garden": 0.6, "jewelry": 0.4}
DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
_ZONE_MS = int(SHOP_ZONE.utcoffset(None).total_seconds() * 1000)
#: Hours around which day people shop (lunch and evening peaks), and night people.
_DAY_HOURS = ((8, 2), (9, 3), (10, 4), (11, 5), (12, 6), (13, 6), (14, 5), (15, 4), (16, 4),
              (17, 4), (18, 5), (19, 6), (20, 7), (21, 6), (22, 3))
_NIGHT_HOURS = ((22, 2), (23, 3), (24, 3), (25, 2), (26, 1))
#: Click types of a session: the first one, and the others when it ends in an order or not.
_FIRST_CLICK = (("page_view", 0.5), ("search", 0.3), ("product_view", 0.2))
_MID_CLICK_BUY = (("product_view", 0.6), ("search", 0.15), ("page_view", 0.15),
                  ("add_to_cart", 0.1))
_MID_CLICK_BROWSE = (("product_view", 0.55), ("search", 0.2), ("page_view", 0.15),
                     ("add_to_cart", 0.08), ("remove_from_cart", 0.02))
_ITEMS = ((1, 0.5), (2, 0.28), (3, 0.14), (4, 0.08))
_SEARCH_WORDS = ("sale", "new", "best", "gift", "cheap")


def _lifecycle(orders: int) -> str:
    """The lifecycle class of a customer planning ``orders`` purchases.

    >>> [_lifecycle(n) for n in (1, 2, 4, 5, 14, 15, 80)]
    ['one_time', 'occasional', 'occasional', 'regular', 'regular', 'loyal', 'loyal']
    """
    if orders <= 1:
        return "one_time"
    if orders <= 4:
        return "occasional"
    return "regular" if orders <= 14 else "loyal"


class _Table:
    """A weighted choice by bisection of cumulative weights (faster than ``choices``)."""

    __slots__ = ("cum", "names", "total")

    def __init__(self, pairs: tuple[tuple[object, float], ...] | list) -> None:
        self.names = [n for n, _ in pairs]
        self.cum: list[float] = []
        total = 0.0
        for _, w in pairs:
            total += w
            self.cum.append(total)
        self.total = total

    def pick(self, rng: random.Random) -> Any:
        return self.names[bisect_right(self.cum, rng.random() * self.total)]


_TABLES = {name: _Table(pairs) for name, pairs in (
    ("day", _DAY_HOURS), ("night", _NIGHT_HOURS), ("first", _FIRST_CLICK),
    ("buy", _MID_CLICK_BUY), ("browse", _MID_CLICK_BROWSE), ("items", _ITEMS),
    ("categories", tuple(CATEGORY_POPULARITY.items())))}


@dataclass(frozen=True, slots=True)
class _Traits:
    """What the rendering of one customer's events needs (drawn when planning)."""

    scale: float  # median order value
    spread: float  # sigma of the log order value around it
    discount: float  # probability that an order is discounted
    app: float  # probability of the app channel
    email: float  # probability that a session comes from an e-mail
    categories: _Table  # the customer's few categories, the first ones preferred
    profile: tuple[int, int, int, str]  # age, income, region index, gender


class RetailShop:
    """A deterministic, realistic retail history: repeat buying with a heavy tail.

    Every customer buys at least once: about half exactly once, the others a Pareto-tailed
    number of times (a few dozen for the loyal tail). First purchases are spread over the
    history; the gaps between a customer's orders are lognormal around a per-customer
    median (weeks to months) and a customer stops after its planned orders, so many
    customers lapse long before the end. Order values are lognormal with a per-customer
    scale, 1–4 items in a few categories per customer, discounted with a per-customer
    propensity. Local hours follow a customer's habit: most by day, some night people.

    With ``clickstream=True`` sparse sessions of clicks (``page_view``, ``search``,
    ``product_view``, ``add_to_cart``, ``checkout_start``) lead to purchases, and
    browse-only sessions come and go around a customer's buying period; channels are web,
    app (per-customer propensity) and e-mail. The purchases (customers, times to the
    session, amounts) are the same with and without clicks. Events carry the JSON
    documents of :class:`SyntheticShop` (schemas ``purchase``, ``clickstream``,
    ``customer-profile``) and are yielded in time order; ``planted_type`` is the
    customer's lifecycle class (:data:`RETAIL_TYPES`) by its planned number of orders.

    Parameters
    ----------
    customers
        Number of customers, ids ``r{seed:02d}-{i:07d}``.
    seed
        Same seed, same events (private ``random.Random`` generators).
    start_ms
        Start of the history, epoch ms (default: ``span_days`` before now, so that the
        history ends now).
    span_days
        Length of the history; it ends at ``end_ms = start_ms + span``.
    clickstream
        Add clicks: sessions leading to purchases and browse-only sessions.
    profiles
        Send a profile for each customer with its first event.

    Attributes
    ----------
    customers : list[str]
        The customer ids.
    planted : dict[str, str]
        Lifecycle class of each customer.
    orders : list[int]
        Number of orders of each customer (in the order of ``customers``).
    start_ms, end_ms : int
        The history's bounds (epoch ms); every event's ``ts`` is within them.
    total_events : int
        How many events :meth:`events` yields.

    Examples
    --------
    >>> shop = RetailShop(200, seed=3, start_ms=1_735_689_600_000)
    >>> events = list(shop)
    >>> len(events) == shop.total_events == sum(shop.orders), {e.kind for e in events}
    (True, {'purchase'})
    >>> all(a.ts <= b.ts for a, b in zip(events, events[1:]))
    True
    >>> shop.start_ms <= events[0].ts and events[-1].ts <= shop.end_ms
    True
    >>> sorted(set(shop.planted.values())) == sorted(RETAIL_TYPES)
    True
    >>> mixed = RetailShop(50, seed=3, start_ms=1_735_689_600_000, clickstream=True)
    >>> sorted({e.kind for e in mixed.events(2000)})
    ['click', 'purchase']
    """

    #: Share of customers who plan a single order.
    one_time_share = 0.5
    #: Extra orders of repeat customers: Lomax (Pareto II) shape and scale, and a cap.
    tail_shape, tail_scale, max_orders = 1.8, 3.5, 120
    #: Median gap between orders across customers (days) and its spread (log sigma).
    median_gap_days, gap_spread = 40.0, 0.6
    #: Median order value across customers and the spread (log sigma) of customer scales.
    median_order, order_scale_spread = 45.0, 0.75
    #: Share of night people.
    night_share = 0.08
    #: Longest a session lasts (ms); no session starts later than this before the end.
    max_session_ms = 2 * _HOUR_MS

    def __init__(self, customers: int, seed: int = 7, start_ms: int | None = None,
                 span_days: float = 540.0, clickstream: bool = False,
                 profiles: bool = False) -> None:
        if span_days <= 0:
            raise ValueError("span_days must be positive")
        self.seed = seed
        self.span_days = span_days
        span_ms = int(span_days * DAY_MS)
        self.start_ms = int(time.time() * 1000) - span_ms if start_ms is None else start_ms
        self.end_ms = self.start_ms + span_ms
        self.clickstream = clickstream
        self.profiles = profiles
        self.customers = [f"r{seed:02d}-{i:07d}" for i in range(customers)]
        self.planted: dict[str, str] = {}
        self.orders: list[int] = []
        self._traits: list[_Traits] = []
        # The plan, one row per session (an order, after its clicks if any, or a browse-only
        # session): start time, customer index, code = clicks * 4 + first * 2 + order.
        self._ts, self._cust, self._code = array("q"), array("q"), array("q")
        self._clicks = 0
        self._margin = min(self.max_session_ms, span_ms // 10)
        rng = random.Random(seed)  # orders and traits
        click_rng = random.Random(f"{seed}:retail-clicks")  # browsing, apart: same orders
        for i, customer in enumerate(self.customers):
            orders = self._plan(rng, click_rng, i)
            self.orders.append(orders)
            self.planted[customer] = _lifecycle(orders)

    @property
    def total_events(self) -> int:
        """How many events :meth:`events` yields without a limit."""
        return sum(self.orders) + self._clicks + (len(self.customers) if self.profiles else 0)

    # -- planning ------------------------------------------------------------------------

    def _planned_orders(self, rng: random.Random) -> int:
        if rng.random() < self.one_time_share:
            return 1
        extra = self.tail_scale * ((1.0 - rng.random()) ** (-1.0 / self.tail_shape) - 1.0)
        return min(self.max_orders, 2 + int(extra))

    def _plan(self, rng: random.Random, click_rng: random.Random, index: int) -> int:
        """Draw customer ``index``'s orders and traits, and append its sessions to the plan."""
        orders = self._planned_orders(rng)
        span = self.span_days
        # Gaps: lognormal around a per-customer median; frequent buyers buy more often.
        median_gap = rng.lognormvariate(0.0, self.gap_spread) * self.median_gap_days
        median_gap *= (orders / 3.0) ** -0.35
        irregular = rng.uniform(0.5, 1.1)
        gaps = [median_gap * rng.lognormvariate(0.0, irregular) for _ in range(orders - 1)]
        life = sum(gaps)
        if life > 0.95 * span:  # a loyal customer buys more often to fit in the history
            gaps = [g * 0.95 * span / life for g in gaps]
            life = 0.95 * span
        days = [rng.random() * (span - life)]
        for g in gaps:
            days.append(days[-1] + g)
        # Local time of day: a habit around an hour of the day (or of the night).
        night = rng.random() < self.night_share
        habit = _TABLES["night" if night else "day"].pick(rng) + rng.random()
        habit_sd = rng.uniform(1.0, 2.5)
        low, high = self.start_ms, self.end_ms - self._margin

        def stamp(day: float, r: random.Random) -> int:
            hour = r.random() * 24 if r.random() < 0.04 else (habit + r.gauss(0.0, habit_sd)) % 24
            ts = self.start_ms + int(day * DAY_MS)
            ts += int(hour * _HOUR_MS) - (ts + _ZONE_MS) % DAY_MS  # that hour of that day
            return min(max(ts, low), high)

        sessions = [(stamp(d, rng), True) for d in days]
        self._traits.append(self._draw_traits(rng, night))
        if self.clickstream:
            # Browse-only sessions: a Poisson process from a little before the first order
            # to a while after the last one, at a per-customer rate per typical gap.
            rate = click_rng.lognormvariate(0.0, 0.7) / max(median_gap, 3.0)
            t = days[0] - click_rng.expovariate(1 / 20.0)
            stop = days[-1] + click_rng.expovariate(1 / 45.0)
            while True:
                t += click_rng.expovariate(rate)
                if t > stop:
                    break
                if 0.0 <= t < span:
                    sessions.append((stamp(t, click_rng), False))
        sessions.sort()
        for n, (ts, purchase) in enumerate(sessions):
            clicks = 0
            if self.clickstream:
                mean = 4.0 if purchase else 3.0  # an order may follow no click (a reorder)
                clicks = min(40, (0 if purchase else 1) + int(click_rng.expovariate(1 / mean)))
                self._clicks += clicks
            self._ts.append(ts)
            self._cust.append(index)
            self._code.append(clicks * 4 + (2 if n == 0 else 0) + (1 if purchase else 0))
        return orders

    def _draw_traits(self, rng: random.Random, night: bool) -> _Traits:
        k = _TABLES["items"].pick(rng)  # 1-4 categories, like items
        picked: list[str] = []
        while len(picked) < k:
            category = _TABLES["categories"].pick(rng)
            if category not in picked:
                picked.append(category)
        scale = self.median_order * rng.lognormvariate(0.0, self.order_scale_spread)
        income = int(min(5_000_000, 30_000 * (scale / self.median_order) ** 0.5
                         * rng.lognormvariate(0.0, 0.4)))  # loosely follows spending
        profile = (min(90, max(18, int(rng.gauss(38, 12)))), income,
                   rng.randrange(len(REGIONS)), rng.choice(("f", "m", "x")))
        return _Traits(
            scale=scale, spread=rng.uniform(0.3, 0.7), discount=rng.betavariate(0.6, 2.4),
            app=rng.betavariate(3.0, 1.0) if night else rng.betavariate(0.8, 1.6),
            email=rng.uniform(0.0, 0.15),
            categories=_Table([(c, 1.0 / (r + 1)) for r, c in enumerate(picked)]),
            profile=profile)

    # -- rendering -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[GeneratedEvent]:
        return self.events()

    def events(self, limit: int | None = None) -> Iterator[GeneratedEvent]:
        """Yield the history (or its first ``limit`` events) in time order."""
        import numpy as np

        if limit is not None and limit <= 0:
            return
        starts = np.frombuffer(self._ts, dtype=np.int64)
        order = np.argsort(starts, kind="stable")
        custs = np.frombuffer(self._cust, dtype=np.int64)
        codes = np.frombuffer(self._code, dtype=np.int64)
        render = _RetailRenderer(self).session
        pending: list[tuple[int, int, GeneratedEvent]] = []  # rendered, not yet due
        seq = sent = 0
        for lo in range(0, len(order), 65_536):
            rows = order[lo:lo + 65_536]
            for start, cust, code in zip(starts[rows].tolist(), custs[rows].tolist(),
                                         codes[rows].tolist()):
                while pending and pending[0][0] <= start:  # no later session comes before
                    yield heappop(pending)[2]
                    sent += 1
                    if sent == limit:
                        return
                for event in render(start, cust, code):
                    heappush(pending, (event.ts, seq, event))
                    seq += 1
        while pending:
            yield heappop(pending)[2]
            sent += 1
            if sent == limit:
                return


class _RetailRenderer:
    """Turns the planned sessions of a :class:`RetailShop` into events, in one pass."""

    def __init__(self, shop: RetailShop) -> None:
        self.shop = shop
        self.prng = random.Random(f"{shop.seed}:retail-orders")  # orders
        self.crng = random.Random(f"{shop.seed}:retail-sessions")  # clicks
        self.counter = 0
        self.session_numbers = [0] * len(shop.customers)

    def _event_id(self) -> str:
        self.counter += 1
        return f"r{self.shop.seed}-{self.counter:09d}"

    @staticmethod
    def _iso(ts: int) -> str:
        return datetime.fromtimestamp(ts / 1000, SHOP_ZONE).isoformat(timespec="milliseconds")

    def session(self, start: int, index: int, code: int) -> list[GeneratedEvent]:
        shop, crng = self.shop, self.crng
        customer = shop.customers[index]
        traits = shop._traits[index]
        head = (customer, customer.encode(), shop.planted[customer], traits)
        clicks, first, purchase = code >> 2, bool(code & 2), bool(code & 1)
        out = []
        if first and shop.profiles:
            out.append(self._profile(head, start))
        rng = self.prng if purchase else crng
        channel = ("email" if rng.random() < traits.email
                   else "app" if rng.random() < traits.app else "web")
        ts = start
        if clicks:
            self.session_numbers[index] += 1
            session_id = f"{customer}-s{self.session_numbers[index]}"
            limit = min(start + shop.max_session_ms, shop.end_ms)
            for n, event_type in enumerate(self._click_types(clicks, purchase, channel)):
                if n:
                    ts = min(limit, ts + min(900_000, int(crng.lognormvariate(10.5, 1.0))))
                out.append(self._click(head, ts, event_type, channel, session_id))
            if purchase:
                ts = min(limit, ts + min(900_000, int(crng.lognormvariate(11.0, 0.8))))
        if purchase:
            out.append(self._purchase(head, ts, channel))
        return out

    def _click_types(self, clicks: int, purchase: bool, channel: str) -> list[str]:
        crng = self.crng
        first = "product_view" if channel == "email" else _TABLES["first"].pick(crng)
        mid = _TABLES["buy" if purchase else "browse"]
        types = [first] + [mid.pick(crng) for _ in range(clicks - 1)]
        if purchase and clicks >= 2:
            types[-1] = "add_to_cart"
            if clicks >= 4 and crng.random() < 0.6:
                types[-2:] = ["add_to_cart", "checkout_start"]
        return types

    @staticmethod
    def _product(rng: random.Random) -> str:
        return f"p{int(5000 * rng.random() ** 2.5)}"  # a few products are popular

    def _click(self, head: tuple, ts: int, event_type: str, channel: str,
               session_id: str) -> GeneratedEvent:
        customer, key, kind, traits = head
        crng = self.crng
        category = traits.categories.pick(crng)
        doc: dict[str, Any] = {
            "event_id": self._event_id(), "customer_id": customer, "ts": self._iso(ts),
            "channel": channel, "event_type": event_type, "session_id": session_id,
            "category": category}
        if event_type in ("product_view", "add_to_cart", "remove_from_cart"):
            doc["product_id"] = self._product(crng)
            doc["price"] = round(traits.scale / 2 * crng.lognormvariate(0.0, 0.6), 2)
        elif event_type == "search":
            doc["query"] = f"{category} {crng.choice(_SEARCH_WORDS)}"
        return GeneratedEvent("click", key, orjson.dumps(doc), kind, ts)

    def _purchase(self, head: tuple, ts: int, channel: str) -> GeneratedEvent:
        customer, key, kind, traits = head
        rng = self.prng
        value = traits.scale * rng.lognormvariate(0.0, traits.spread)
        shares = [rng.lognormvariate(0.0, 0.5) for _ in range(_TABLES["items"].pick(rng))]
        whole = sum(shares)
        items = [{"product_id": self._product(rng), "category": traits.categories.pick(rng),
                  "price": max(0.5, round(value * s / whole, 2)), "quantity": 1}
                 for s in shares]
        total = sum(i["price"] for i in items)
        discount = (round(total * rng.uniform(0.05, 0.3), 2)
                    if rng.random() < traits.discount else 0)
        event_id = self._event_id()
        doc = {"event_id": event_id, "customer_id": customer, "ts": self._iso(ts),
               "channel": channel, "order_id": f"o-{event_id}",
               "amount": round(total - discount, 2), "discount": discount, "currency": "KZT",
               "items": items}
        return GeneratedEvent("purchase", key, orjson.dumps(doc), kind, ts)

    def _profile(self, head: tuple, ts: int) -> GeneratedEvent:
        customer, key, kind, traits = head
        age, income, region, gender = traits.profile
        city, region_name = REGIONS[region]
        doc = {"event_id": self._event_id(), "customer_id": customer, "ts": self._iso(ts),
               "age": age, "income": income, "region": region_name, "city": city,
               "gender": gender}
        return GeneratedEvent("profile", key, orjson.dumps(doc), kind, ts)


#: Workload profiles of :func:`make_shop` (and ``stream-app generate --profile``).
PROFILES = ("planted", "retail", "retail-mixed")


def make_shop(profile: str, customers: int, seed: int, start_ms: int | None,
              **kw: Any) -> SyntheticShop | RetailShop:
    """The shop of a workload ``profile``: ``"planted"`` (:class:`SyntheticShop`; e.g.
    ``step_ms=`` in ``kw``), ``"retail"`` (:class:`RetailShop`, purchases only) or
    ``"retail-mixed"`` (:class:`RetailShop` with clicks); ``kw`` goes to the class.

    >>> type(make_shop("retail-mixed", 10, seed=1, start_ms=1_735_689_600_000)).__name__
    'RetailShop'
    >>> make_shop("bogus", 10, seed=1, start_ms=0)
    Traceback (most recent call last):
    ...
    ValueError: unknown workload profile 'bogus'; choose one of: planted, retail, retail-mixed
    """
    if profile == "planted":
        return SyntheticShop(customers, seed=seed, start_ms=start_ms, **kw)
    if profile in ("retail", "retail-mixed"):
        return RetailShop(customers, seed=seed, start_ms=start_ms,
                          clickstream=profile == "retail-mixed", **kw)
    raise ValueError(f"unknown workload profile {profile!r}; choose one of: {', '.join(PROFILES)}")
