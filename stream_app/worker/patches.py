"""Every patch of Faust, aiokafka and aiohttp internals, in one place, checked at install.

The worker relies on a few private attributes and replaced methods of the frameworks it
runs on. They all live here, so that an upgrade has one file to re-check, and each is
checked when it is installed: a patched method that is missing or whose signature changed,
or a private attribute the frameworks no longer have, stops the worker at start-up with
:class:`PatchError` naming the package, its installed version and the range the patches
were tested with (:data:`TESTED`), instead of failing in the middle of a rebalance.
``pyproject.toml`` pins the packages to those ranges.

What is patched (the why of each is with its install function):

* :func:`install_quiet_seek`: Faust's ``Consumer.perform_seek`` and the aiokafka driver's
  ``AIOKafkaConsumerThread.seek_to_committed`` (what they do instead: stream_app/worker/seek.py;
  reads the consumer's private ``_read_offset`` through :func:`read_offset`).
* :func:`install_quiet_bad_requests`: aiohttp's ``RequestHandler.handle_error`` (the
  answer given instead: stream_app/worker/http_guard.py).
* :func:`install_fetch_wait`: the aiokafka driver's ``_create_worker_consumer``, to set the
  consumer's private ``_fetch_max_wait_ms`` (embedded broker only; stream_app/worker/broker.py).
* :func:`install_retry_backoff`: the ``retry_backoff_ms`` default of aiokafka's consumer and
  producer constructors (stream_app/worker/connectivity.py).
* :func:`install_inline_delivery`: ``wait_first`` of Faust's ``Consumer`` (mode's
  ``Service.wait_first`` otherwise), which its ``_drain_messages`` loop awaits for every
  message it hands to the streams.
* :func:`write_through`: a table write that bypasses Faust's changelog buffer (the table's
  store ``table.data``, the RocksDB store's private ``_db_for_partition`` and encoders, and
  the store's ``set_persisted_offset`` for what the table's private ``_on_changelog_sent``
  does).

:func:`install` applies them all; the worker calls it once, in
:func:`stream_app.worker.app.create_app`. Every install function is idempotent.

Not patched here: the attributes the worker's app declares itself (``on_seek``,
``model_feed``, the stop hooks) are typed attributes of
:class:`stream_app.worker.segmentation_app.SegmentationApp`, a ``faust.App`` subclass.
``tests/unit/test_patches.py`` checks that no other module of stream_app touches a private
attribute of these frameworks or replaces their methods.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

log = logging.getLogger("stream_app.patches")

#: The versions each patched distribution was tested with (as pinned in pyproject.toml).
TESTED = {
    "faust-streaming": ">=0.15.3,<0.16",
    "mode-streaming": ">=0.4,<0.8",
    "aiokafka": ">=0.10,<0.15",
    "aiohttp": ">=3.9,<3.15",
}

#: Marks a function installed here (the value: what it replaced).
_ORIGINAL = "_stream_app_original"


class PatchError(RuntimeError):
    """A patched attribute of a framework is missing or not what the patch expects."""


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution`` (``"not installed"`` if it is not)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _fail(distribution: str, what: str, problem: str) -> PatchError:
    return PatchError(
        f"{what} {problem}: stream_app/worker/patches.py patches it and was tested with "
        f"{distribution}{TESTED[distribution]}, but {distribution} "
        f"{installed_version(distribution)} is installed. Install a tested version, or "
        f"re-check the patch against this one.")


def _check_method(distribution: str, owner: type, name: str, parameters: list[str],
                  coroutine: bool = False) -> Callable[..., Any]:
    """``owner.name`` as ``owner`` defines it, checked to take exactly ``parameters``
    (and to be a coroutine function if ``coroutine``); a function installed here is
    returned as it is (it was checked when installed)."""
    what = f"{owner.__module__}.{owner.__qualname__}.{name}"
    function = vars(owner).get(name)
    if function is None:
        raise _fail(distribution, what, "is missing")
    if hasattr(function, _ORIGINAL):
        return function  # type: ignore[no-any-return]
    if not callable(function):
        raise _fail(distribution, what, f"is not a function ({type(function).__name__})")
    found = list(inspect.signature(function).parameters)
    if found != parameters:
        raise _fail(distribution, what, f"has the parameters ({', '.join(found)}), "
                                        f"expected ({', '.join(parameters)})")
    if coroutine and not inspect.iscoroutinefunction(function):
        raise _fail(distribution, what, "is no longer a coroutine function")
    return function  # type: ignore[no-any-return]


def _mark(function: Callable[..., Any], original: Callable[..., Any]) -> None:
    setattr(function, _ORIGINAL, original)
    functools.update_wrapper(function, original, assigned=("__doc__",), updated=())


def install(*, fetch_max_wait_ms: int | None = None,
            retry_backoff_ms: int | None = None) -> None:
    """Install every patch the worker needs (idempotent; the worker's one call is in
    ``create_app``). ``fetch_max_wait_ms``: see :func:`install_fetch_wait` (None: Faust's
    fetch wait is kept); ``retry_backoff_ms``: see :func:`install_retry_backoff` (None:
    aiokafka's default is kept)."""
    install_quiet_seek()
    install_quiet_bad_requests()
    install_inline_delivery()
    check_table_write()
    if fetch_max_wait_ms is not None:
        install_fetch_wait(fetch_max_wait_ms)
    if retry_backoff_ms is not None:
        install_retry_backoff(retry_backoff_ms)


# -- Faust's seek to the committed offsets (stream_app/worker/seek.py) ---------------------

def install_quiet_seek() -> None:
    """Replace Faust's ``Consumer.perform_seek`` and ``AIOKafkaConsumerThread.seek_to_committed``
    (idempotent).

    After a rebalance Faust seeks the stream partitions to their committed offsets while
    their messages flow, and aiokafka does not seek a partition without a committed offset
    back over records the fetcher dropped: both lost messages or commits
    (tests/system/test_recovery.py). The replacements run the seek with the flow stopped and then
    rewind such partitions; the reasons and what they do are in stream_app/worker/seek.py."""
    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from stream_app.worker import seek

    original_perform_seek = _check_method("faust-streaming", Consumer, "perform_seek",
                                          ["self"], coroutine=True)
    original_seek_to_committed = _check_method(
        "faust-streaming", AIOKafkaConsumerThread, "seek_to_committed", ["self"],
        coroutine=True)
    _check_method("faust-streaming", AIOKafkaConsumerThread, "_ensure_consumer", ["self"])
    check_read_offset()
    if hasattr(original_perform_seek, _ORIGINAL):
        return

    async def perform_seek(self: Any) -> None:
        await seek.perform_seek_stopped(self, functools.partial(original_perform_seek, self))

    async def seek_to_committed(self: Any) -> Any:
        return await seek.seek_to_committed_rewinding(
            self, functools.partial(original_seek_to_committed, self), read_offset,
            worker_consumer)

    _mark(perform_seek, original_perform_seek)
    _mark(seek_to_committed, original_seek_to_committed)
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]
    AIOKafkaConsumerThread.seek_to_committed = seek_to_committed  # type: ignore[method-assign]


def check_read_offset() -> None:
    """Check that Faust's ``Consumer`` still declares ``_read_offset`` (see
    :func:`read_offset`)."""
    from faust.transport.consumer import Consumer

    if "_read_offset" not in getattr(Consumer, "__annotations__", {}):
        raise _fail("faust-streaming", "faust.transport.consumer.Consumer._read_offset",
                    "is not declared")


def read_offset(consumer: Any) -> Mapping[Any, int | None]:
    """The last offset a Faust ``consumer`` handed to the streams, per partition (None or
    absent: nothing since the assignment); Faust's private ``Consumer._read_offset``."""
    try:
        return consumer._read_offset  # type: ignore[no-any-return]
    except AttributeError:
        raise _fail("faust-streaming", f"{type(consumer).__qualname__}._read_offset",
                    "is missing") from None


def worker_consumer(thread: Any) -> Any:
    """The aiokafka consumer of Faust's ``AIOKafkaConsumerThread`` (its private
    ``_ensure_consumer()``: raises if the consumer is not started)."""
    return thread._ensure_consumer()


# -- aiohttp's answer to a request its parser rejected (stream_app/worker/http_guard.py) --

HANDLE_ERROR_PARAMETERS = ["self", "request", "status", "exc", "message"]


def install_quiet_bad_requests() -> None:
    """Wrap aiohttp's ``RequestHandler.handle_error`` (idempotent).

    aiohttp logs a request its parser rejected at ERROR with a traceback holding the
    request's first bytes (a customer id from the path, say) and echoes them in its 400
    body. The wrapper answers such a request with
    :func:`stream_app.worker.http_guard.answer_bad_request` and leaves every other error to
    aiohttp; see stream_app/worker/http_guard.py."""
    from aiohttp.web_protocol import RequestHandler

    from stream_app.worker.http_guard import answer_bad_request

    original = _check_method("aiohttp", RequestHandler, "handle_error",
                             HANDLE_ERROR_PARAMETERS)
    if hasattr(original, _ORIGINAL):
        return

    def handle_error(self: Any, request: Any, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None) -> Any:
        answer = answer_bad_request(request, status, exc)
        if answer is None:
            return original(self, request, status, exc, message)
        return answer

    _mark(handle_error, original)
    RequestHandler.handle_error = handle_error  # type: ignore[method-assign]


# -- The consumer's fetch wait on the embedded broker (stream_app/worker/broker.py) -------

def install_fetch_wait(max_wait_ms: int) -> None:
    """Make Faust's worker consumers ask the broker to wait at most ``max_wait_ms`` for
    records (idempotent; a second call with another value replaces the first).

    Faust creates its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting
    reaches it. Apache Kafka answers a waiting fetch as soon as records arrive; Tansu, the
    embedded broker, answers only when the wait expires, so there every event waited 0.4 s
    at the median and 0.75 s at p99 before the worker saw it (a plain aiokafka consumer:
    p50 397 ms with 1500, 3 ms with 10). The consumer reads its private
    ``_fetch_max_wait_ms`` when it starts, after Faust created it."""
    import aiokafka
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = _check_method("faust-streaming", AIOKafkaConsumerThread,
                           "_create_worker_consumer", ["self", "transport"])
    for method in ("__init__", "start"):
        names = getattr(getattr(aiokafka.AIOKafkaConsumer, method), "__code__", None)
        if names is None or "_fetch_max_wait_ms" not in names.co_names:
            raise _fail("aiokafka", f"aiokafka.AIOKafkaConsumer.{method}",
                        "no longer uses _fetch_max_wait_ms")
    if getattr(create, "fetch_wait_ms", None) == max_wait_ms:
        return
    original = getattr(create, _ORIGINAL, create)

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms  # read when the consumer starts
        return consumer

    _mark(create_worker_consumer, original)
    create_worker_consumer.fetch_wait_ms = max_wait_ms  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore


# -- Retries of the Kafka clients (stream_app/worker/connectivity.py) ---------------------

def install_retry_backoff(backoff_ms: int) -> None:
    """Make ``backoff_ms`` the default ``retry_backoff_ms`` of aiokafka's consumers and
    producers in this process (idempotent).

    Faust creates its clients without setting it, and aiokafka's 100 ms made ~75 connection
    attempts and ~190 ERROR lines per second during a broker outage
    (tests/system/test_outage.py)."""
    import aiokafka

    clients = (aiokafka.AIOKafkaConsumer, aiokafka.AIOKafkaProducer)
    for client in clients:  # all checked before any is changed
        defaults = client.__init__.__kwdefaults__
        if not defaults or "retry_backoff_ms" not in defaults:
            raise _fail("aiokafka", f"aiokafka.{client.__name__}.__init__",
                        "has no keyword argument retry_backoff_ms with a default")
    for client in clients:
        client.__init__.__kwdefaults__["retry_backoff_ms"] = backoff_ms


# -- The hand-over of each fetched message to the streams --------------------------------

def install_inline_delivery() -> None:
    """Give Faust's ``Consumer`` a ``wait_first`` that hands a message over without tasks
    when it can (idempotent).

    Faust's fetch loop (``Consumer._drain_messages``) delivers every message with
    ``await self.wait_first(callback(message), self.suspend_flow.wait())``: the delivery
    may wait (a full stream buffer, the flow stopped for a rebalance) and a rebalance must
    be able to interrupt it. mode's ``wait_first`` makes four tasks per call (the two
    coroutines, the service's stopped and crashed events) and an ``asyncio.wait``: 7 % of
    the worker's samples in ``make bench``'s app mode (py-spy, docs/performance.md). The
    replacement runs the delivery's first step at once; a delivery that completes without
    waiting, the usual case, needs nothing else (the suspend-flow wait is closed unstarted,
    as mode cancels it). One that waits is handed on, where it stopped, to mode's
    ``wait_first`` with the suspend-flow wait, which can interrupt it as before
    (:func:`~stream_app.worker.delivery.deliver_first`)."""
    from faust.transport.consumer import Consumer
    from mode.services import Service

    from stream_app.worker.delivery import deliver_first

    original = _check_method("mode-streaming", Service, "wait_first",
                             ["self", "coros", "timeout"], coroutine=True)
    drain = _check_method("faust-streaming", Consumer, "_drain_messages",
                          ["self", "fetcher"], coroutine=True)
    if not {"wait_first", "suspend_flow"} <= set(drain.__code__.co_names):
        raise _fail("faust-streaming", "faust.transport.consumer.Consumer._drain_messages",
                    "no longer awaits wait_first(callback(message), suspend_flow.wait())")
    if "wait_first" in vars(Consumer):
        return

    async def wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:
        return await deliver_first(functools.partial(original, self), coros, timeout)

    _mark(wait_first, original)
    Consumer.wait_first = wait_first  # type: ignore[method-assign]


# -- A table write that reaches the producer at once (stream_app/worker/customer_store.py) --

def check_table_write() -> None:
    """Check the Faust table and store internals :func:`write_through` uses."""
    from faust.stores import base, rocksdb

    _check_method("faust-streaming", base.Store, "set_persisted_offset",
                  ["self", "tp", "offset"])
    _check_method("faust-streaming", rocksdb.Store, "_db_for_partition", ["self", "partition"])
    _check_method("faust-streaming", base.Store, "_encode_key", ["self", "key"])
    _check_method("faust-streaming", base.Store, "_encode_value", ["self", "value"])


async def write_through(table: Any, key: bytes, value: bytes | None, partition: int) -> None:
    """``table[key] = value`` (None: delete) in the table partition ``partition``, its
    changelog record handed to the producer before this returns.

    Faust's own ``table[key] = value`` queues the record in a buffer that a commit may pass
    (its flush gives up after 0.1 s), so an offset could be committed whose state never
    reached the changelog (tests/system/test_recovery.py, a worker stopped mid-stream). Sent here,
    the record is in the producer before the caller goes on, and every commit flushes the
    producer first. The table's store is written directly (:func:`_store`); the record goes
    to the app's producer (Faust's ``ProducerT.send``: the table's key and value are bytes,
    its serializers raw), not through Faust's per-message ``Topic.send`` (a pending message,
    a future message, the sensors: a fifth of a send's cost), and when the broker has it,
    the store notes its offset as Faust's ``_on_changelog_sent`` does (the RocksDB store
    keeps it, so that a restarted worker recovers only what came after)."""
    _store(table.data, key, value, partition)
    sent = await table.app.producer.send(table.changelog_topic.get_topic_name(), key, value,
                                         partition, None, None)
    sent.add_done_callback(functools.partial(_changelog_sent, table.data))


def _changelog_sent(store: Any, sent: Any) -> None:
    """Note the offset of a changelog record the broker has (a failed send: nothing; the
    producer logs it, and the commit's flush does not pass it)."""
    if sent.cancelled() or sent.exception() is not None:
        return
    metadata = sent.result()
    store.set_persisted_offset(metadata.topic_partition, metadata.offset)


def _store(store: Any, key: Any, value: Any, partition: int) -> None:
    """Write ``key`` to ``store`` (None: delete). Faust's RocksDB store takes the partition
    of a write from the event being processed (``current_event()``), which a batched agent
    or the flusher task does not have: its partition's database is written directly."""
    from faust.stores.rocksdb import Store as RocksDBStore

    if value is None:
        store.pop(key, None)
    elif isinstance(store, RocksDBStore):
        encoded = store._encode_key(key)
        store._key_index[encoded] = partition
        store._db_for_partition(partition).put(encoded, store._encode_value(value))
    else:
        store[key] = value
