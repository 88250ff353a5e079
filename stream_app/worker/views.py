"""The worker's HTTP pages, and the documents they answer with.

``/health``, ``/ready``, ``/metrics``, ``/customers/{id}`` and ``/customers/{id}/explain``
(routed to the worker owning the customer's partition), ``/model``, ``/segments``,
``/segments/{id}``, ``/segments/_local`` (what one worker knows, asked by its peers),
``/audiences``, ``POST /audiences/preview`` (candidate definitions judged on every worker's
customers, without applying them; ``/audiences/_preview_local`` is one worker's part), and
the live segment map: ``/`` (a page for people) and ``/map/data`` (what it shows). Views
that name customers need the bearer token when ``API_TOKEN`` is set. The document
builders at the bottom are pure.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Any

import aiohttp
import orjson
from faust.web import Request, Response, View

from stream_app.config import Settings
from stream_app.core.audiences import AudienceError, AudienceSet
from stream_app.core.catalogue import SegmentHistory
from stream_app.core.changes import iso_ms
from stream_app.core.features import FEATURE_NAMES
from stream_app.core.pipeline import EXCLUDED, UNASSIGNED, CustomerPipeline
from stream_app.core.preview import AudiencePreview, every_partition_once, merge_previews
from stream_app.core.state import CustomerState
from stream_app.model.assignments import AssignmentIndex
from stream_app.model.labels import describe, typical_values
from stream_app.model.segmentation import FeatureTransform, SegmentModel
from stream_app.web.segment_map import (
    CATALOGUE_SHOWN,
    RecentChanges,
    SizeHistory,
    map_document,
    map_page,
    merge_changes,
    parse_since,
    project_segments,
)
from stream_app.worker.assignment import Assignment
from stream_app.worker.customer_store import CustomerStore
from stream_app.worker.gauges import Gauges
from stream_app.worker.metrics import CONTENT_TYPE, Metrics
from stream_app.worker.model_feed import ModelFeed
from stream_app.worker.sizes import SegmentSizes, home_and_bucket, summed

log = logging.getLogger("stream_app")

#: Example customers per segment (``GET /segments/{id}``, peers' ``/segments/_local``).
EXAMPLES = 5
JSON = "application/json"
NUMPY_AND_INT_KEYS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
#: Seconds between two looks at whether the map's size history wants a point.
SIZE_SAMPLE_INTERVAL_S = 2.0
#: A preview's time limit (seconds) unless ``?time_limit=`` asks for another, and the
#: largest it may ask for.
PREVIEW_TIME_LIMIT_S = 30.0
PREVIEW_MAX_TIME_LIMIT_S = 600.0
#: Customers a preview judges between two yields to the event loop (events come first).
PREVIEW_CHUNK = 256


def json_response(view: View, body: Any, status: int = 200) -> Response:
    return view.bytes(orjson.dumps(body, option=NUMPY_AND_INT_KEYS),
                      content_type=JSON, status=status)


def unauthorised(view: View) -> Response:
    return view.bytes(orjson.dumps({"error": "this endpoint needs a bearer token"}),
                      content_type=JSON, status=401,
                      headers={"WWW-Authenticate": 'Bearer realm="stream-app"'})


class Views:
    """The pages of one worker, and the cluster-wide answers they gather from its peers."""

    def __init__(self, *, app: Any, settings: Settings, pipeline: CustomerPipeline,
                 customers: CustomerStore, feed: ModelFeed, metrics: Metrics, gauges: Gauges,
                 assignment: Assignment, index: AssignmentIndex,
                 audience_sizes: SegmentSizes[str], recent_changes: RecentChanges,
                 catalogue: SegmentHistory) -> None:
        self.app = app
        self.settings = settings
        self.pipeline = pipeline
        self.customers = customers
        self.feed = feed
        self.metrics = metrics
        self.gauges = gauges
        self.assignment = assignment
        self.index = index
        self.audience_sizes = audience_sizes
        self.recent_changes = recent_changes
        self.catalogue = catalogue
        self.size_history = SizeHistory()  # cluster-wide segment sizes, every 10 s for an hour
        self.page = map_page()
        self.bearer = f"Bearer {settings.api_token}".encode()
        self.peer_headers = ({"Authorization": self.bearer.decode()} if settings.api_token
                             else {})

    def authorised(self, request: Request) -> bool:
        if not self.settings.api_token:
            return True
        # aiohttp keeps a header's non-UTF-8 bytes as surrogates: back to the bytes sent
        # (a plain encode() raised, and answered 500).
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self.bearer)

    def local_view(self) -> dict[str, Any]:
        """What this worker knows: sizes, examples, audience members and recent changes
        of the partitions it owns."""
        return {"sizes": self.gauges.local_sizes(),
                "examples": {seg: [key.decode() for key in keys]
                             for seg, keys in self.index.members(EXAMPLES).items()},
                "audiences": self.audience_sizes.local(self.assignment.local_partitions()),
                "recent": self.recent_changes.newest_first()}

    async def peer_views(self) -> list[dict[str, Any]]:
        """:meth:`local_view` of every worker, this one first (a peer that does not answer
        is left out)."""
        return [self.local_view(), *await self.ask_peers("/segments/_local", "segment sizes")]

    async def ask_peers(self, path: str, what: str, body: bytes | None = None,
                        timeout_s: float | None = None) -> list[dict[str, Any]]:
        """The JSON answers of the other workers to ``GET path`` (``POST`` with ``body``),
        asked at once; a peer that does not answer is logged (as ``what`` unavailable)
        and left out."""
        app = self.app
        me = str(app.conf.canonical_url).rstrip("/")
        urls = [url for url in (str(host).rstrip("/") for host in app.router.tables_metadata())
                if url != me]

        async def ask(url: str) -> dict[str, Any] | None:
            request = (app.http_client.get(f"{url}{path}", headers=self.peer_headers)
                       if body is None else
                       app.http_client.post(f"{url}{path}", data=body, headers={
                           **self.peer_headers, "Content-Type": JSON},
                           timeout=aiohttp.ClientTimeout(total=timeout_s)))
            try:
                async with request as resp:
                    if resp.status != 200:  # a 401: the workers' API_TOKENs differ
                        log.warning("%s from %s unavailable: HTTP %d", what, url, resp.status)
                        return None
                    return orjson.loads(await resp.read())
            except Exception as exc:  # a peer that is down only makes the answer partial
                log.warning("%s from %s unavailable: %s", what, url, exc)
                return None

        answers = await asyncio.gather(*(ask(url) for url in urls))
        return [answer for answer in answers if answer is not None]

    async def local_preview(self, candidate: AudienceSet, deadline: float) -> dict[str, Any]:
        """This worker's part of an audience preview: its own customers (of the input
        partitions it owns) judged by ``candidate``, read-only, yielding to the event loop
        every :data:`PREVIEW_CHUNK` customers, stopped at ``deadline`` (monotonic)."""
        pipeline, partitions = self.pipeline, self.app.conf.topic_partitions
        local = self.assignment.local_partitions()
        preview = AudiencePreview(candidate, pipeline.audiences)
        complete, started = True, time.monotonic()
        for n, (key, stored) in enumerate(self.customers.items(), 1):
            if home_and_bucket(key, stored, partitions)[0] in local:
                seen = pipeline.audience_view(stored)
                if seen is not None:
                    preview.add(key.decode(), *seen)
            if n % PREVIEW_CHUNK == 0:
                if time.monotonic() > deadline:
                    complete = False
                    break
                await asyncio.sleep(0)
        return preview.document() | {"complete": complete, "partitions": sorted(local),
                                     "seconds": round(time.monotonic() - started, 3)}

    async def cluster_preview(self, candidate: AudienceSet, time_limit_s: float
                              ) -> dict[str, Any]:
        """Every worker's :meth:`local_preview`, merged (this worker's part first)."""
        started = time.monotonic()
        deadline = started + time_limit_s
        body = orjson.dumps(candidate.to_document())
        path = f"/audiences/_preview_local?time_limit={time_limit_s}"
        # The peers scan while this one does.
        peers = asyncio.ensure_future(self.ask_peers(path, "audience preview", body,
                                                     timeout_s=time_limit_s + 10))
        parts = [await self.local_preview(candidate, deadline), *await peers]
        reported = sorted(p for part in parts for p in part["partitions"])
        merged = merge_previews(parts, candidate)
        model = self.pipeline.model
        shown = {int(s) for a in merged["audiences"] for s in a["segments"] if s.isdigit()}
        return merged | {
            "segment_labels": {s: model.labels[s] for s in sorted(shown)
                               if model is not None and s < model.k},
            "applied_version": self.pipeline.audiences.version,
            "complete": all(part["complete"] for part in parts)
            and every_partition_once(reported, self.app.conf.topic_partitions),
            "partitions_reporting": reported,
            "workers": len(parts),
            "seconds": round(time.monotonic() - started, 3),
        }

    async def cluster_view(self, views: list[dict[str, Any]] | None = None
                           ) -> tuple[dict[int, dict[int, int]], dict[int, list[str]]]:
        """Segment sizes per partition and example customers, from every worker (or from
        the ``views`` of :meth:`peer_views`)."""
        views = await self.peer_views() if views is None else views
        sizes: dict[int, dict[int, int]] = {}
        found: dict[int, list[str]] = {}
        for view in views:
            for p, per_segment in view["sizes"].items():
                sizes.setdefault(int(p), {int(k): v for k, v in per_segment.items()})
            for seg, ids in view["examples"].items():
                found.setdefault(int(seg), []).extend(ids)
        return sizes, found

    async def segment_totals(self) -> dict[int, int]:
        """Customers per segment id, cluster-wide."""
        sizes, _ = await self.cluster_view()
        return summed(sizes)

    async def sample_segment_sizes(self) -> None:
        """Add the cluster-wide segment sizes to the map's history when a point is due
        (the first as soon as there is a model)."""
        now, model = time.time(), self.pipeline.model
        if model is None or not self.size_history.due(now):
            return
        sizes, _ = await self.cluster_view()
        self.size_history.add(now, {s["id"]: s["size"]
                                    for s in segments_document(model, sizes)["segments"]})

    async def ready(self) -> tuple[dict[str, Any], bool]:
        """The body of ``GET /ready`` and whether the worker is ready."""
        lag = await self.gauges.input_lag()
        checks = {
            "partitions_assigned": bool(self.assignment.local_partitions()),
            "model_loaded": self.pipeline.model is not None,
            "model_feed_caught_up": self.feed.caught_up.is_set(),
            "lag_ok": lag <= self.settings.ready_max_lag,
        }
        ok = all(checks.values())
        return {"ready": ok, **checks, "lag": lag}, ok

    async def map_data(self, request: Request) -> dict[str, Any]:
        """The body of ``GET /map/data``."""
        pipeline = self.pipeline
        views = await self.peer_views()
        sizes, _ = await self.cluster_view(views)
        model, allowed = pipeline.model, self.authorised(request)
        return map_document(
            segments_document(model, sizes),
            project_segments(model.centres, model.active) if model is not None else None,
            model.features if model is not None else (),
            self.size_history.since(parse_since(request.query.get("since"))),
            merge_changes((view.get("recent", ()) for view in views), customers=allowed),
            now=time.time(), model_created=model.created_at if model is not None else None,
            authorised=allowed, token_required=bool(self.settings.api_token),
            catalogue=self.catalogue.recent(CATALOGUE_SHOWN),
        ) | {"audiences": audiences_document(pipeline.audiences,
                                             audience_members(views))["audiences"]}

    async def preview_answer(self, view: View, request: Request, cluster: bool) -> Response:
        """The answer of ``POST /audiences/preview`` (``cluster``) or of its local part."""
        if not self.authorised(request):
            return unauthorised(view)
        try:
            limit = float(request.query.get("time_limit", PREVIEW_TIME_LIMIT_S))
        except ValueError:
            limit = -1.0
        if not 0 < limit <= PREVIEW_MAX_TIME_LIMIT_S:
            return json_response(view, {"error": "time_limit: seconds, more than 0 and at "
                                                 f"most {PREVIEW_MAX_TIME_LIMIT_S:.0f}"}, 400)
        try:
            candidate = AudienceSet.from_document(
                orjson.loads(await view.read_request_content(request)), "<preview>")
        except orjson.JSONDecodeError as exc:
            return json_response(view, {"error": f"not a JSON document: {exc}"}, 400)
        except AudienceError as exc:
            return json_response(view, {"error": str(exc)}, 400)
        if cluster:
            return json_response(view, await self.cluster_preview(candidate, limit))
        return json_response(view, await self.local_preview(candidate,
                                                            time.monotonic() + limit))

    def register(self, app: Any) -> None:
        """Declare the pages (and the map's size sampling timer) on ``app``."""
        self._register_operations(app)
        self._register_customers(app)
        self._register_audiences(app)
        self._register_segments(app)
        self._register_map(app)

    def _register_operations(self, app: Any) -> None:
        """``/health``, ``/ready``, ``/metrics`` and ``/model``."""
        views, pipeline = self, self.pipeline

        @app.page("/health")
        async def health(self: View, request: Request) -> Response:
            return json_response(self, {"status": "ok"})

        @app.page("/ready")
        async def ready(self: View, request: Request) -> Response:
            body, ok = await views.ready()
            return json_response(self, body, 200 if ok else 503)

        @app.page("/metrics")
        async def metrics_view(self: View, request: Request) -> Response:
            await views.gauges.refresh()
            return self.bytes(views.metrics.exposition(), content_type=CONTENT_TYPE)

        @app.page("/model")
        async def model_view(self: View, request: Request) -> Response:
            model = pipeline.model
            if model is None:
                return json_response(self, {"error": "no model yet"}, 404)
            # The snapshot as published (schemas/segment-model), plus the number of ids
            # (K, retired ones included), of live segments, and a readable time.
            return json_response(self, {**model.to_dict(), "k": model.k,
                                        "segments": len(model.active_ids),
                                        "created": iso_ms(model.created_at * 1000)})

    def customer_answer(self, view: View, request: Request, customer_id: str,
                        explained: bool) -> Response:
        """``GET /customers/{id}`` (with ``explained``, ``/explain``) on the owning worker:
        the customer looked up by its key (the pseudonym with ``PSEUDONYM_KEY``)."""
        if not self.authorised(request):
            return unauthorised(view)
        key = self.pipeline.customer_key(customer_id.encode())
        stored = self.customers.get(key)
        if stored is None:
            return json_response(view, {"error": "unknown customer"}, 404)
        body = customer_document(key.decode(), stored, self.pipeline.model)
        return json_response(view, body | self.pipeline.explain(stored) if explained else body)

    def _register_customers(self, app: Any) -> None:
        """``/customers/{id}`` and ``/customers/{id}/explain``, routed by the id to the
        worker owning its partition."""
        views, table = self, self.customers.table

        @app.page("/customers/{customer_id}")
        @app.table_route(table=table, match_info="customer_id")
        async def customer_view(self: View, request: Request, customer_id: str) -> Response:
            return views.customer_answer(self, request, customer_id, explained=False)

        @app.page("/customers/{customer_id}/explain")
        @app.table_route(table=table, match_info="customer_id")
        async def explain_view(self: View, request: Request, customer_id: str) -> Response:
            """Why the customer is where it is."""
            return views.customer_answer(self, request, customer_id, explained=True)

    def _register_audiences(self, app: Any) -> None:
        """``/audiences``, ``/audiences/preview`` and a worker's part of a preview."""
        views, pipeline = self, self.pipeline

        @app.page("/audiences/preview")
        class AudiencePreviewView(View):
            """``POST`` a definitions document (``{"audiences": [...]}``, JSON): what it
            would hold on every worker's customers, without applying it."""

            async def post(self, request: Request) -> Response:
                return await views.preview_answer(self, request, cluster=True)

        @app.page("/audiences/_preview_local")
        class LocalPreviewView(View):
            """One worker's part of a preview (asked by the worker answering one)."""

            async def post(self, request: Request) -> Response:
                return await views.preview_answer(self, request, cluster=False)

        @app.page("/audiences")
        async def audiences_view(self: View, request: Request) -> Response:
            """The applied audience definitions and their members, from every worker."""
            members = audience_members(await views.peer_views())
            return json_response(self, audiences_document(pipeline.audiences, members))

    def _register_segments(self, app: Any) -> None:
        """``/segments``, ``/segments/{id}`` and a worker's part of them."""
        views, pipeline = self, self.pipeline

        @app.page("/segments/_local")
        async def local_segments(self: View, request: Request) -> Response:
            if not views.authorised(request):  # the examples name customers
                return unauthorised(self)
            return json_response(self, views.local_view())

        @app.page("/segments")
        async def segments_view(self: View, request: Request) -> Response:
            sizes, _ = await views.cluster_view()
            return json_response(self, segments_document(pipeline.model, sizes,
                                                         views.catalogue))

        @app.page("/segments/{segment_id}")
        async def segment_view(self: View, request: Request, segment_id: str) -> Response:
            model = pipeline.model
            segment = segment_number(segment_id)
            if model is None or segment is None or segment >= model.k:
                return json_response(self, {"error": "unknown segment"}, 404)
            sizes, found = await views.cluster_view()
            body = segment_explanation(model, segment, sizes, found)
            if not views.authorised(request):
                body.pop("examples")  # no customer ids without the token
            return json_response(self, body)

    def _register_map(self, app: Any) -> None:
        """The live segment map: ``GET /`` (a page for people), ``GET /map/data`` and the
        timer that samples segment sizes for it."""
        views = self

        @app.timer(interval=SIZE_SAMPLE_INTERVAL_S)
        async def sample_segment_sizes() -> None:
            await views.sample_segment_sizes()

        @app.page("/")
        async def segment_map(self: View, request: Request) -> Response:
            page = views.page
            return self.html(page.html, headers={
                "Content-Security-Policy": page.content_security_policy,
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-cache"})

        @app.page("/map/data")
        async def segment_map_data(self: View, request: Request) -> Response:
            """Segments with sizes and map positions, the size history after ``?since=``
            (epoch seconds) and the latest changes, from every worker; customer ids only
            with the token."""
            return json_response(self, await views.map_data(request))


def audience_members(views: list[dict[str, Any]]) -> dict[str, int]:
    """Members per audience in the workers' ``views`` (:meth:`Views.peer_views`)."""
    per_partition: dict[int, dict[str, int]] = {}
    for view in views:  # a partition reported twice (during a rebalance) counts once
        for p, per_audience in view.get("audiences", {}).items():
            per_partition.setdefault(int(p), per_audience)
    return summed(per_partition)


def segment_number(text: str) -> int | None:
    """The segment id in the path of ``GET /segments/{id}``: at most 9 ASCII digits, else
    None (a 404). ``str.isdigit`` alone let through digits ``int`` rejects (``"²"``) and
    numbers past Python's 4,300-digit conversion limit, which answered 500.

    >>> [segment_number(t) for t in ("7", "007", "-1", "1.5", "²", "٣", "9" * 4301, "")]
    [7, 7, None, None, None, None, None, None]
    """
    if not (0 < len(text) <= 9 and text.isascii() and text.isdigit()):
        return None
    return int(text)


def customer_document(customer_id: str, stored: bytes, model: SegmentModel | None
                      ) -> dict[str, Any]:
    """The body of ``GET /customers/{id}``."""
    state = CustomerState.from_bytes(stored)
    features = state.window.features(state.clock)
    for name in ("first_order_ts", "last_order_ts"):
        if features[name] is not None:
            features[name] = iso_ms(features[name])
    segment = state.segment
    label = (model.labels[segment] if model is not None and segment is not None
             and 0 <= segment < model.k else None)
    return {
        "customer_id": customer_id,
        "as_of": iso_ms(state.clock) if state.clock else None,
        "segment": segment,
        "segment_label": label,
        "model_version": state.model_version,
        "features": {name: features[name] for name in FEATURE_NAMES},
        "profile": state.profile,
        "audiences": state.audiences,
        "consent": {"segmentation": not state.excluded},
    }


def segment_explanation(model: SegmentModel, segment: int, sizes: dict[int, dict[int, int]],
                        examples: dict[int, list[str]]) -> dict[str, Any]:
    """The body of ``GET /segments/{id}``: what distinguishes the segment, and who is in it."""
    centre_units = model.centres_in_feature_units()[segment]
    population = FeatureTransform(model.spec).inverse(model.mean[None, :])[0]
    size = sum(per_segment.get(segment, 0) for per_segment in sizes.values())
    return {
        "id": segment,
        "label": model.labels[segment],
        "active": model.is_active(segment),
        "size": size,
        "model_version": model.version,
        "typical": typical_values(model.features, centre_units),
        "centre": {n: round(float(v), 4) for n, v in zip(model.features, centre_units)},
        "distinguishing": [
            {"feature": name, "z": round(z, 3), "word": word,
             "segment_value": round(float(centre_units[model.features.index(name)]), 4),
             "population_value": round(float(population[model.features.index(name)]), 4)}
            for name, z, word in describe(model.features,
                                          model.z_scores(model.centres[segment]))
        ],
        "examples": examples.get(segment, [])[:EXAMPLES],
    }


def audiences_document(definitions: AudienceSet, members: dict[str, int]) -> dict[str, Any]:
    """The body of ``GET /audiences``: each audience's definition and member count."""
    return {
        "version": definitions.version,
        "source": definitions.source,
        "audiences": [
            {"name": a.name, "description": a.description, "condition": a.condition,
             "exit_condition": a.exit_condition, "members": members.get(a.name, 0)}
            for a in definitions.audiences],
    }


def segments_document(model: SegmentModel | None, sizes: dict[int, dict[int, int]],
                      history: SegmentHistory | None = None) -> dict[str, Any]:
    """The body of ``GET /segments``: every active segment with label, size, typical
    values and centre, and the retired segment ids with their last label; with
    ``history`` (the segment catalogue), each one's first version and last relabel."""
    history = history if history is not None else SegmentHistory()
    totals = summed(sizes)
    segments = []
    retired = []
    if model is not None:
        centres = model.centres_in_feature_units()
        for i in range(model.k):
            if not model.active[i]:
                retired.append({"id": i, "label": model.labels[i], "size": totals.get(i, 0),
                                "history": history.of(i)})
                continue
            segments.append({
                "id": i,
                "label": model.labels[i],
                "size": totals.get(i, 0),
                "typical": typical_values(model.features, centres[i]),
                "centre": {n: round(float(v), 4) for n, v in zip(model.features, centres[i])},
                "history": history.of(i),
            })
    return {
        "model_version": model.version if model else 0,
        "customers": sum(totals.values()),
        "unassigned": totals.get(UNASSIGNED, 0),
        "excluded": totals.get(EXCLUDED, 0),
        "partitions_reporting": sorted(sizes),
        "segments": segments,
        "retired": retired,
    }
